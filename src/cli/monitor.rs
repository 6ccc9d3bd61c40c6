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
    // The keys of this consumer group (LULL_GROUP_ID) under LULL_REDIS_PREFIX.
    let prefix = lull::io::store::Keys::new(&config.redis_prefix, &config.group_id)
        .namespace()
        .to_string();
    eprintln!(
        "following Redis commands on {prefix}:* (MONITOR slows Redis down; debugging only; Ctrl-C to stop)"
    );
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
