//! `lull send` and `lull tail`: a chat by hand. `send` writes the JSON lines you type (fragments
//! or signals) to the input topic as they are typed; `tail` prints the batches (and lifecycle
//! events) lull writes. Together they let a newcomer watch a `typing` signal hold a burst open
//! against any broker lull can reach, the `dev-broker` included.

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::io::AsyncBufReadExt;

use lull::config::Config;
use lull::io::kafka::{reader_config, writer_config};
use lull::ops::kafka_log::{kafka_log, ClientLog};

use super::reach::reach;

/// `lull send`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Key every line with this user; without it a line's `user_id` field is its key.
    #[arg(long)]
    pub key: Option<String>,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// `lull tail`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// Keep waiting while Kafka cannot be reached (said once), instead of giving up with exit 1
    /// after a few seconds.
    #[arg(long)]
    pub wait: bool,
    /// Start from the beginning of the topics, not their ends.
    #[arg(long)]
    pub from_beginning: bool,
    /// Print each record's JSON value as it is, one per line.
    #[arg(long)]
    pub json: bool,
    /// Settings (flags over environment variables).
    #[command(flatten)]
    pub settings: super::settings::SettingsArgs,
}

/// What a typed line becomes: its key and value, or why it cannot be sent.
fn keyed(line: &str, key: Option<&str>) -> Result<(String, String), String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let key = match (key, value.get("user_id").and_then(|u| u.as_str())) {
        (Some(k), _) => k.to_string(),
        (None, Some(u)) => u.to_string(),
        (None, None) => return Err("no user_id field and no --key".into()),
    };
    Ok((key, line.to_string()))
}

/// `lull send`: every JSON line on stdin goes to `LULL_INPUT_TOPIC` the moment it is read,
/// stamped with the current time, so typing by hand makes real bursts.
pub async fn send(config: Config, args: SendArgs) -> ExitCode {
    super::init_tracing(config.log_format, "warn");
    let producer: FutureProducer<ClientLog> =
        match writer_config(&config).create_with_context(ClientLog::PRODUCER) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("cannot create a Kafka producer: {e}");
                return ExitCode::from(super::EXIT_CONFIG);
            }
        };
    if let Err(why) = reach(&config, &config.input_topic).await {
        eprintln!("{why}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "type one JSON object per line into {} on {}, e.g.",
        config.input_topic, config.brokers
    );
    eprintln!(r#"  {{"user_id":"u1","text":"hi"}}   {{"user_id":"u1","signal":"typing"}}"#);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut failed = false;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                eprintln!("cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = match keyed(line.trim(), args.key.as_deref()) {
            Ok(kv) => kv,
            Err(why) => {
                eprintln!("not sent: {why}");
                failed = true;
                continue;
            }
        };
        let record = FutureRecord::to(&config.input_topic)
            .key(&key)
            .payload(&value);
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => eprintln!(
                "sent {key} -> {}/{}/{}",
                config.input_topic, delivery.partition, delivery.offset
            ),
            Err((e, _)) => {
                eprintln!("not sent: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One batch as a line a person reads: who, how many, why, what it follows, the text.
fn describe_batch(v: &serde_json::Value) -> String {
    let text = v["text"]
        .as_str()
        .map(|t| format!("  \"{}\"", t.replace('\n', " ⏎ ")))
        .unwrap_or_default();
    let follows = v["follows"]
        .as_str()
        .map(|f| format!("  follows {f}"))
        .unwrap_or_default();
    let amends = v["amends"]
        .as_str()
        .map(|a| format!("  amends {a}"))
        .unwrap_or_default();
    // Fragments an edit or delete changed while the window was open.
    let fragments = v["fragments"].as_array();
    let changed = |member: &str| {
        fragments.map_or(0, |f| f.iter().filter(|x| x.get(member).is_some()).count())
    };
    let changes = match (changed("edited"), changed("deleted")) {
        (0, 0) => String::new(),
        (e, d) => format!("  ({e} edited, {d} deleted)"),
    };
    let count = v["count"].as_u64().unwrap_or(0);
    let plural = if count == 1 { "" } else { "s" };
    format!(
        "batch  {}  {count} fragment{plural}  {}  {}{follows}{amends}{changes}{text}",
        v["key"].as_str().unwrap_or("?"),
        v["reason"].as_str().unwrap_or("?"),
        v["batch_id"].as_str().unwrap_or("?"),
    )
}

/// One lifecycle event as a line.
fn describe_event(v: &serde_json::Value) -> String {
    let key = v["key"].as_str().unwrap_or("?");
    let id = v["batch_id"].as_str().unwrap_or("?");
    match v["event"].as_str() {
        Some("opened") => {
            let wait = v["close_at"].as_i64().unwrap_or(0) - v["at"].as_i64().unwrap_or(0);
            let follows = v["follows"]
                .as_str()
                .map(|f| format!("  follows {f}"))
                .unwrap_or_default();
            if wait >= 0 {
                format!(
                    "event  {key}  opened  {id}{follows}  closes in {wait} ms unless more arrives"
                )
            } else {
                // Read from a backlog: the window was due before lull saw its first fragment.
                format!(
                    "event  {key}  opened  {id}{follows}  overdue by {} ms: closes at once",
                    -wait
                )
            }
        }
        Some(other) => format!(
            "event  {key}  {other}  {id}  {}",
            v["reason"].as_str().unwrap_or("")
        ),
        None => format!("event  {v}"),
    }
}

/// `lull tail`: prints every batch lull writes to `LULL_OUTPUT_TOPIC` (and every lifecycle
/// event, when `LULL_EVENTS_TOPIC` is set), until Ctrl-C. Reads in a group of its own and commits
/// nothing, so it never disturbs a consumer.
pub async fn tail(config: Config, args: TailArgs) -> ExitCode {
    super::init_tracing(config.log_format, "warn");
    // Each batch once, as a downstream consumer sees them (never an aborted transaction's).
    let mut client = reader_config(&config, &format!("lull-tail-{}", std::process::id()));
    client.set(
        "auto.offset.reset",
        if args.from_beginning {
            "earliest"
        } else {
            "latest"
        },
    );
    let consumer: StreamConsumer<ClientLog> = match client.create_with_context(ClientLog::CONSUMER)
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot create a Kafka consumer: {e}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    if let Err(why) = reach(&config, &config.output_topic).await {
        if !args.wait {
            eprintln!("{why} (--wait keeps waiting)");
            return ExitCode::FAILURE;
        }
        eprintln!(
            "kafka unreachable at {}: waiting for it (--wait; Ctrl-C to stop)",
            config.brokers
        );
    }
    let mut topics = vec![config.output_topic.as_str()];
    if let Some(events) = &config.events_topic {
        topics.push(events.as_str());
    }
    if let Err(e) = consumer.subscribe(&topics) {
        eprintln!("cannot subscribe to {topics:?}: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "following {} on {} (Ctrl-C to stop)",
        topics.join(", "),
        config.brokers
    );
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            _ = &mut stop => return ExitCode::SUCCESS,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => {
                kafka_log().reachable();
                m
            }
            Err(e) => {
                // Folded like `run`'s: one line per outage, not one per poll.
                kafka_log().error("tail", &e);
                continue;
            }
        };
        let payload = message.payload().unwrap_or_default();
        if args.json {
            println!("{}", String::from_utf8_lossy(payload));
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(v) if v.get("event").is_some() => println!("{}", describe_event(&v)),
            Ok(v) => println!("{}", describe_batch(&v)),
            Err(_) => println!("{}", String::from_utf8_lossy(payload)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_keyed_by_user_id_unless_a_key_is_given() {
        let line = r#"{"user_id":"u1","signal":"typing"}"#;
        assert_eq!(keyed(line, None).unwrap().0, "u1");
        assert_eq!(keyed(line, Some("u2")).unwrap().0, "u2");
        assert!(keyed(r#"{"text":"hi"}"#, None).is_err());
        assert!(keyed("hi", Some("u1")).is_err());
    }

    #[test]
    fn an_opened_window_already_due_says_overdue() {
        let due = serde_json::json!({"event":"opened","key":"u1","batch_id":"t/0/4",
            "at":1_000,"close_at":1_800});
        assert_eq!(
            describe_event(&due),
            "event  u1  opened  t/0/4  closes in 800 ms unless more arrives"
        );
        let overdue = serde_json::json!({"event":"opened","key":"u1","batch_id":"t/0/4",
            "at":30_000,"close_at":5_265});
        let follows = serde_json::json!({"event":"opened","key":"u1","batch_id":"t/0/9",
            "at":1_000,"close_at":1_800,"follows":"t/0/4"});
        assert_eq!(
            describe_event(&follows),
            "event  u1  opened  t/0/9  follows t/0/4  closes in 800 ms unless more arrives"
        );
        assert_eq!(
            describe_event(&overdue),
            "event  u1  opened  t/0/4  overdue by 24735 ms: closes at once"
        );
    }

    #[test]
    fn edits_deletes_and_amends_show_in_the_line() {
        let v = serde_json::json!({"key":"u1","count":2,"reason":"quiet","batch_id":"t/0/4",
            "fragments":[{"text":"helo","edited":"hello"},{"text":"x","deleted":true}],
            "text":"hello"});
        assert_eq!(
            describe_batch(&v),
            "batch  u1  2 fragments  quiet  t/0/4  (1 edited, 1 deleted)  \"hello\""
        );
        let v = serde_json::json!({"key":"u1","count":1,"reason":"edit","batch_id":"t/0/9",
            "amends":"t/0/4","fragments":[{"signal":"edit"}],"text":"hi"});
        assert_eq!(
            describe_batch(&v),
            "batch  u1  1 fragment  edit  t/0/9  amends t/0/4  \"hi\""
        );
    }

    #[test]
    fn batches_read_as_one_line() {
        let v = serde_json::json!({"key":"u1","count":2,"reason":"quiet",
            "batch_id":"t/0/4","follows":"t/0/1","text":"hi\nthere"});
        assert_eq!(
            describe_batch(&v),
            "batch  u1  2 fragments  quiet  t/0/4  follows t/0/1  \"hi ⏎ there\""
        );
    }
}
