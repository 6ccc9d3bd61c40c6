//! `lull monitor`: every Redis command on lull's keys, from any process, as a per-key timeline.

use std::process::ExitCode;

use lull::config::Config;

/// `lull monitor`.
pub async fn main(config: Config) -> ExitCode {
    super::init_tracing(config.log_format, "warn");
    let Some(url) = config.redis_url.clone() else {
        eprintln!("REDIS_URL is not set");
        return ExitCode::from(super::EXIT_CONFIG);
    };
    eprintln!(
        "following Redis commands on {}:* (MONITOR slows Redis down; debugging only; Ctrl-C to stop)",
        config.redis_prefix
    );
    let prefix = config.redis_prefix.clone();
    let follow = lull::io::store::monitor::follow(url.expose(), &prefix, |e| {
        for line in lull::io::store::monitor::timeline(&e, &prefix) {
            println!("{line}");
        }
    });
    tokio::select! {
        r = follow => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("redis MONITOR failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ = lull::ops::shutdown::next_signal() => ExitCode::SUCCESS,
    }
}
