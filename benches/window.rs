//! Window engine benchmarks: push and expire with 10k, 100k and 1M open windows, and the memory an
//! open window costs beyond its fragment bytes (measured with a counting allocator).
//!
//!   cargo bench --bench window

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use lull::model::fragment::{parse, Fragment, Parsed, RawMessage, Rules};
use lull::model::window::{WindowConfig, WindowEngine};

/// Counts live heap bytes, to measure memory per open window; allocates with mimalloc, as the
/// `lull` binary does (glibc's malloc would be most of what this benchmark measures).
struct Counting;

static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded to mimalloc with the caller's layout.
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above (mimalloc) with this layout.
        unsafe { INNER.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CFG: WindowConfig = WindowConfig {
    batching: true,
    quiet_ms: 2_000,
    max_wait_ms: 15_000,
    max_fragments: 100,
    max_batch_bytes: 262_144,
    grace_ms: 200,
    typing_ms: 6_000,
    followup_ms: 10_000,
};

const VALUE: &[u8] = br#"{"user_id":"user-000000","text":"hi there, I need help"}"#;

fn fragment(user: usize, offset: i64, ts: i64) -> Fragment {
    // Parsed as the worker parses it (the text is read in place inside the value).
    let key = format!("user-{user:06}");
    let msg = RawMessage {
        key: Some(key.as_bytes()),
        value: Some(VALUE),
        event_id_header: None,
        offset,
        ts,
    };
    let rules = Rules {
        max_fragment_bytes: 1 << 20,
        ..Rules::default()
    };
    match parse(msg, &rules) {
        Ok(Parsed::Fragment(f)) => f,
        other => panic!("the bench's value is a fragment: {other:?}"),
    }
}

/// An engine holding `n` open windows (one fragment each), and the next free offset.
fn filled(n: usize) -> (WindowEngine, i64) {
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    for u in 0..n {
        e.push(fragment(u, u as i64, 1_000), i64::MAX / 4, &mut out);
    }
    assert!(out.is_empty());
    (e, n as i64)
}

/// A stream like real traffic: each user types a burst of 3 fragments; partition time moves
/// 1 ms every `per_ms` fragments, chosen so that about `open` windows are open at any time
/// (a window lives quiet + grace = 2.2 s of partition time). Every fragment is either a join or
/// opens a window, and old windows flush by deadline as time moves: the engine's steady state.
struct Stream {
    next_user: usize,
    users: usize,
    in_burst: usize,
    offset: i64,
    ts: i64,
    per_ms: usize,
    count: usize,
}

impl Stream {
    fn new(open: usize) -> Self {
        Self {
            next_user: 0,
            users: open * 4,
            in_burst: 0,
            offset: 0,
            ts: 1_000,
            per_ms: (open * 3 / 2_200).max(1),
            count: 0,
        }
    }

    fn next(&mut self) -> Fragment {
        let f = fragment(self.next_user, self.offset, self.ts);
        self.offset += 1;
        self.count += 1;
        if self.count % self.per_ms == 0 {
            self.ts += 1;
        }
        self.in_burst += 1;
        if self.in_burst == 3 {
            self.in_burst = 0;
            self.next_user = (self.next_user + 1) % self.users;
        }
        f
    }
}

fn push(c: &mut Criterion) {
    let mut g = c.benchmark_group("push");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    for n in [10_000usize, 100_000, 1_000_000] {
        let chunk = 100_000usize;
        g.throughput(Throughput::Elements(chunk as u64));
        let mut engine = WindowEngine::new(CFG);
        let mut stream = Stream::new(n);
        let mut out = Vec::with_capacity(1 << 16);
        // Warm up to the steady state: about `n` windows open.
        while engine.open_windows() < n * 9 / 10 {
            engine.push(stream.next(), i64::MAX / 4, &mut out);
            out.clear();
        }
        let open = engine.open_windows();
        g.bench_function(format!("{n}_open_windows"), |b| {
            b.iter_batched(
                || (0..chunk).map(|_| stream.next()).collect::<Vec<_>>(),
                |frags| {
                    for f in frags {
                        engine.push(f, i64::MAX / 4, &mut out);
                    }
                    // Flushed batches go to the sink in the real worker: hand them over.
                    black_box(out.len());
                    std::mem::take(&mut out)
                },
                BatchSize::LargeInput,
            )
        });
        println!(
            "push/{n}_open_windows: {open} windows open at the start, {} at the end",
            engine.open_windows()
        );
    }
    g.finish();
}

fn expire(c: &mut Criterion) {
    let mut g = c.benchmark_group("expire");
    g.measurement_time(Duration::from_secs(4)).sample_size(10);
    for n in [10_000usize, 100_000, 1_000_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_open_windows"), |b| {
            b.iter_batched(
                || filled(n).0,
                |mut engine| {
                    let mut out = Vec::with_capacity(n);
                    engine.advance(100_000, &mut out);
                    assert_eq!(out.len(), n);
                    black_box(out)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// `n` windows of `per_window` fragments each: heap bytes per window in all, and of the fragments
/// alone as the worker hands them over (key string, packed value and fields, struct) before the
/// engine holds them.
fn held(n: usize, per_window: usize) -> (f64, f64) {
    let before = LIVE.load(Ordering::Relaxed);
    let frags: Vec<Fragment> = (0..n * per_window)
        .map(|i| fragment(i % n, i as i64, 1_000))
        .collect();
    let with_frags = LIVE.load(Ordering::Relaxed);
    let mut e = WindowEngine::new(CFG);
    let mut out = Vec::new();
    for f in frags {
        e.push(f, i64::MAX / 4, &mut out);
    }
    let after = LIVE.load(Ordering::Relaxed);
    black_box(e);
    (
        (after - before) as f64 / n as f64,
        (with_frags - before) as f64 / n as f64,
    )
}

/// Heap bytes per open window beyond its fragments' value bytes (printed, not timed): windows of
/// one fragment at three sizes, then real bursts of 2 and 3 fragments at 100k windows.
fn memory() {
    let shapes = [
        (10_000usize, 1usize),
        (100_000, 1),
        (1_000_000, 1),
        (100_000, 2),
        (100_000, 3),
    ];
    for (n, per_window) in shapes {
        let (total, fragment_heap) = held(n, per_window);
        let values = VALUE.len() * per_window;
        let name = if per_window == 1 {
            format!("{n}_open_windows")
        } else {
            format!("{n}_open_windows_of_{per_window}")
        };
        println!(
            "memory/{name}: {total:.0} B per open window in all; fragment heap {fragment_heap:.0} B \
             (values {values} B); overhead beyond the fragment bytes {:.0} B",
            total - values as f64
        );
    }
}

criterion_group!(benches, push, expire);

fn main() {
    memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
