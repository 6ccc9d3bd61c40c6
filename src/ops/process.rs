//! The `process_*` metric families (CPU, memory, file descriptors, threads, start time), read
//! from `/proc` at each scrape.
//!
//! The prometheus crate's own collector reports `process_cpu_seconds_total` in whole seconds (an
//! integer counter), so `rate()` over a minute moves in steps of a sixtieth of a core and a quiet
//! process reads as idle. This wraps that collector and puts the exact figure, to the clock tick,
//! in its place; every other family is the crate's.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::MetricFamily;

/// The crate's process collector, with CPU time to the clock tick.
pub struct ProcessMetrics {
    inner: ProcessCollector,
}

impl ProcessMetrics {
    /// For the calling process.
    pub fn for_self() -> Self {
        Self {
            inner: ProcessCollector::for_self(),
        }
    }
}

/// User plus system CPU time of this process, in seconds, to the clock tick.
fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second();
    (ticks > 0).then(|| (stat.utime + stat.stime) as f64 / ticks as f64)
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        if let Some(seconds) = cpu_seconds() {
            for family in families
                .iter_mut()
                .filter(|f| f.name() == "process_cpu_seconds_total")
            {
                for metric in family.mut_metric().iter_mut() {
                    let mut counter = metric.get_counter().clone();
                    counter.set_value(seconds);
                    metric.set_counter(counter);
                }
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_reported_to_the_tick_not_in_whole_seconds() {
        // Burn a little CPU, so the process has used some that whole seconds would cut off.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(150) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let before = cpu_seconds().expect("/proc is readable");
        let families = ProcessMetrics::for_self().collect();
        let after = cpu_seconds().expect("/proc is readable");
        let cpu = families
            .iter()
            .find(|f| f.name() == "process_cpu_seconds_total")
            .expect("the CPU family is collected");
        let reported = cpu.get_metric()[0].get_counter().get_value();
        assert!(before > 0.0, "{before}");
        assert!(
            (before..=after).contains(&reported),
            "reported {reported} s, read {before}..{after} s around it"
        );
        assert!(
            families
                .iter()
                .any(|f| f.name() == "process_resident_memory_bytes"),
            "the other families are the crate's"
        );
    }
}
