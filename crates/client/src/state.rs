//! What the client knows about its keys, and the queue of messages to the scheduler.
//!
//! Every handle ([`crate::Future`]) to a key shares one [`KeyEntry`]; the [`State`] counts the
//! handles per key and, when the last one goes, queues a release. All messages to the scheduler
//! go through one ordered queue, so a release can never overtake the submission it follows (or
//! be overtaken by a resubmission of the same key).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use taskwire_protocol::{ErrorKindMsg, FromClient, TaskErrorMsg, TaskId, WorkerInfoMsg};
use tokio::sync::{mpsc, oneshot, watch};

/// Where a key stands, as far as this client knows.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KeyState {
    /// Submitted, not finished.
    Pending,
    /// In memory on `worker`.
    Memory {
        task: TaskId,
        worker: String,
        nbytes: u64,
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
        worker: String,
        nbytes: u64,
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
                },
            ) => Some(S::Memory {
                task,
                worker,
                nbytes,
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

/// The state of one key, shared by all its handles.
#[derive(Debug)]
pub(crate) struct KeyEntry {
    pub(crate) key: String,
    pub(crate) state: watch::Sender<KeyState>,
    /// The scheduler has been told about the key, so dropping it must release it there.
    pub(crate) registered: AtomicBool,
}

impl KeyEntry {
    pub(crate) fn new(key: String, state: KeyState) -> KeyEntry {
        KeyEntry {
            key,
            state: watch::Sender::new(state),
            registered: AtomicBool::new(false),
        }
    }

    pub(crate) fn apply(&self, event: KeyEvent) {
        self.state.send_if_modified(|s| match s.apply(event) {
            Some(next) => {
                *s = next;
                true
            }
            None => false,
        });
    }

    pub(crate) fn current(&self) -> KeyState {
        self.state.borrow().clone()
    }

    /// Wait until the key is done; returns the final state.
    pub(crate) async fn done(&self) -> KeyState {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so it cannot be dropped while we wait.
        match rx.wait_for(KeyState::is_done).await {
            Ok(s) => s.clone(),
            Err(_) => KeyState::Closed,
        }
    }
}

/// One item of the queue to the scheduler connection's writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Msg(FromClient),
    /// The last handle of a key is gone; coalesced into one `ReleaseKeys`.
    Release(String),
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
            Outgoing::Release(k) => releases.push(k),
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
    keys: HashMap<String, (Arc<KeyEntry>, usize)>,
    pub(crate) submits: HashMap<u64, Reply<Result<(), String>>>,
    #[allow(clippy::type_complexity)]
    pub(crate) scatters: HashMap<u64, Reply<Result<Vec<(String, TaskId, String)>, String>>>,
    pub(crate) workers: VecDeque<Reply<Vec<WorkerInfoMsg>>>,
    pub(crate) closed: bool,
    out: mpsc::UnboundedSender<Outgoing>,
}

impl State {
    pub(crate) fn new(out: mpsc::UnboundedSender<Outgoing>) -> State {
        State {
            keys: HashMap::new(),
            submits: HashMap::new(),
            scatters: HashMap::new(),
            workers: VecDeque::new(),
            closed: false,
            out,
        }
    }

    /// Queue a message to the scheduler; false when the writer is gone.
    pub(crate) fn send(&self, item: Outgoing) -> bool {
        !self.closed && self.out.send(item).is_ok()
    }

    /// Take one more handle on `key`, creating its entry (pending) if needed. Returns the entry
    /// and whether it was created.
    pub(crate) fn acquire(&mut self, key: &str) -> (Arc<KeyEntry>, bool) {
        if let Some((entry, refs)) = self.keys.get_mut(key) {
            *refs += 1;
            return (entry.clone(), false);
        }
        let initial = if self.closed {
            KeyState::Closed
        } else {
            KeyState::Pending
        };
        let entry = Arc::new(KeyEntry::new(key.to_string(), initial));
        self.keys.insert(key.to_string(), (entry.clone(), 1));
        (entry, true)
    }

    /// Give back one handle on `key`; the last one queues a release if the scheduler knows the
    /// key.
    pub(crate) fn release(&mut self, key: &str) {
        let Some((_, refs)) = self.keys.get_mut(key) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let (entry, _) = self.keys.remove(key).expect("present");
        if entry.registered.load(Ordering::Relaxed) {
            self.send(Outgoing::Release(key.to_string()));
        }
    }

    /// The entry of a key some handle holds.
    pub(crate) fn entry(&self, key: &str) -> Option<&Arc<KeyEntry>> {
        self.keys.get(key).map(|(e, _)| e)
    }

    /// How many handles a key has (0: unknown).
    #[cfg(test)]
    pub(crate) fn refs(&self, key: &str) -> usize {
        self.keys.get(key).map_or(0, |(_, r)| *r)
    }

    /// The scheduler connection is gone: resolve everything that waits on it.
    pub(crate) fn fail_all(&mut self) {
        self.closed = true;
        for (entry, _) in self.keys.values() {
            entry.apply(KeyEvent::ConnectionLost);
        }
        // Dropping the reply senders wakes their waiters with "closed".
        self.submits.clear();
        self.scatters.clear();
        self.workers.clear();
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
        }
    }

    #[test]
    fn transitions() {
        let p = KeyState::Pending;
        let m = p.apply(mem("w1")).unwrap();
        assert!(matches!(&m, KeyState::Memory { worker, .. } if worker == "w1"));
        // A result that moved (worker died, recomputed elsewhere) updates the location.
        assert!(
            matches!(m.apply(mem("w2")), Some(KeyState::Memory { worker, .. }) if worker == "w2")
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
        st.release("a");
        assert!(rx.try_recv().is_err(), "one handle is left");
        st.release("a");
        assert!(matches!(rx.try_recv(), Ok(Outgoing::Release(k)) if k == "a"));
        assert_eq!(st.refs("a"), 0);
        // A key the scheduler never accepted (rejected graph) is forgotten silently.
        let _ = st.acquire("b");
        st.release("b");
        assert!(rx.try_recv().is_err());
        // Releasing an unknown key is harmless.
        st.release("nope");
    }

    #[test]
    fn releases_coalesce_between_other_messages() {
        let (ack, _) = oneshot::channel();
        let batch = vec![
            Outgoing::Release("a".into()),
            Outgoing::Release("b".into()),
            Outgoing::Msg(FromClient::GetWorkers),
            Outgoing::Release("c".into()),
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
