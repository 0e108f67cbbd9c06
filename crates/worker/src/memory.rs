//! Memory management: Dask's thresholds, as fractions of the worker's memory limit, and the
//! memory thread that applies them.
//!
//! - **target** (0.6): managed memory (the bytes of results held in memory) above this spills
//!   least recently used results to disk until it is below again;
//! - **spill** (0.7): process memory (RSS) above this spills least recently used results until
//!   RSS is back under the target, or nothing is left to spill;
//! - **pause** (0.8): RSS above this pauses the worker: no new task starts, running tasks go on,
//!   data is still served to peers; it resumes below the threshold again (less a little
//!   hysteresis, [`PAUSE_HYSTERESIS`]);
//! - **terminate** (0.95): the nanny's, which restarts a worker above it; unused here.
//!
//! One OS thread per worker (`taskwire-memory`) samples memory every
//! [`MemoryConfig::monitor_interval`] and does all the spill writes, so neither the async event
//! loop nor a task thread ever waits on the disk for a spill; the store wakes it as soon as
//! managed memory passes the target.

use crate::store::Store;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// A paused worker resumes once its memory is this fraction of the limit below the pause
/// threshold, so that it does not flap when memory hovers at the threshold.
pub const PAUSE_HYSTERESIS: f64 = 0.02;

/// A worker's memory thresholds, as fractions of its memory limit (Dask's
/// `distributed.worker.memory.*`). `None` turns a behaviour off; a memory limit of 0 turns them
/// all off.
///
/// ```
/// use taskwire_worker::MemoryConfig;
///
/// let config = MemoryConfig { pause: None, ..MemoryConfig::default() };
/// assert_eq!(config.target, Some(0.6));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryConfig {
    /// Spill results while managed memory is above this fraction (default 0.6).
    pub target: Option<f64>,
    /// Spill results while process memory (RSS) is above this fraction (default 0.7).
    pub spill: Option<f64>,
    /// Pause while process memory is above this fraction (default 0.8).
    pub pause: Option<f64>,
    /// The nanny restarts the worker above this fraction (default 0.95); the worker itself does
    /// not use it.
    pub terminate: Option<f64>,
    /// How often the memory thread samples process memory (default 100 ms).
    pub monitor_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> MemoryConfig {
        MemoryConfig {
            target: Some(0.6),
            spill: Some(0.7),
            pause: Some(0.8),
            terminate: Some(0.95),
            monitor_interval: Duration::from_millis(100),
        }
    }
}

impl MemoryConfig {
    /// No spilling, no pausing, no termination: memory is only reported.
    pub fn disabled() -> MemoryConfig {
        MemoryConfig {
            target: None,
            spill: None,
            pause: None,
            terminate: None,
            ..MemoryConfig::default()
        }
    }
}

/// `fraction` of `limit`, in bytes; `None` when either is off.
pub(crate) fn threshold(limit: u64, fraction: Option<f64>) -> Option<u64> {
    match fraction {
        Some(f) if limit > 0 && f.is_finite() && f >= 0.0 => Some((limit as f64 * f) as u64),
        _ => None,
    }
}

/// Where the worker reads its process memory in bytes: [`crate::process_rss`] unless a test or
/// an embedding program gives another ([`crate::WorkerBuilder::memory_source`]).
#[derive(Clone)]
pub struct MemorySource(Arc<dyn Fn() -> u64 + Send + Sync>);

impl MemorySource {
    /// A source that calls `f`.
    pub fn new(f: impl Fn() -> u64 + Send + Sync + 'static) -> MemorySource {
        MemorySource(Arc::new(f))
    }

    /// The process's resident set size.
    pub fn process() -> MemorySource {
        MemorySource::new(crate::process_rss)
    }

    /// Read it now.
    pub fn read(&self) -> u64 {
        (self.0)()
    }
}

impl fmt::Debug for MemorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemorySource")
    }
}

/// Makes the allocator give freed memory back to the operating system now
/// ([`crate::WorkerBuilder::memory_release`]), e.g. mimalloc's `mi_collect(true)` or glibc's
/// `malloc_trim(0)`. Allocators keep freed memory for a while, so after a spill the process's
/// memory may not drop for seconds; a paused worker would stay paused that long.
#[derive(Clone)]
pub struct MemoryRelease(Arc<dyn Fn() + Send + Sync>);

impl MemoryRelease {
    /// A release that calls `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> MemoryRelease {
        MemoryRelease(Arc::new(f))
    }

    /// Call it.
    pub fn run(&self) {
        (self.0)()
    }

    /// The release every worker of this process uses unless its builder names one: a program
    /// calls this once, where it picks its allocator. False if a default was already set (the
    /// first one stays).
    pub fn set_process_default(release: MemoryRelease) -> bool {
        PROCESS_RELEASE.set(release).is_ok()
    }

    /// The process default, if set.
    pub(crate) fn process_default() -> Option<MemoryRelease> {
        PROCESS_RELEASE.get().cloned()
    }
}

static PROCESS_RELEASE: OnceLock<MemoryRelease> = OnceLock::new();

impl fmt::Debug for MemoryRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemoryRelease")
    }
}

/// The thresholds in bytes.
#[derive(Clone, Copy, Debug)]
struct Limits {
    limit: u64,
    target: Option<u64>,
    spill: Option<u64>,
    pause: Option<u64>,
    resume: Option<u64>,
}

/// The worker's memory thread, and the latest memory sample.
#[derive(Debug)]
pub(crate) struct Monitor {
    store: Arc<Store>,
    source: MemorySource,
    rss: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Start the memory thread for a worker with `limit` bytes (none when the limit is 0 or
    /// every threshold is off). Pause changes are sent on `paused`.
    pub(crate) fn start(
        store: Arc<Store>,
        limit: u64,
        config: &MemoryConfig,
        (source, release): (MemorySource, Option<MemoryRelease>),
        paused: watch::Sender<bool>,
    ) -> Monitor {
        let limits = Limits {
            limit,
            target: threshold(limit, config.target),
            spill: threshold(limit, config.spill),
            pause: threshold(limit, config.pause),
            resume: threshold(limit, config.pause.map(|p| (p - PAUSE_HYSTERESIS).max(0.0))),
        };
        let rss = Arc::new(AtomicU64::new(source.read()));
        let active = limits.target.is_some() || limits.spill.is_some() || limits.pause.is_some();
        let thread = active.then(|| {
            let (store, source, rss) = (store.clone(), source.clone(), rss.clone());
            let interval = config.monitor_interval.max(Duration::from_millis(1));
            std::thread::Builder::new()
                .name("taskwire-memory".into())
                .spawn(move || {
                    let memory = Memory {
                        source: &source,
                        release: release.as_ref(),
                        rss: &rss,
                    };
                    run(&store, memory, limits, interval, &paused)
                })
                .expect("spawning the memory thread")
        });
        Monitor {
            store,
            source,
            rss,
            thread,
        }
    }

    /// Process memory: the memory thread's latest sample, or a fresh one without a thread.
    pub(crate) fn rss(&self) -> u64 {
        if self.thread.is_some() {
            self.rss.load(Ordering::Relaxed)
        } else {
            self.source.read()
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // The thread exits after the write it is doing, if any; nothing waits for it.
        self.store.close();
        self.thread.take();
    }
}

/// How the memory thread reads and releases process memory, and where it publishes samples.
struct Memory<'a> {
    source: &'a MemorySource,
    release: Option<&'a MemoryRelease>,
    rss: &'a AtomicU64,
}

fn run(
    store: &Store,
    memory: Memory<'_>,
    limits: Limits,
    interval: Duration,
    paused_tx: &watch::Sender<bool>,
) {
    let Memory {
        source,
        release,
        rss: rss_out,
    } = memory;
    let mut paused = false;
    let mut next_sample = Instant::now();
    loop {
        let wait = next_sample.saturating_duration_since(Instant::now());
        if !store.wait_for_work(wait) {
            return;
        }
        // Managed memory above the target (or a result larger than it): woken by the store.
        store.spill_excess();
        if Instant::now() < next_sample {
            continue;
        }
        next_sample = Instant::now() + interval;
        let rss = source.read();
        if let Some(pause) = limits.pause {
            let now_paused = if paused {
                rss > limits.resume.unwrap_or(pause)
            } else {
                rss > pause
            };
            if now_paused != paused {
                paused = now_paused;
                let pct = percent(rss, limits.limit);
                if paused {
                    warn!(
                        "worker paused: process memory {} ({pct:.0}% of the {} limit) is above the pause threshold; no new tasks start",
                        human(rss),
                        human(limits.limit)
                    );
                } else {
                    info!(
                        "worker resumed: process memory {} ({pct:.0}% of the {} limit)",
                        human(rss),
                        human(limits.limit)
                    );
                }
                paused_tx.send_replace(paused);
            }
        }
        // Published after the pause decision, so that a reader who sees a sample knows it has
        // been acted on.
        rss_out.store(rss, Ordering::Relaxed);
        // Process memory above the spill threshold: spill what RSS exceeds the target by (one
        // tick's worth; RSS may take a while to drop, so the next tick looks again).
        let pressure = paused || limits.spill.is_some_and(|s| rss > s);
        if let Some(spill) = limits.spill
            && rss > spill
        {
            let goal = limits.target.unwrap_or(spill).min(spill);
            let written = store.spill_lru(rss - goal);
            if written > 0 {
                info!(
                    "process memory {} ({:.0}% of the limit) is above the spill threshold: spilled {}",
                    human(rss),
                    percent(rss, limits.limit),
                    human(written)
                );
            }
        }
        // Under pressure, memory freed by spilling (or by tasks) must show in the next sample,
        // not when the allocator gets round to returning it.
        if pressure && let Some(release) = release {
            release.run();
        }
    }
}

fn percent(n: u64, limit: u64) -> f64 {
    n as f64 * 100.0 / limit.max(1) as f64
}

fn human(n: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SpillSettings;
    use bytes::Bytes;
    use taskwire_protocol::TaskId;

    #[test]
    fn thresholds() {
        assert_eq!(threshold(1000, Some(0.6)), Some(600));
        assert_eq!(threshold(0, Some(0.6)), None, "limit 0: no limit");
        assert_eq!(threshold(1000, None), None);
        assert_eq!(threshold(1000, Some(f64::NAN)), None);
        let d = MemoryConfig::default();
        assert_eq!(
            (d.target, d.spill, d.pause, d.terminate),
            (Some(0.6), Some(0.7), Some(0.8), Some(0.95))
        );
        assert_eq!(MemoryConfig::disabled().target, None);
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_thread_pauses_resumes_and_spills_by_process_memory() {
        let dir = std::env::temp_dir().join(format!("taskwire-memory-test-{}", std::process::id()));
        let store = Arc::new(Store::new(Some(SpillSettings {
            dir: dir.join("spill"),
            target: Some(600),
        })));
        let fake = Arc::new(AtomicU64::new(100));
        let f = fake.clone();
        let source = MemorySource::new(move || f.load(Ordering::Relaxed));
        let (tx, mut rx) = watch::channel(false);
        let config = MemoryConfig {
            monitor_interval: Duration::from_millis(1),
            ..MemoryConfig::default()
        };
        let releases = Arc::new(AtomicU64::new(0));
        let r = releases.clone();
        let release = MemoryRelease::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let monitor = Monitor::start(store.clone(), 1000, &config, (source, Some(release)), tx);
        for t in 0..5 {
            store.insert(TaskId(t), Bytes::from(vec![t as u8; 100]));
        }
        // Below every threshold: nothing happens.
        assert_eq!(store.managed(), 500);
        assert!(!*rx.borrow_and_update());

        // Above pause (800): paused, and spilling (above 700) down toward 600 by LRU.
        fake.store(900, Ordering::Relaxed);
        wait_until("pause", || *rx.borrow_and_update());
        wait_until("spill", || store.spilled() >= 300);
        assert_eq!(monitor.rss(), 900);
        wait_until("a memory release", || releases.load(Ordering::Relaxed) > 0);
        // Spilled the least recently used first.
        assert_eq!(store.get(TaskId(0)), Some(Bytes::from(vec![0u8; 100])));

        // Under 80% but within the hysteresis: still paused.
        fake.store(790, Ordering::Relaxed);
        wait_until("a sample", || monitor.rss() == 790);
        wait_until("another sample", || monitor.rss() == 790);
        assert!(
            *rx.borrow(),
            "resumes only below {PAUSE_HYSTERESIS} under the threshold"
        );
        fake.store(500, Ordering::Relaxed);
        wait_until("resume", || !*rx.borrow_and_update());
        // No pressure, no releases (two samples: the one that resumed may have released).
        wait_until("a sample", || monitor.rss() == 500);
        let n = releases.load(Ordering::Relaxed);
        fake.store(501, Ordering::Relaxed);
        wait_until("a sample", || monitor.rss() == 501);
        assert_eq!(releases.load(Ordering::Relaxed), n);

        // Managed memory above the target: the store wakes the thread.
        let before = store.spilled();
        store.insert(TaskId(10), Bytes::from(vec![1u8; 400]));
        store.insert(TaskId(11), Bytes::from(vec![2u8; 400]));
        wait_until("spill by managed memory", || store.managed() <= 600);
        assert_eq!(store.spilled(), before + 400, "the older of the two");
        assert_eq!(store.get(TaskId(10)), Some(Bytes::from(vec![1u8; 400])));
        drop(monitor);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
