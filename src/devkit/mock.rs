//! librdkafka's mock Kafka cluster (`rdkafka::mocking`), run on a thread of its own.
//!
//! It speaks the real Kafka protocol on an ephemeral loopback port, supports consumer groups and
//! commits, and keeps everything in memory: nothing is written to disk and everything is gone when
//! it stops. Note that it keeps only about 5 MiB per partition; older messages are dropped.
//! `MockCluster` is not `Send`, so it lives on a dedicated thread that owns it until
//! [`MockBroker`] is dropped.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// The cluster as the owning thread holds it.
pub type Cluster = MockCluster<'static, DefaultProducerContext>;

/// Work to run on the cluster's thread (fault injection in tests), with its reply channel.
type Command = Box<dyn FnOnce(&Cluster) + Send>;

/// A running mock cluster.
pub struct MockBroker {
    bootstrap: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// Why the mock cluster could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the mock Kafka cluster: {0}")]
pub struct MockError(String);

impl MockBroker {
    /// Starts a cluster of `brokers` brokers and creates `topics` (name, partitions) on it.
    pub fn start(brokers: i32, topics: &[(String, i32)]) -> Result<Self, MockError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let topics = topics.to_vec();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for (name, partitions) in &topics {
                    if let Err(e) = cluster.create_topic(name, *partitions, 1) {
                        let _ = ready_tx.send(Err(format!("topic {name}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serve commands until the owner is gone, then drop the cluster on this thread.
                while let Ok(command) = cmd_rx.recv() {
                    command(&cluster);
                }
                drop(cluster);
            })
            .map_err(|e| MockError(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(bootstrap)) => Ok(Self {
                bootstrap,
                commands: Some(cmd_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(MockError(e)),
            Err(_) => Err(MockError("the mock cluster thread died".into())),
        }
    }

    /// The `bootstrap.servers` value that reaches the cluster.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Runs `f` on the cluster's thread and returns its result (fault injection: broker down/up,
    /// request errors, round-trip delays).
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Cluster) -> R + Send + 'static,
    ) -> Result<R, MockError> {
        let (tx, rx) = mpsc::channel();
        let command: Command = Box::new(move |cluster| {
            let _ = tx.send(f(cluster));
        });
        self.commands
            .as_ref()
            .and_then(|c| c.send(command).ok())
            .ok_or_else(|| MockError("the mock cluster has stopped".into()))?;
        rx.recv()
            .map_err(|_| MockError("the mock cluster thread died".into()))
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
