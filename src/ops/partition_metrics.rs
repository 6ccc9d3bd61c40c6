//! The per-partition families: what `lull top` (and a dashboard) shows for each partition an
//! instance owns — fragments in, batches out, commits, open windows, the oldest window's age and
//! the worker's phase. Labelled by the input partition only (a bounded set); a partition's series
//! go when it is revoked, so a counter starts again from 0 when it comes back (`rate()` takes
//! that as a reset).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::metrics::{counter_vec, gauge_vec, registered};

/// The phases `lull_partition_phase` reports, one series each (1 for the current one).
pub const PHASES: &[&str] = &["claiming", "waiting", "running", "draining", "fenced"];

/// The per-partition families, registered in the process's one registry.
pub struct PartitionFamilies {
    fragments: IntCounterVec,
    batches: IntCounterVec,
    commits: IntCounterVec,
    open_windows: IntGaugeVec,
    oldest_age: GaugeVec,
    phase: IntGaugeVec,
}

impl PartitionFamilies {
    /// Defines and registers the families in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let oldest_age = GaugeVec::new(
            Opts::new(
                "lull_partition_oldest_open_window_age_seconds",
                "Age of the partition's oldest open window (0 when none is open).",
            ),
            &["partition"],
        )
        .expect("static metric definition is valid");
        let oldest_age = registered(registry, oldest_age);
        Self {
            fragments: counter_vec(
                registry,
                "lull_partition_fragments_received_total",
                "Input messages read from the partition.",
                &["partition"],
            ),
            batches: counter_vec(
                registry,
                "lull_partition_batches_flushed_total",
                "Batches of the partition produced and acknowledged (at_least_once) or committed (exactly_once).",
                &["partition"],
            ),
            commits: counter_vec(
                registry,
                "lull_partition_commits_total",
                "Commits that moved the partition on: offset commits (at_least_once) or committed transactions (exactly_once).",
                &["partition"],
            ),
            open_windows: gauge_vec(
                registry,
                "lull_partition_open_windows",
                "Open windows of the partition.",
                &["partition"],
            ),
            oldest_age,
            phase: gauge_vec(
                registry,
                "lull_partition_phase",
                "The partition worker's phase: 1 for the current one (claiming, waiting, running, draining, fenced).",
                &["partition", "phase"],
            ),
        }
    }

    /// The counters one partition's worker adds to, looked up once.
    pub fn counters(&self, partition: i32) -> PartitionCounters {
        let p = partition.to_string();
        PartitionCounters {
            fragments: self.fragments.with_label_values(&[&p]),
            batches: self.batches.with_label_values(&[&p]),
            commits: self.commits.with_label_values(&[&p]),
        }
    }

    /// Counts a commit of `partition` (the offset committer, which commits several at once).
    pub fn committed(&self, partition: i32) {
        self.commits
            .with_label_values(&[&partition.to_string()])
            .inc();
    }

    /// Publishes the gauges of `partition`: its open windows, its oldest window's age and its
    /// phase (`None`: stopped, every phase 0).
    pub fn set(&self, partition: i32, open_windows: usize, oldest_age: f64, phase: Option<&str>) {
        let p = partition.to_string();
        self.open_windows
            .with_label_values(&[&p])
            .set(open_windows as i64);
        self.oldest_age.with_label_values(&[&p]).set(oldest_age);
        for name in PHASES {
            self.phase
                .with_label_values(&[p.as_str(), name])
                .set(i64::from(phase == Some(*name)));
        }
    }

    /// Drops every series of `partition` (revoked).
    pub fn forget(&self, partition: i32) {
        let p = partition.to_string();
        let _ = self.fragments.remove_label_values(&[&p]);
        let _ = self.batches.remove_label_values(&[&p]);
        let _ = self.commits.remove_label_values(&[&p]);
        let _ = self.open_windows.remove_label_values(&[&p]);
        let _ = self.oldest_age.remove_label_values(&[&p]);
        for name in PHASES {
            let _ = self.phase.remove_label_values(&[p.as_str(), name]);
        }
    }
}

/// One partition's counters: counting costs an atomic add, not a label lookup.
#[derive(Clone)]
pub struct PartitionCounters {
    /// Input messages read.
    pub fragments: IntCounter,
    /// Batches made visible.
    pub batches: IntCounter,
    /// Committed transactions (exactly_once; the offset committer counts at_least_once's).
    pub commits: IntCounter,
}

impl std::fmt::Debug for PartitionCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionCounters").finish_non_exhaustive()
    }
}
