//! Whether the brokers answer, asked before a tool starts its work: `send`, `tail`, `simulate`
//! and `verify` say in one line that Kafka is unreachable, and give up after a bounded wait.

use std::time::Duration;

use lull::config::Config;

/// How long a tool waits for an unreachable broker before it gives up.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the brokers answer for `topic` within [`REACH_TIMEOUT`]: `Err` with one line saying
/// why not.
pub async fn reach(config: &Config, topic: &str) -> Result<(), String> {
    let (probe, topic) = (config.clone(), topic.to_string());
    let asked = tokio::task::spawn_blocking(move || {
        lull::devkit::load::reachable(&probe, &topic, REACH_TIMEOUT)
    })
    .await;
    match asked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "kafka unreachable at {} ({e}): gave up after {} s",
            config.brokers,
            REACH_TIMEOUT.as_secs()
        )),
        Err(e) => Err(format!("kafka probe failed: {e}")),
    }
}
