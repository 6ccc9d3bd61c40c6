//! `lull dev-broker`: librdkafka's mock Kafka cluster as a process of its own, with lull's topics,
//! for local development and multi-process tests. In memory only.

use std::process::ExitCode;

use lull::config::Config;

/// DevBroker arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DevBrokerArgs {
    /// Partitions of each of lull's topics, created at start.
    #[arg(long, default_value_t = 12)]
    pub partitions: i32,
    /// Number of mock brokers.
    #[arg(long, default_value_t = 1)]
    pub brokers: i32,
    /// Also write the bootstrap address to this file (written once the broker is ready).
    #[arg(long)]
    pub bootstrap_file: Option<std::path::PathBuf>,
    /// Another topic to create (repeatable), with the same partition count.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Also create the state topic of this consumer group (repeatable); that of LULL_GROUP_ID is
    /// always created. The mock cluster cannot create topics on request, so `lull run` with
    /// another LULL_GROUP_ID needs it made here.
    #[arg(long = "group")]
    pub groups: Vec<String>,
}

/// `lull dev-broker`.
pub async fn main(config: Config, args: DevBrokerArgs) -> ExitCode {
    let DevBrokerArgs {
        partitions,
        brokers,
        bootstrap_file,
        topics: extra_topics,
        groups,
    } = args;
    super::init_tracing(config.log_format, "warn");
    if partitions < 1 || brokers < 1 {
        eprintln!("--partitions and --brokers must be at least 1");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let mut topics = vec![
        (config.input_topic.clone(), partitions),
        (config.output_topic.clone(), partitions),
        (config.dlq_topic.clone(), partitions),
        (config.state_topic(), partitions),
    ];
    topics.extend(extra_topics.into_iter().map(|t| (t, partitions)));
    for group in groups {
        let mut c = config.clone();
        c.group_id = group;
        let state = c.state_topic();
        if !topics.iter().any(|(t, _)| *t == state) {
            topics.push((state, partitions));
        }
    }
    let broker = match lull::devkit::mock::MockBroker::start(brokers, &topics) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &bootstrap_file {
        // Write then rename, so a reader never sees a half-written address.
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, broker.bootstrap()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("{}", broker.bootstrap());
    eprintln!(
        "mock Kafka cluster at {} with {} ({} partitions each); in memory only, Ctrl-C to stop",
        broker.bootstrap(),
        topics
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        partitions
    );
    match lull::ops::shutdown::next_signal().await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot wait for signals: {e}");
            ExitCode::FAILURE
        }
    }
}
