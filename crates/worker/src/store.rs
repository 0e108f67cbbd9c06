//! The worker's data store: finished results by task, shared with the data server.
//!
//! Results are `Bytes`, so handing one to a task or to a peer is a reference count, not a copy.
//! With spilling on ([`SpillSettings`]), the store also keeps the results in memory in
//! least-recently-used order and can write the oldest ones to files in a spill directory
//! ([`Store::spill_excess`], [`Store::spill_lru`]); a spilled result is read back, transparently,
//! by [`Store::get`] and [`Store::get_many`].
//!
//! # Design
//!
//! - One mutex guards the index. No file is read or written while it is held: a spill marks its
//!   victims `Spilling` (they stay readable from memory), writes them with the lock released,
//!   then takes the lock again to drop the in-memory copy; a read of a spilled result copies the
//!   file's path out and reads it unlocked. Spills run on one thread at a time (the worker's
//!   memory thread, see `memory.rs`), never in the async event loop.
//! - Every insert gets a unique id and every spill a unique file name, so a spill that races
//!   with a removal or a replacement of the same task notices it when it takes the lock again
//!   and deletes its own file; no file is ever shared by two versions of a result.
//! - LRU order is a queue of `(task, stamp)` in use order: a use gives the entry a new stamp and
//!   pushes it at the back (O(1)); the spiller pops from the front and skips items whose stamp
//!   is stale. The queue is compacted when stale items outnumber live ones.
//! - A failed write (disk full, unwritable directory) keeps the result in memory, logs a
//!   warning and stops spilling for [`SPILL_RETRY`].
//! - A spilled result stays on disk when read: the reader gets its own copy and the store does
//!   not move the result back into memory (which could force other results out again).

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use taskwire_protocol::TaskId;
use tracing::{debug, error, warn};

/// After a failed spill write, how long the store keeps everything in memory before it tries
/// again.
pub(crate) const SPILL_RETRY: Duration = Duration::from_secs(1);

/// Spill file names are unique within the process: `<pid>-<n>-<task>.spill`.
static SPILL_SEQ: AtomicU64 = AtomicU64::new(1);

/// Where and when a store spills.
#[derive(Clone, Debug)]
pub(crate) struct SpillSettings {
    /// The spill directory (`<local dir>/spill`), created on first use.
    pub(crate) dir: PathBuf,
    /// Spill least recently used results while managed memory is above this many bytes;
    /// results larger than this go straight to disk. `None`: only [`Store::spill_lru`] spills.
    pub(crate) target: Option<u64>,
}

/// The data store. See the module documentation.
#[derive(Debug)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
    /// Wakes the memory thread ([`Store::wait_for_work`]).
    wake: Condvar,
    spill: Option<SpillSettings>,
}

impl Default for Store {
    fn default() -> Store {
        Store::new(None)
    }
}

#[derive(Debug, Default)]
struct Inner {
    data: HashMap<TaskId, Entry>,
    /// Uses in order, oldest first; an item is live while its stamp is the entry's stamp and
    /// the entry is in memory. Kept only when spilling is on.
    lru: VecDeque<(TaskId, u64)>,
    /// The next stamp and insert id.
    clock: u64,
    /// Bytes of results in memory (including those being written out).
    managed: u64,
    /// Bytes of results being written out (still in memory).
    spilling: u64,
    /// Bytes of results on disk only.
    spilled: u64,
    /// Results larger than the target, to be written out first.
    forced: Vec<(TaskId, u64)>,
    /// No spilling before this instant (after a failed write).
    retry_at: Option<Instant>,
    /// The store is shutting down: the memory thread should exit.
    closed: bool,
}

#[derive(Debug)]
struct Entry {
    /// Unique per insert.
    id: u64,
    /// Last use.
    stamp: u64,
    len: u64,
    slot: Slot,
}

#[derive(Debug)]
enum Slot {
    Memory(Bytes),
    /// Being written to a file; still served from memory.
    Spilling(Bytes),
    Disk(PathBuf),
}

/// Where a result is, for callers that must not read files on their thread.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// In memory: here it is.
    Memory(Bytes),
    /// On disk: [`Store::get`] reads it (blocking).
    Disk,
    /// Not held.
    Absent,
}

/// What a use found.
enum Found {
    Memory(Bytes),
    Disk { id: u64, len: u64, path: PathBuf },
}

/// A result chosen for spilling, written with the lock released.
struct Victim {
    task: TaskId,
    id: u64,
    value: Bytes,
    path: PathBuf,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// A use of `task`: its value when in memory (moved to the back of the LRU order), or where
    /// its file is. One hash lookup: this runs for every input of every task.
    fn use_value(&mut self, task: TaskId, spilling_on: bool) -> Option<Found> {
        let Inner {
            data, lru, clock, ..
        } = self;
        let e = data.get_mut(&task)?;
        let value = match &e.slot {
            Slot::Memory(v) => v.clone(),
            Slot::Spilling(v) => return Some(Found::Memory(v.clone())),
            Slot::Disk(path) => {
                return Some(Found::Disk {
                    id: e.id,
                    len: e.len,
                    path: path.clone(),
                });
            }
        };
        // Already the most recent use: nothing to record.
        if spilling_on && e.stamp != *clock {
            *clock += 1;
            e.stamp = *clock;
            lru.push_back((task, *clock));
            if lru.len() > 2 * data.len() + 64 {
                lru.retain(|(t, s)| is_live(data, *t, *s));
            }
        }
        Some(Found::Memory(value))
    }

    /// Account for an entry leaving the store (removed or replaced); the file of a spilled
    /// entry is returned for the caller to delete after unlocking.
    fn forget(&mut self, e: Entry) -> Option<PathBuf> {
        match e.slot {
            Slot::Memory(_) => {
                self.managed -= e.len;
                None
            }
            Slot::Spilling(_) => {
                // The spiller deletes its file when it finds the entry gone.
                self.managed -= e.len;
                self.spilling -= e.len;
                None
            }
            Slot::Disk(path) => {
                self.spilled -= e.len;
                Some(path)
            }
        }
    }
}

fn is_live(data: &HashMap<TaskId, Entry>, task: TaskId, stamp: u64) -> bool {
    data.get(&task)
        .is_some_and(|e| e.stamp == stamp && matches!(e.slot, Slot::Memory(_)))
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!("cannot remove spill file {}: {e}", path.display());
    }
}

fn write_file(path: &Path, value: &[u8]) -> std::io::Result<()> {
    let result = std::fs::File::create(path).and_then(|mut f| f.write_all(value));
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

impl Store {
    /// A store; `spill: None` keeps everything in memory (no limit).
    pub(crate) fn new(spill: Option<SpillSettings>) -> Store {
        Store {
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
            spill,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update below leaves the index consistent before anything that can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spilling_on(&self) -> bool {
        self.spill.is_some()
    }

    fn target(&self) -> Option<u64> {
        self.spill.as_ref().and_then(|s| s.target)
    }

    /// Store `value` as the result of `task`, replacing any earlier one. Never touches the disk;
    /// wakes the memory thread when managed memory is now above the target.
    pub(crate) fn insert(&self, task: TaskId, value: Bytes) {
        let len = value.len() as u64;
        let target = self.target();
        let mut inner = self.lock();
        let id = inner.tick();
        // Larger than the target: straight to disk (the spiller writes it first).
        let force = target.is_some_and(|t| len > t);
        let slot = if force {
            inner.forced.push((task, id));
            inner.spilling += len;
            Slot::Spilling(value)
        } else {
            Slot::Memory(value)
        };
        inner.managed += len;
        let entry = Entry {
            id,
            stamp: id,
            len,
            slot,
        };
        let old = inner.data.insert(task, entry);
        let old_file = old.and_then(|e| inner.forget(e));
        if !force && self.spilling_on() {
            inner.lru.push_back((task, id));
        }
        let wake = force || target.is_some_and(|t| inner.managed - inner.spilling > t);
        drop(inner);
        if wake {
            self.wake.notify_one();
        }
        if let Some(path) = old_file {
            remove_file(&path);
        }
    }

    /// The result of `task`, read back from disk if it was spilled (a blocking read: async
    /// callers use [`Store::lookup`] first). A use for LRU order.
    pub(crate) fn get(&self, task: TaskId) -> Option<Bytes> {
        let found = self.lock().use_value(task, self.spilling_on())?;
        match found {
            Found::Memory(v) => Some(v),
            Found::Disk { id, len, path } => self.read_back(task, id, len, &path),
        }
    }

    /// Several results: those in memory under one lock, spilled ones read afterwards.
    pub(crate) fn get_many(&self, tasks: &[TaskId]) -> Vec<Option<Bytes>> {
        let spilling_on = self.spilling_on();
        let mut out = Vec::with_capacity(tasks.len());
        let mut reads = Vec::new();
        {
            let mut inner = self.lock();
            for (i, t) in tasks.iter().enumerate() {
                out.push(match inner.use_value(*t, spilling_on) {
                    Some(Found::Memory(v)) => Some(v),
                    Some(Found::Disk { id, len, path }) => {
                        reads.push((i, *t, id, len, path));
                        None
                    }
                    None => None,
                });
            }
        }
        for (i, task, id, len, path) in reads {
            out[i] = self.read_back(task, id, len, &path);
        }
        out
    }

    /// Read a spilled result. A file that vanished because the result was removed meanwhile
    /// is `None`; a file that cannot be read while the result is still listed means the data
    /// is lost: the entry is dropped (whoever needs it gets "missing" and the scheduler
    /// recomputes it).
    fn read_back(&self, task: TaskId, id: u64, len: u64, path: &Path) -> Option<Bytes> {
        let err = match std::fs::read(path) {
            Ok(v) if v.len() as u64 == len => return Some(Bytes::from(v)),
            Ok(v) => format!("expected {len} bytes, found {}", v.len()),
            Err(e) => e.to_string(),
        };
        let mut inner = self.lock();
        if inner.data.get(&task).is_some_and(|e| e.id == id) {
            let e = inner.data.remove(&task).expect("entry");
            inner.forget(e);
            drop(inner);
            error!(
                "spilled result of task {task} is lost: cannot read {}: {err}",
                path.display()
            );
            remove_file(path);
        }
        None
    }

    /// Where `task`'s result is, without reading any file. A use for LRU order.
    pub(crate) fn lookup(&self, task: TaskId) -> Lookup {
        match self.lock().use_value(task, self.spilling_on()) {
            Some(Found::Memory(v)) => Lookup::Memory(v),
            Some(Found::Disk { .. }) => Lookup::Disk,
            None => Lookup::Absent,
        }
    }

    /// Whether any of `tasks` would be read from disk.
    pub(crate) fn any_spilled(&self, tasks: &[TaskId]) -> bool {
        let inner = self.lock();
        inner.spilled > 0
            && tasks.iter().any(|t| {
                inner
                    .data
                    .get(t)
                    .is_some_and(|e| matches!(e.slot, Slot::Disk(_)))
            })
    }

    /// The size of `task`'s result, in memory or on disk.
    pub(crate) fn len_of(&self, task: TaskId) -> Option<u64> {
        self.lock().data.get(&task).map(|e| e.len)
    }

    /// Forget `task`'s result, deleting its spill file; false if it was not held.
    pub(crate) fn remove(&self, task: TaskId) -> bool {
        let mut inner = self.lock();
        let Some(e) = inner.data.remove(&task) else {
            return false;
        };
        let file = inner.forget(e);
        drop(inner);
        if let Some(path) = file {
            remove_file(&path);
        }
        true
    }

    /// Bytes of results in memory (managed memory).
    pub(crate) fn managed(&self) -> u64 {
        self.lock().managed
    }

    /// Bytes of results on disk only.
    pub(crate) fn spilled(&self) -> u64 {
        self.lock().spilled
    }

    /// Spill until managed memory is at most the target: results larger than the target
    /// first, then the least recently used. Blocking (file writes); returns the bytes written.
    pub(crate) fn spill_excess(&self) -> u64 {
        let Some(target) = self.target() else {
            return 0;
        };
        let victims = {
            let mut inner = self.lock();
            if inner.retry_at.is_some_and(|at| Instant::now() < at) {
                return 0;
            }
            let forced = std::mem::take(&mut inner.forced);
            let mut victims = Vec::with_capacity(forced.len());
            for (task, id) in forced {
                if let Some(e) = inner.data.get(&task)
                    && e.id == id
                    && let Slot::Spilling(v) = &e.slot
                {
                    victims.push(self.victim(task, id, v.clone()));
                }
            }
            let excess = (inner.managed - inner.spilling).saturating_sub(target);
            self.select(&mut inner, excess, &mut victims);
            victims
        };
        self.write(victims)
    }

    /// Spill least recently used results totalling at least `bytes` (or all there are):
    /// spilling by process memory. Blocking; returns the bytes written.
    pub(crate) fn spill_lru(&self, bytes: u64) -> u64 {
        if !self.spilling_on() || bytes == 0 {
            return 0;
        }
        let victims = {
            let mut inner = self.lock();
            if inner.retry_at.is_some_and(|at| Instant::now() < at) {
                return 0;
            }
            let mut victims = Vec::new();
            self.select(&mut inner, bytes, &mut victims);
            victims
        };
        self.write(victims)
    }

    fn victim(&self, task: TaskId, id: u64, value: Bytes) -> Victim {
        let dir = &self.spill.as_ref().expect("spilling on").dir;
        let n = SPILL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}-{}.spill", std::process::id(), task.0));
        Victim {
            task,
            id,
            value,
            path,
        }
    }

    /// Mark least recently used results totalling at least `bytes` as being spilled.
    fn select(&self, inner: &mut Inner, bytes: u64, victims: &mut Vec<Victim>) {
        let mut chosen = 0;
        while chosen < bytes {
            let Some((task, stamp)) = inner.lru.pop_front() else {
                break;
            };
            if !is_live(&inner.data, task, stamp) {
                continue;
            }
            let e = inner.data.get_mut(&task).expect("live entry");
            let Slot::Memory(v) = &e.slot else {
                unreachable!("live entries are in memory");
            };
            let v = v.clone();
            e.slot = Slot::Spilling(v.clone());
            let (id, len) = (e.id, e.len);
            inner.spilling += len;
            chosen += len;
            victims.push(self.victim(task, id, v));
        }
    }

    /// Write the victims out, one by one, each dropping its memory as soon as it is on disk.
    fn write(&self, victims: Vec<Victim>) -> u64 {
        if victims.is_empty() {
            return 0;
        }
        let dir = &self.spill.as_ref().expect("spilling on").dir;
        let mut failure = std::fs::create_dir_all(dir).err();
        let mut written = 0;
        for v in victims {
            let result = match failure.take() {
                Some(e) => Err(e),
                None => write_file(&v.path, &v.value),
            };
            let mut inner = self.lock();
            let current = inner.data.get_mut(&v.task).filter(|e| e.id == v.id);
            match (result, current) {
                (Ok(()), Some(e)) => {
                    e.slot = Slot::Disk(v.path);
                    let len = e.len;
                    inner.managed -= len;
                    inner.spilling -= len;
                    inner.spilled += len;
                    written += len;
                }
                (Ok(()), None) => {
                    // Removed or replaced while being written.
                    drop(inner);
                    remove_file(&v.path);
                }
                (Err(err), current) => {
                    if let Some(e) = current {
                        // Keep it in memory, as the most recently used (so that the next try
                        // does not start with it).
                        e.slot = Slot::Memory(v.value);
                        let len = e.len;
                        inner.spilling -= len;
                        let stamp = inner.tick();
                        let e = inner.data.get_mut(&v.task).expect("entry");
                        e.stamp = stamp;
                        inner.lru.push_back((v.task, stamp));
                    }
                    let first = inner.retry_at.is_none_or(|at| Instant::now() >= at);
                    inner.retry_at = Some(Instant::now() + SPILL_RETRY);
                    drop(inner);
                    if first {
                        warn!(
                            "cannot spill to {}: {err}; keeping results in memory (retrying in {:?})",
                            dir.display(),
                            SPILL_RETRY
                        );
                    }
                    // The rest would most likely fail the same way: give them back.
                    failure = Some(err);
                    continue;
                }
            }
        }
        if written > 0 {
            debug!("spilled {written} bytes to {}", dir.display());
        }
        written
    }

    /// Block until spilling is due (managed memory above the target, or a result larger than
    /// the target waiting) or `timeout` passes; false once the store is closed.
    pub(crate) fn wait_for_work(&self, timeout: Duration) -> bool {
        let inner = self.lock();
        let inner = if inner.closed || self.due(&inner) {
            inner
        } else {
            self.wake
                .wait_timeout_while(inner, timeout, |i| !i.closed && !self.due(i))
                .unwrap_or_else(|p| p.into_inner())
                .0
        };
        !inner.closed
    }

    /// Whether [`Store::spill_excess`] has work.
    fn due(&self, i: &Inner) -> bool {
        i.retry_at.is_none_or(|at| Instant::now() >= at)
            && (!i.forced.is_empty() || self.target().is_some_and(|t| i.managed - i.spilling > t))
    }

    /// Tell the memory thread to exit.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Remove spill files left in `dir` by processes that no longer run (a worker killed by its
    /// nanny leaves its spill files behind). Files of live processes are left alone: several
    /// workers may share a local directory.
    pub(crate) fn clean_stale(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let me = std::process::id();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.ends_with(".spill"))
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
                debug!("removing stale spill file {}", entry.path().display());
                remove_file(&entry.path());
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        for e in inner.data.values() {
            if let Slot::Disk(path) = &e.slot {
                remove_file(path);
            }
        }
        if let Some(s) = &self.spill {
            // Only if empty: other workers may share the directory.
            let _ = std::fs::remove_dir(&s.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn tempdir(name: &str) -> PathBuf {
        let n = SPILL_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "taskwire-store-test-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn value(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn spilling_store(dir: &Path, target: u64) -> Store {
        Store::new(Some(SpillSettings {
            dir: dir.join("spill"),
            target: Some(target),
        }))
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("spill")).map_or(0, |d| d.count())
    }

    /// Whether `task` is on disk (not a use, unlike `lookup`).
    fn on_disk(store: &Store, task: u64) -> bool {
        store
            .lock()
            .data
            .get(&TaskId(task))
            .is_some_and(|e| matches!(e.slot, Slot::Disk(_)))
    }

    #[test]
    fn without_spilling_everything_stays_in_memory() {
        let store = Store::default();
        for t in 0..10 {
            store.insert(TaskId(t), value(MIB, t as u8));
        }
        assert_eq!(store.managed(), 10 * MIB as u64);
        assert_eq!(store.spill_excess(), 0);
        assert_eq!(store.spill_lru(u64::MAX), 0);
        assert_eq!(store.spilled(), 0);
        assert!(
            store.lock().lru.is_empty(),
            "no LRU bookkeeping without a limit"
        );
        assert!(store.remove(TaskId(3)));
        assert!(!store.remove(TaskId(3)));
        assert_eq!(store.managed(), 9 * MIB as u64);
    }

    #[test]
    fn spills_down_to_the_target_and_reads_back_equal() {
        let dir = tempdir("target");
        let store = spilling_store(&dir, 4 * MIB as u64);
        let values: Vec<Bytes> = (0..10).map(|t| value(MIB, t as u8)).collect();
        for (t, v) in values.iter().enumerate() {
            store.insert(TaskId(t as u64), v.clone());
        }
        assert_eq!(store.managed(), 10 * MIB as u64, "insert never writes");
        let written = store.spill_excess();
        assert_eq!(written, 6 * MIB as u64);
        assert_eq!(store.managed(), 4 * MIB as u64);
        assert_eq!(store.spilled(), 6 * MIB as u64);
        assert_eq!(files(&dir), 6);
        // The oldest six went out.
        for t in 0..10 {
            assert_eq!(on_disk(&store, t), t < 6, "task {t}");
        }
        for (t, v) in values.iter().enumerate() {
            assert_eq!(store.get(TaskId(t as u64)).as_ref(), Some(v), "task {t}");
        }
        let many = store.get_many(&[TaskId(0), TaskId(9), TaskId(99), TaskId(5)]);
        assert_eq!(
            many,
            vec![
                Some(values[0].clone()),
                Some(values[9].clone()),
                None,
                Some(values[5].clone())
            ]
        );
        // Reading does not bring results back into memory.
        assert_eq!(store.spilled(), 6 * MIB as u64);
        assert_eq!(store.spill_excess(), 0, "already at the target");
    }

    #[test]
    fn uses_decide_the_order() {
        let dir = tempdir("lru");
        let store = spilling_store(&dir, 3 * MIB as u64);
        for t in 0..4 {
            store.insert(TaskId(t), value(MIB, t as u8));
        }
        // Use 0 and 1 (a task and a peer): 2 is now the least recently used, then 3.
        assert!(store.get(TaskId(0)).is_some());
        assert_eq!(store.get_many(&[TaskId(1)]).len(), 1);
        assert_eq!(store.spill_excess(), MIB as u64);
        assert!(on_disk(&store, 2));
        assert!(!on_disk(&store, 3) && !on_disk(&store, 0) && !on_disk(&store, 1));
        assert!(matches!(store.lookup(TaskId(0)), Lookup::Memory(_)));
        // lookup is a use too: 3 goes next, then 1, then 0.
        assert_eq!(store.spill_lru(2 * MIB as u64), 2 * MIB as u64);
        assert!(on_disk(&store, 3) && on_disk(&store, 1) && !on_disk(&store, 0));
        assert_eq!(store.spill_lru(1), MIB as u64, "at least the bytes asked");
        assert_eq!(store.spilled(), 4 * MIB as u64);
        assert_eq!(store.managed(), 0);
        assert_eq!(store.spill_lru(u64::MAX), 0, "nothing left");
    }

    #[test]
    fn lru_queue_stays_bounded_under_many_uses() {
        let dir = tempdir("compact");
        let store = spilling_store(&dir, u64::MAX);
        for t in 0..10 {
            store.insert(TaskId(t), value(16, t as u8));
        }
        for _ in 0..10_000 {
            for t in 0..10 {
                assert!(store.get(TaskId(t)).is_some());
            }
        }
        assert!(store.lock().lru.len() <= 2 * 10 + 64 + 1);
        // Order survives compaction: 0..9 used in order, so 0 is the oldest.
        assert!(store.get(TaskId(5)).is_some());
        store.spill_lru(1);
        assert!(on_disk(&store, 0));
        assert!(!on_disk(&store, 5));
    }

    #[test]
    fn removal_frees_files_and_counts() {
        let dir = tempdir("remove");
        let store = spilling_store(&dir, 2 * MIB as u64);
        for t in 0..5 {
            store.insert(TaskId(t), value(MIB, t as u8));
        }
        store.spill_excess();
        assert_eq!(files(&dir), 3);
        assert_eq!(store.spilled(), 3 * MIB as u64);
        // A spilled one and one in memory.
        assert!(store.remove(TaskId(0)));
        assert!(store.remove(TaskId(4)));
        assert_eq!(files(&dir), 2);
        assert_eq!(store.spilled(), 2 * MIB as u64);
        assert_eq!(store.managed(), MIB as u64);
        assert_eq!(store.get(TaskId(0)), None);
        // Replacing a spilled result removes the old file.
        store.insert(TaskId(1), value(10, 7));
        assert_eq!(files(&dir), 1);
        assert_eq!(store.get(TaskId(1)), Some(value(10, 7)));
        for t in 0..5 {
            store.remove(TaskId(t));
        }
        assert_eq!(files(&dir), 0);
        assert_eq!((store.managed(), store.spilled()), (0, 0));
        drop(store);
        assert!(
            !dir.join("spill").exists(),
            "the empty spill directory goes too"
        );
    }

    #[test]
    fn dropping_the_store_deletes_its_files() {
        let dir = tempdir("drop");
        let store = spilling_store(&dir, 0);
        store.insert(TaskId(1), value(100, 1));
        store.spill_excess();
        assert_eq!(files(&dir), 1);
        drop(store);
        assert!(!dir.join("spill").exists());
    }

    #[test]
    fn values_larger_than_the_target_go_straight_to_disk() {
        let dir = tempdir("large");
        let store = spilling_store(&dir, 4 * MIB as u64);
        store.insert(TaskId(1), value(MIB, 1));
        store.insert(TaskId(2), value(MIB, 2));
        let big = value(5 * MIB, 3);
        store.insert(TaskId(3), big.clone());
        // Readable from memory until written.
        assert_eq!(store.get(TaskId(3)).as_ref(), Some(&big));
        assert!(store.due(&store.lock()), "the large value is due");
        assert_eq!(store.spill_excess(), 5 * MIB as u64);
        assert!(on_disk(&store, 3));
        assert!(
            !on_disk(&store, 1) && !on_disk(&store, 2),
            "the small ones stay"
        );
        assert_eq!(store.managed(), 2 * MIB as u64);
        assert_eq!(store.get(TaskId(3)), Some(big));
    }

    #[test]
    fn io_errors_keep_data_in_memory() {
        let dir = tempdir("ioerr");
        // The "local directory" is a file: the spill directory cannot be created.
        let blocker = dir.join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let store = spilling_store(&blocker, MIB as u64);
        let values: Vec<Bytes> = (0..4).map(|t| value(MIB, t as u8)).collect();
        for (t, v) in values.iter().enumerate() {
            store.insert(TaskId(t as u64), v.clone());
        }
        assert_eq!(store.spill_excess(), 0);
        assert_eq!(store.spilled(), 0);
        assert_eq!(store.managed(), 4 * MIB as u64);
        for (t, v) in values.iter().enumerate() {
            assert_eq!(store.get(TaskId(t as u64)).as_ref(), Some(v));
            assert!(!on_disk(&store, t as u64));
        }
        // Backing off: no new attempt until SPILL_RETRY has passed.
        assert!(!store.due(&store.lock()));
        assert_eq!(store.spill_lru(u64::MAX), 0);
        // Once the disk is usable again, spilling resumes.
        std::fs::remove_file(&blocker).unwrap();
        std::fs::create_dir_all(&blocker).unwrap();
        store.lock().retry_at = None;
        assert_eq!(store.spill_excess(), 3 * MIB as u64);
        for (t, v) in values.iter().enumerate() {
            assert_eq!(store.get(TaskId(t as u64)).as_ref(), Some(v));
        }
    }

    #[test]
    fn a_lost_spill_file_is_reported_missing() {
        let dir = tempdir("lost");
        let store = spilling_store(&dir, 0);
        store.insert(TaskId(1), value(1000, 1));
        store.spill_excess();
        for f in std::fs::read_dir(dir.join("spill")).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        assert_eq!(store.get(TaskId(1)), None);
        assert_eq!(
            store.len_of(TaskId(1)),
            None,
            "dropped, not kept as a ghost"
        );
        assert_eq!(store.spilled(), 0);
    }

    #[test]
    fn a_removal_during_a_spill_leaves_no_file() {
        let dir = tempdir("race");
        let store = spilling_store(&dir, u64::MAX);
        store.insert(TaskId(1), value(1000, 1));
        // What the spiller does, with a removal between choosing and writing.
        let victims = {
            let mut inner = store.lock();
            let mut v = Vec::new();
            store.select(&mut inner, 1, &mut v);
            v
        };
        assert_eq!(victims.len(), 1);
        assert!(store.remove(TaskId(1)));
        assert_eq!(store.write(victims), 0);
        assert_eq!(files(&dir), 0);
        assert_eq!((store.managed(), store.spilled()), (0, 0));
    }

    #[test]
    fn stale_files_of_dead_processes_are_cleaned() {
        let dir = tempdir("stale");
        // pid_max is at most 2^22 on Linux: this pid cannot run.
        std::fs::write(dir.join("4999999-1-7.spill"), b"old").unwrap();
        let mine = dir.join(format!("{}-1-7.spill", std::process::id()));
        std::fs::write(&mine, b"mine").unwrap();
        std::fs::write(dir.join("notes.txt"), b"keep").unwrap();
        Store::clean_stale(&dir);
        assert!(!dir.join("4999999-1-7.spill").exists());
        assert!(mine.exists());
        assert!(dir.join("notes.txt").exists());
    }

    /// Spill throughput and LRU bookkeeping cost; prints medians, asserts nothing about time.
    /// `cargo test --release -p taskwire-worker --lib store::tests::measure -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn measure() {
        fn median(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        }
        let dir = tempdir("measure");
        for (size, count) in [(MIB, 256), (64 * MIB, 8)] {
            let (mut writes, mut reads) = (Vec::new(), Vec::new());
            let values: Vec<Bytes> = (0..count).map(|t| value(size, t as u8)).collect();
            let total = (size * count) as f64 / MIB as f64;
            for _ in 0..5 {
                let store = spilling_store(&dir, u64::MAX);
                for (t, v) in values.iter().enumerate() {
                    store.insert(TaskId(t as u64), v.clone());
                }
                let start = Instant::now();
                assert_eq!(store.spill_lru(u64::MAX), (size * count) as u64);
                writes.push(total / start.elapsed().as_secs_f64());
                let start = Instant::now();
                for t in 0..count {
                    assert_eq!(store.get(TaskId(t as u64)).unwrap().len(), size);
                }
                reads.push(total / start.elapsed().as_secs_f64());
            }
            println!(
                "{} MiB results: spill write {:.0} MiB/s, read back {:.0} MiB/s (medians of 5 rounds of {count}; reads mostly from the page cache)",
                size / MIB,
                median(writes),
                median(reads)
            );
        }

        /// The store before spilling, for comparison.
        #[derive(Default)]
        struct Plain {
            inner: Mutex<(HashMap<TaskId, Bytes>, u64)>,
        }
        impl Plain {
            fn insert(&self, task: TaskId, value: Bytes) {
                let mut inner = self.inner.lock().unwrap();
                inner.1 += value.len() as u64;
                if let Some(old) = inner.0.insert(task, value) {
                    inner.1 -= old.len() as u64;
                }
            }
            fn get(&self, task: TaskId) -> Option<Bytes> {
                self.inner.lock().unwrap().0.get(&task).cloned()
            }
            fn remove(&self, task: TaskId) -> bool {
                let mut inner = self.inner.lock().unwrap();
                match inner.0.remove(&task) {
                    Some(old) => {
                        inner.1 -= old.len() as u64;
                        true
                    }
                    None => false,
                }
            }
        }
        trait Map {
            fn put(&self, task: TaskId, value: Bytes);
            fn take(&self, task: TaskId) -> Option<Bytes>;
            fn forget(&self, task: TaskId) -> bool;
        }
        impl Map for Plain {
            fn put(&self, task: TaskId, value: Bytes) {
                self.insert(task, value)
            }
            fn take(&self, task: TaskId) -> Option<Bytes> {
                self.get(task)
            }
            fn forget(&self, task: TaskId) -> bool {
                self.remove(task)
            }
        }
        impl Map for Store {
            fn put(&self, task: TaskId, value: Bytes) {
                self.insert(task, value)
            }
            fn take(&self, task: TaskId) -> Option<Bytes> {
                self.get(task)
            }
            fn forget(&self, task: TaskId) -> bool {
                self.remove(task)
            }
        }
        const N: u64 = 200_000;
        let small = Bytes::from_static(b"12345678");
        let ns = |start: Instant| start.elapsed().as_nanos() as f64 / N as f64;
        let names = ["before (plain map)", "no limit", "limit, LRU on"];
        let mut results = vec![(Vec::new(), Vec::new(), Vec::new()); 3];
        for round in 0..9 {
            // Each variant allocates and frees its own map; the order rotates so that none
            // always runs on fresh (faulting) or recycled pages.
            for k in 0..3 {
                let v = (round + k) % 3;
                let map: Box<dyn Map> = match v {
                    0 => Box::new(Plain::default()),
                    1 => Box::new(Store::default()),
                    _ => Box::new(spilling_store(&dir, u64::MAX)),
                };
                let t = Instant::now();
                (0..N).for_each(|i| map.put(TaskId(i), small.clone()));
                results[v].0.push(ns(t));
                let t = Instant::now();
                (0..N).for_each(|i| assert!(map.take(TaskId(i)).is_some()));
                results[v].1.push(ns(t));
                let t = Instant::now();
                (0..N).for_each(|i| assert!(map.forget(TaskId(i))));
                results[v].2.push(ns(t));
            }
        }
        for (name, m) in names.iter().zip(results) {
            println!(
                "{name:>20}: insert {:.0} ns, get {:.0} ns, remove {:.0} ns (median of 9, {N} tasks)",
                median(m.0),
                median(m.1),
                median(m.2)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
