//! What the client knows about its keys, and the queue of messages to the scheduler.
//!
//! Every handle ([`crate::Future`]) to a key shares one [`KeyEntry`], which counts the handles;
//! when the last one goes, the [`State`] forgets the key and queues a release. All messages to
//! the scheduler go through one ordered queue, so a release can never overtake the submission
//! it follows (or be overtaken by a resubmission of the same key). Releases are collected in
//! the state and put in the queue as one batch: either right before the next message, or when
//! the writer reaches the marker queued with the first release of the batch.

use bytes::Bytes;
use rustc_hash::FxBuildHasher;
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use taskwire_protocol::{
    AdaptiveTargetMsg, ErrorKindMsg, FromClient, TaskErrorMsg, TaskId, WorkerInfoMsg,
};
use tokio::sync::{mpsc, oneshot};

/// Where a key stands, as far as this client knows.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KeyState {
    /// Submitted, not finished.
    Pending,
    /// In memory on `worker`.
    Memory {
        task: TaskId,
        /// Data address of the worker (shared by every key on it).
        worker: Arc<str>,
        nbytes: u64,
        /// The result itself, when the scheduler sent it along (small results).
        value: Option<Bytes>,
    },
    /// Failed.
    Erred(TaskErrorMsg),
    /// Cancelled (by this or another client).
    Cancelled,
    /// The scheduler connection closed before the key finished.
    Closed,
}

/// Something that happened to a key.
#[derive(Clone, Debug)]
pub(crate) enum KeyEvent {
    InMemory {
        task: TaskId,
        worker: Arc<str>,
        nbytes: u64,
        value: Option<Bytes>,
    },
    Erred(TaskErrorMsg),
    Cancelled,
    /// Submitted again (by this client).
    Resubmitted,
    ConnectionLost,
}

impl KeyState {
    pub(crate) fn is_done(&self) -> bool {
        !matches!(self, KeyState::Pending)
    }

    /// The state after `event`, or `None` when the event changes nothing.
    pub(crate) fn apply(&self, event: KeyEvent) -> Option<KeyState> {
        use KeyState as S;
        match (self, event) {
            // Terminal until resubmitted; a closed connection never reopens.
            (S::Closed, _) => None,
            (S::Cancelled, KeyEvent::Resubmitted) => Some(S::Pending),
            (S::Cancelled, _) => None,
            (
                _,
                KeyEvent::InMemory {
                    task,
                    worker,
                    nbytes,
                    value,
                },
            ) => Some(S::Memory {
                task,
                worker,
                nbytes,
                value,
            }),
            (_, KeyEvent::Erred(e)) if e.kind == ErrorKindMsg::Cancelled => Some(S::Cancelled),
            (_, KeyEvent::Erred(e)) => Some(S::Erred(e)),
            (_, KeyEvent::Cancelled) => Some(S::Cancelled),
            (_, KeyEvent::Resubmitted) => None,
            // Results already in memory stay fetchable from their worker.
            (S::Pending, KeyEvent::ConnectionLost) => Some(S::Closed),
            (_, KeyEvent::ConnectionLost) => None,
        }
    }
}

/// What an entry's lock guards.
#[derive(Debug)]
struct EntryInner {
    state: KeyState,
    /// Tasks waiting for the key to be done.
    waiters: Vec<Waker>,
}

/// The state of one key, shared by all its handles.
#[derive(Debug)]
pub(crate) struct KeyEntry {
    pub(crate) key: String,
    /// Handles ([`crate::Future`]s) on the key. Goes up from 0 only under the [`State`] lock
    /// (a clone needs a live handle), so the state can tell for sure that a key is unused.
    handles: AtomicUsize,
    /// The scheduler has been told about the key, so dropping it must release it there.
    pub(crate) registered: AtomicBool,
    inner: Mutex<EntryInner>,
}

impl KeyEntry {
    pub(crate) fn new(key: String, state: KeyState) -> KeyEntry {
        KeyEntry {
            key,
            handles: AtomicUsize::new(0),
            registered: AtomicBool::new(false),
            inner: Mutex::new(EntryInner {
                state,
                waiters: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, EntryInner> {
        // Nothing panics while holding it; plain data either way.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply `event`; the tasks to wake (once no lock is held) go to `wake`.
    pub(crate) fn apply_deferred(&self, event: KeyEvent, wake: &mut Vec<Waker>) {
        let mut g = self.lock();
        if let Some(next) = g.state.apply(event) {
            g.state = next;
            if g.state.is_done() && !g.waiters.is_empty() {
                if wake.is_empty() {
                    std::mem::swap(wake, &mut g.waiters);
                } else {
                    wake.append(&mut g.waiters);
                }
            }
        }
    }

    /// Apply `event` and wake whoever waits for the key.
    pub(crate) fn apply(&self, event: KeyEvent) {
        let mut wake = Vec::new();
        self.apply_deferred(event, &mut wake);
        wake_all(wake);
    }

    pub(crate) fn current(&self) -> KeyState {
        self.lock().state.clone()
    }

    /// Read the current state without copying it.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&KeyState) -> R) -> R {
        f(&self.lock().state)
    }

    /// The final state if the key is done; otherwise `cx` is woken once it is.
    pub(crate) fn poll_done(&self, cx: &mut Context<'_>) -> Poll<KeyState> {
        let mut g = self.lock();
        if g.state.is_done() {
            return Poll::Ready(g.state.clone());
        }
        if !g.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            g.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Whether the key is done; otherwise `cx` is woken once it is.
    pub(crate) fn poll_is_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.lock();
        if g.state.is_done() {
            return Poll::Ready(());
        }
        if !g.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            g.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Wait until the key is done; returns the final state.
    pub(crate) async fn done(&self) -> KeyState {
        std::future::poll_fn(|cx| self.poll_done(cx)).await
    }

    /// Wait until the key is done.
    pub(crate) async fn finished(&self) {
        std::future::poll_fn(|cx| self.poll_is_done(cx)).await
    }

    /// One more handle, from an existing one.
    pub(crate) fn clone_handle(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// One handle fewer; true when it was the last (the caller then tells the [`State`]).
    pub(crate) fn drop_handle(&self) -> bool {
        self.handles.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// Wake tasks collected by [`KeyEntry::apply_deferred`].
pub(crate) fn wake_all(wake: Vec<Waker>) {
    for w in wake {
        w.wake();
    }
}

/// A key table slot: the entry, hashed and compared by its key.
#[derive(Debug)]
struct ByKey(Arc<KeyEntry>);

impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.as_str().hash(state)
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &ByKey) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl Borrow<str> for ByKey {
    fn borrow(&self) -> &str {
        &self.0.key
    }
}

/// One item of the queue to the scheduler connection's writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Msg(FromClient),
    /// A message already encoded.
    Encoded(bytes::Bytes),
    /// The last handles of these keys are gone; coalesced into one `ReleaseKeys`.
    Release(Vec<String>),
    /// Releases were collected in batch `.0`: take them from the state (unless a later message
    /// already carried them).
    ReleasesReady(u64),
    /// Send `FromClient::Close`, stop writing, then answer.
    Close(oneshot::Sender<()>),
}

/// Merge consecutive releases into single `ReleaseKeys` messages, keeping the order of
/// everything else.
pub(crate) fn coalesce(batch: Vec<Outgoing>) -> Vec<Outgoing> {
    let mut out = Vec::with_capacity(batch.len());
    let mut releases: Vec<String> = Vec::new();
    for item in batch {
        match item {
            Outgoing::Release(mut k) => {
                if releases.is_empty() {
                    releases = k;
                } else {
                    releases.append(&mut k);
                }
            }
            Outgoing::ReleasesReady(_) => {}
            other => {
                if !releases.is_empty() {
                    out.push(Outgoing::Msg(FromClient::ReleaseKeys(std::mem::take(
                        &mut releases,
                    ))));
                }
                out.push(other);
            }
        }
    }
    if !releases.is_empty() {
        out.push(Outgoing::Msg(FromClient::ReleaseKeys(releases)));
    }
    out
}

type Reply<T> = oneshot::Sender<T>;

/// Per-client bookkeeping, behind one mutex. Nothing in here awaits.
#[derive(Debug)]
pub(crate) struct State {
    keys: HashSet<ByKey, FxBuildHasher>,
    /// Keys whose last handle is gone, not queued yet.
    releases: Vec<Arc<KeyEntry>>,
    /// Number of the batch `releases` belongs to.
    release_batch: u64,
    /// Worker addresses seen in results, shared by the keys they hold.
    workers_seen: Vec<Arc<str>>,
    pub(crate) submits: HashMap<u64, Reply<Result<(), String>>>,
    #[allow(clippy::type_complexity)]
    pub(crate) scatters: HashMap<u64, Reply<Result<Vec<(String, TaskId, String)>, String>>>,
    pub(crate) workers: VecDeque<Reply<Vec<WorkerInfoMsg>>>,
    pub(crate) retires: HashMap<u64, Reply<Result<Vec<String>, String>>>,
    pub(crate) adaptive: HashMap<u64, Reply<AdaptiveTargetMsg>>,
    pub(crate) closed: bool,
    out: mpsc::UnboundedSender<Outgoing>,
}

/// The key of a released entry, without copying it when nothing else holds the entry.
fn into_key(entry: Arc<KeyEntry>) -> String {
    match Arc::try_unwrap(entry) {
        Ok(e) => e.key,
        Err(e) => e.key.clone(),
    }
}

impl State {
    pub(crate) fn new(out: mpsc::UnboundedSender<Outgoing>) -> State {
        State {
            keys: HashSet::default(),
            releases: Vec::new(),
            release_batch: 0,
            workers_seen: Vec::new(),
            submits: HashMap::new(),
            scatters: HashMap::new(),
            workers: VecDeque::new(),
            retires: HashMap::new(),
            adaptive: HashMap::new(),
            closed: false,
            out,
        }
    }

    /// Put the collected releases in the queue.
    fn flush_releases(&mut self) {
        if self.releases.is_empty() {
            return;
        }
        self.release_batch += 1;
        let keys = std::mem::take(&mut self.releases)
            .into_iter()
            .map(into_key)
            .collect();
        let _ = self.out.send(Outgoing::Release(keys));
    }

    /// The releases of batch `batch` if they are still here (the writer reached its marker).
    pub(crate) fn take_releases(&mut self, batch: u64) -> Vec<String> {
        if batch != self.release_batch || self.releases.is_empty() {
            return Vec::new();
        }
        self.release_batch += 1;
        std::mem::take(&mut self.releases)
            .into_iter()
            .map(into_key)
            .collect()
    }

    /// Queue a message to the scheduler (after the releases collected so far); false when the
    /// writer is gone.
    pub(crate) fn send(&mut self, item: Outgoing) -> bool {
        if self.closed {
            return false;
        }
        self.flush_releases();
        self.out.send(item).is_ok()
    }

    /// Take one more handle on `key`, creating its entry (pending) if needed. Returns the entry
    /// and whether it was created.
    pub(crate) fn acquire(&mut self, key: &str) -> (Arc<KeyEntry>, bool) {
        if let Some(found) = self.keys.get(key) {
            found.0.handles.fetch_add(1, Ordering::Relaxed);
            return (found.0.clone(), false);
        }
        self.insert(key.to_string())
    }

    /// Room for `n` more keys.
    pub(crate) fn reserve(&mut self, n: usize) {
        self.keys.reserve(n);
    }

    /// [`State::acquire`], with the key already owned.
    pub(crate) fn acquire_owned(&mut self, key: String) -> (Arc<KeyEntry>, bool) {
        if let Some(found) = self.keys.get(key.as_str()) {
            found.0.handles.fetch_add(1, Ordering::Relaxed);
            return (found.0.clone(), false);
        }
        self.insert(key)
    }

    fn insert(&mut self, key: String) -> (Arc<KeyEntry>, bool) {
        let initial = if self.closed {
            KeyState::Closed
        } else {
            KeyState::Pending
        };
        let entry = Arc::new(KeyEntry::new(key, initial));
        entry.handles.store(1, Ordering::Relaxed);
        self.keys.insert(ByKey(entry.clone()));
        (entry, true)
    }

    /// The last handle of `entry` went (its count reached 0): forget the key, and release it
    /// if the scheduler knows it. Harmless when the key was taken again meanwhile or is
    /// already forgotten.
    pub(crate) fn unused(&mut self, entry: &Arc<KeyEntry>) {
        if entry.handles.load(Ordering::Acquire) != 0 {
            return;
        }
        let Some(ByKey(found)) = self.keys.take(entry.key.as_str()) else {
            return;
        };
        if !Arc::ptr_eq(&found, entry) {
            // A newer entry of the same key (this one was forgotten already): keep it.
            self.keys.insert(ByKey(found));
            return;
        }
        let entry = found;
        if self.closed || !entry.registered.load(Ordering::Relaxed) {
            return;
        }
        if self.releases.is_empty() {
            // The writer takes the batch when it gets here, unless a message carries it first.
            let _ = self.out.send(Outgoing::ReleasesReady(self.release_batch));
        }
        self.releases.push(entry);
    }

    /// Give back one handle of `entry`.
    #[cfg(test)]
    pub(crate) fn release(&mut self, entry: &Arc<KeyEntry>) {
        if entry.drop_handle() {
            self.unused(entry);
        }
    }

    /// The entry of a key some handle holds.
    pub(crate) fn entry(&self, key: &str) -> Option<&Arc<KeyEntry>> {
        self.keys.get(key).map(|e| &e.0)
    }

    /// The shared copy of a worker address.
    pub(crate) fn worker(&mut self, addr: &str) -> Arc<str> {
        if let Some(w) = self.workers_seen.iter().find(|w| &***w == addr) {
            return w.clone();
        }
        let w: Arc<str> = addr.into();
        if self.workers_seen.len() >= 64 {
            self.workers_seen.remove(0);
        }
        self.workers_seen.push(w.clone());
        w
    }

    /// How many handles a key has (0: unknown).
    #[cfg(test)]
    pub(crate) fn refs(&self, key: &str) -> usize {
        self.keys
            .get(key)
            .map_or(0, |e| e.0.handles.load(Ordering::Relaxed))
    }

    /// The scheduler connection is gone: resolve everything that waits on it.
    pub(crate) fn fail_all(&mut self) {
        self.closed = true;
        let mut wake = Vec::new();
        for entry in &self.keys {
            entry.0.apply_deferred(KeyEvent::ConnectionLost, &mut wake);
        }
        wake_all(wake);
        self.releases.clear();
        // Dropping the reply senders wakes their waiters with "closed".
        self.submits.clear();
        self.scatters.clear();
        self.workers.clear();
        self.retires.clear();
        self.adaptive.clear();
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // The last client and future are gone: releases still collected go out before the
        // writer, seeing the queue closed, says goodbye.
        if !self.closed {
            self.flush_releases();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKindMsg) -> TaskErrorMsg {
        TaskErrorMsg {
            kind,
            message: "boom".into(),
        }
    }

    fn mem(worker: &str) -> KeyEvent {
        KeyEvent::InMemory {
            task: TaskId(1),
            worker: worker.into(),
            nbytes: 8,
            value: None,
        }
    }

    #[test]
    fn transitions() {
        let p = KeyState::Pending;
        let m = p.apply(mem("w1")).unwrap();
        assert!(matches!(&m, KeyState::Memory { worker, .. } if &**worker == "w1"));
        // A result that moved (worker died, recomputed elsewhere) updates the location.
        assert!(
            matches!(m.apply(mem("w2")), Some(KeyState::Memory { worker, .. }) if &*worker == "w2")
        );
        assert_eq!(
            p.apply(KeyEvent::Erred(err(ErrorKindMsg::Failed))),
            Some(KeyState::Erred(err(ErrorKindMsg::Failed)))
        );
        // A scheduler-side cancellation reads as cancelled, not as an error.
        assert_eq!(
            p.apply(KeyEvent::Erred(err(ErrorKindMsg::Cancelled))),
            Some(KeyState::Cancelled)
        );
        assert_eq!(p.apply(KeyEvent::Cancelled), Some(KeyState::Cancelled));
        assert_eq!(KeyState::Cancelled.apply(mem("w1")), None);
        assert_eq!(
            KeyState::Cancelled.apply(KeyEvent::Resubmitted),
            Some(KeyState::Pending)
        );
        assert_eq!(m.apply(KeyEvent::Resubmitted), None);
        assert_eq!(p.apply(KeyEvent::ConnectionLost), Some(KeyState::Closed));
        assert_eq!(m.apply(KeyEvent::ConnectionLost), None);
        assert_eq!(KeyState::Closed.apply(mem("w1")), None);
        assert!(!p.is_done() && m.is_done() && KeyState::Closed.is_done());
    }

    /// What the writer would send as releases now, resolving markers as it does.
    fn queued_releases(st: &mut State, rx: &mut mpsc::UnboundedReceiver<Outgoing>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            match item {
                Outgoing::Release(k) => out.extend(k),
                Outgoing::ReleasesReady(n) => out.extend(st.take_releases(n)),
                other => panic!("not a release: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn last_handle_releases_registered_keys_only() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut st = State::new(tx);
        let (a, created) = st.acquire("a");
        assert!(created);
        a.registered.store(true, Ordering::Relaxed);
        let (a2, created) = st.acquire("a");
        assert!(!created && Arc::ptr_eq(&a, &a2));
        assert_eq!(st.refs("a"), 2);
        st.release(&a);
        assert!(rx.try_recv().is_err(), "one handle is left");
        st.release(&a2);
        assert_eq!(queued_releases(&mut st, &mut rx), ["a"]);
        assert_eq!(st.refs("a"), 0);
        // A key the scheduler never accepted (rejected graph) is forgotten silently.
        let (b, _) = st.acquire("b");
        st.release(&b);
        assert!(rx.try_recv().is_err());
        // Forgetting a key twice (or one taken again meanwhile) is harmless.
        st.unused(&a);
        assert!(rx.try_recv().is_err());
        let (a3, created) = st.acquire("a");
        assert!(created && !Arc::ptr_eq(&a, &a3));
        st.unused(&a);
        assert_eq!(st.refs("a"), 1);
    }

    #[test]
    fn releases_stay_behind_earlier_and_ahead_of_later_messages() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut st = State::new(tx);
        let (a, _) = st.acquire("a");
        a.registered.store(true, Ordering::Relaxed);
        let (b, _) = st.acquire("b");
        b.registered.store(true, Ordering::Relaxed);
        st.send(Outgoing::Msg(FromClient::Heartbeat));
        st.release(&a);
        // A message queued after the release carries it ahead of itself.
        st.send(Outgoing::Msg(FromClient::GetWorkers));
        st.release(&b);
        let items: Vec<Outgoing> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(matches!(&items[0], Outgoing::Msg(FromClient::Heartbeat)));
        let n = match &items[1] {
            Outgoing::ReleasesReady(n) => *n,
            other => panic!("{other:?}"),
        };
        assert!(matches!(&items[2], Outgoing::Release(k) if k == &["a"]));
        assert!(matches!(&items[3], Outgoing::Msg(FromClient::GetWorkers)));
        // The first marker's batch went with `GetWorkers`; the second marker takes `b`.
        assert!(st.take_releases(n).is_empty());
        let m = match &items[4] {
            Outgoing::ReleasesReady(m) => *m,
            other => panic!("{other:?}"),
        };
        assert_eq!(st.take_releases(m), ["b"]);
        assert_eq!(items.len(), 5);
        // Releases still collected when the state goes are queued then.
        let (c, _) = st.acquire("c");
        c.registered.store(true, Ordering::Relaxed);
        st.release(&c);
        drop(st);
        let rest: Vec<Outgoing> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            matches!(&rest[..], [Outgoing::ReleasesReady(_), Outgoing::Release(k)] if k == &["c"])
        );
    }

    #[test]
    fn releases_coalesce_between_other_messages() {
        let (ack, _) = oneshot::channel();
        let batch = vec![
            Outgoing::Release(vec!["a".into()]),
            Outgoing::ReleasesReady(0),
            Outgoing::Release(vec!["b".into()]),
            Outgoing::Msg(FromClient::GetWorkers),
            Outgoing::Release(vec!["c".into()]),
            Outgoing::Close(ack),
        ];
        let out = coalesce(batch);
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[0], Outgoing::Msg(FromClient::ReleaseKeys(k)) if k == &["a", "b"]));
        assert!(matches!(&out[1], Outgoing::Msg(FromClient::GetWorkers)));
        assert!(matches!(&out[2], Outgoing::Msg(FromClient::ReleaseKeys(k)) if k == &["c"]));
        assert!(matches!(&out[3], Outgoing::Close(_)));
        assert!(coalesce(Vec::new()).is_empty());
    }

    #[test]
    fn closing_resolves_pending_keys_and_requests() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut st = State::new(tx);
        let (a, _) = st.acquire("a");
        let (b, _) = st.acquire("b");
        b.apply(mem("w1"));
        let (reply, mut waiter) = oneshot::channel();
        st.submits.insert(1, reply);
        st.fail_all();
        assert_eq!(a.current(), KeyState::Closed);
        assert!(matches!(b.current(), KeyState::Memory { .. }));
        assert!(waiter.try_recv().is_err());
        let (c, _) = st.acquire("c");
        assert_eq!(c.current(), KeyState::Closed);
        assert!(!st.send(Outgoing::Msg(FromClient::GetWorkers)));
    }
}
