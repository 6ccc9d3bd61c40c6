//! SIGINT (Ctrl-C, PM2) and SIGTERM (Docker, systemd, Kubernetes) handling.
//!
//! The first signal cancels the shutdown token: lull stops reading, delivers what is due, commits
//! and exits 0. A second signal exits at once with [`EXIT_SECOND_SIGNAL`].

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit code when a second signal cuts the graceful shutdown short.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Waits for the next SIGINT or SIGTERM; returns its name.
pub async fn next_signal() -> std::io::Result<&'static str> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    })
}

/// Cancels `token` on the first signal and exits the process on the second.
pub fn install(token: CancellationToken) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        info!(
            signal = first,
            "shutting down: draining (a second signal exits at once)"
        );
        token.cancel();
        let second = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        warn!(signal = second, "second signal: exiting now");
        std::process::exit(EXIT_SECOND_SIGNAL);
    });
    Ok(())
}
