//! lull as OS processes while simulated users type: what the chaos and upgrade suites share.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use super::{fragment, send, DEADLINE};

/// A `lull run` child process whose stderr (JSON log lines) is collected, killed on drop.
pub struct Worker {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    /// Whether its log said it got partitions.
    pub fn assigned(&self) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("partitions assigned"))
    }

    /// Where its HTTP endpoints listen, once it said so.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.log.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if !v["message"].as_str()?.starts_with("serving /metrics") {
                return None;
            }
            v["addr"].as_str()?.parse().ok()
        })
    }

    /// Sends `signal` (STOP, CONT) to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// SIGTERM and wait: a graceful stop must exit 0.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < end,
                "lull did not stop on SIGTERM: {:#?}",
                self.tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            status.code(),
            Some(0),
            "graceful stop: {:#?}",
            self.tail(40)
        );
    }

    /// The last `n` lines of its log, newest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(n)
            .cloned()
            .collect()
    }
}

impl Worker {
    /// Spawns `command` (a `lull run` with `LULL_LOG_FORMAT=json`), collecting its stderr.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lull run starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("piped");
        // LULL_TEST_LOG_DIR: also keep each process's log in a file there (for a failure's
        // post-mortem).
        let mut file = std::env::var_os("LULL_TEST_LOG_DIR").and_then(|dir| {
            std::fs::File::create(
                std::path::Path::new(&dir).join(format!("lull-{}.log", child.id())),
            )
            .ok()
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Worker { child, log }
    }
}

/// Simulated users typing bursts until stopped; counts fragments per partition.
pub struct Typing {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
    per_partition: Arc<Mutex<HashMap<i32, usize>>>,
}

impl Typing {
    /// `users` users keyed `{tag}-uNN` start typing into `topic`: bursts of 3 to 5 fragments
    /// 120 ms apart, then a pause of three quiet periods (`quiet_ms`).
    pub fn start(
        producer: &FutureProducer,
        topic: &str,
        tag: &str,
        users: usize,
        quiet_ms: u64,
    ) -> Self {
        let stop = CancellationToken::new();
        let per_partition = Arc::new(Mutex::new(HashMap::new()));
        let tasks = (0..users)
            .map(|u| {
                let (producer, topic, stop) = (producer.clone(), topic.to_string(), stop.clone());
                let counts = per_partition.clone();
                let user = format!("{tag}-u{u:02}");
                tokio::spawn(async move {
                    let mut seq = 0;
                    // Users start at different moments, so bursts interleave.
                    tokio::time::sleep(Duration::from_millis(37 * u as u64)).await;
                    while !stop.is_cancelled() {
                        for _ in 0..(3 + seq % 3) {
                            let (p, _) = send(
                                &producer,
                                &topic,
                                Some(&user),
                                &fragment(&user, seq),
                                None,
                                None,
                            )
                            .await;
                            *counts.lock().unwrap().entry(p).or_default() += 1;
                            seq += 1;
                            tokio::time::sleep(Duration::from_millis(120)).await;
                        }
                        tokio::time::sleep(Duration::from_millis(quiet_ms * 3)).await;
                    }
                    seq
                })
            })
            .collect();
        Self {
            stop,
            tasks,
            per_partition,
        }
    }

    /// The partition typed into most so far.
    pub fn busiest_partition(&self) -> i32 {
        let counts = self.per_partition.lock().unwrap();
        counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or(0, |(p, _)| *p)
    }

    /// Stops typing after the bursts under way; returns how many fragments were typed.
    pub async fn finish(self) -> usize {
        self.stop.cancel();
        let mut total = 0;
        for t in self.tasks {
            total += t.await.expect("typist");
        }
        total
    }
}
