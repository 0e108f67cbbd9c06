//! The one thread that owns the scheduler core.
//!
//! Connection tasks push [`Input`]s into a crossbeam queue; this thread applies them in batches
//! (everything queued, up to a bound, before it flushes), fires the core's timers, and encodes
//! each command for the connection it is addressed to.

use crate::server::Route;
use crate::snapshot::Publisher;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use taskwire_protocol::{
    ClientId, TaskKindMsg, ToClient, ToWorker, WorkerId, encode, encode_with_capacity,
};
use taskwire_scheduler_core::{Command, Core, CoreConfig, Event, RecoveryCounts, TransitionRecord};
use taskwire_transport::Message;

/// Who a connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Peer {
    Client(ClientId),
    Worker(WorkerId),
}

/// What connection tasks hand to the core thread.
pub(crate) enum Input {
    /// Route commands for `peer` to this queue (sent before the peer's first event).
    Attach(Peer, Route),
    /// An event for the core.
    Event(Event),
    /// The transitions of a key still in the core's log (the dashboard's task story).
    Story(String, tokio::sync::oneshot::Sender<Vec<TransitionRecord>>),
    /// Stop the thread.
    Shutdown,
}

/// Handle to the core thread.
pub(crate) struct CoreThread {
    pub(crate) inputs: Sender<Input>,
    pub(crate) join: std::thread::JoinHandle<()>,
}

/// Events applied before commands are flushed, so a burst becomes few large messages.
const MAX_BATCH: usize = 4096;

pub(crate) fn spawn(config: CoreConfig, publisher: Publisher) -> CoreThread {
    let (inputs, rx) = crossbeam_channel::unbounded();
    let join = std::thread::Builder::new()
        .name("taskwire-core".into())
        .spawn(move || run(Core::new(config), rx, publisher))
        .expect("spawn the scheduler core thread");
    CoreThread { inputs, join }
}

fn run(mut core: Core, rx: Receiver<Input>, mut publisher: Publisher) {
    let mut routes: HashMap<Peer, Route> = HashMap::new();
    // A snapshot is owed when the state changed since the last one published.
    let mut owed = true;
    let spin = spin_window();
    // Inputs were handled last time round: an answer (a worker's report, the client's next
    // request) is likely to follow soon.
    let mut busy = false;
    loop {
        let publish_at = if owed { publisher.next_due() } else { None };
        let deadline = core.poll_timeout().into_iter().chain(publish_at).min();
        let spun = if busy {
            spin_for_input(&rx, spin, deadline)
        } else {
            None
        };
        let first = match (spun, deadline) {
            (Some(input), _) => Ok(input),
            (None, Some(deadline)) => rx.recv_deadline(deadline),
            (None, None) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let mut next = match first {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut handled = 0;
        while let Some(input) = next.take() {
            match input {
                Input::Attach(peer, tx) => {
                    routes.insert(peer, tx);
                }
                Input::Event(event) => {
                    let detach = match &event {
                        Event::ClientDisconnected { client } => Some(Peer::Client(*client)),
                        Event::WorkerLeft { worker, .. } => Some(Peer::Worker(*worker)),
                        _ => None,
                    };
                    let before = core.recovery();
                    core.handle_event(Instant::now(), event);
                    if let Some(peer) = detach {
                        routes.remove(&peer);
                        log_recovery(peer, before, core.recovery());
                    }
                }
                Input::Story(key, reply) => {
                    let _ = reply.send(core.story(&key));
                }
                Input::Shutdown => {
                    flush(&mut core, &mut routes);
                    return;
                }
            }
            handled += 1;
            if handled < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let now = Instant::now();
        if core.poll_timeout().is_some_and(|t| t <= now) {
            core.handle_timeout(now);
        }
        flush(&mut core, &mut routes);
        if handled > 0 {
            publisher.record_durations(&core);
        }
        busy = handled > 0;
        owed |= handled > 0;
        if owed && publisher.maybe_publish(&core, now) {
            owed = false;
        }
    }
}

/// How long the core thread polls for the next input before it sleeps, after it handled some.
///
/// On a virtual machine a sleeping vCPU is halted, and waking it for the next message costs
/// tens of µs; a request/response exchange (submit, compute, report, answer) crosses several
/// such wake-ups. Polling for a short while after activity keeps this vCPU awake for the answer
/// that usually follows within it, and yields to any thread that wants the CPU meanwhile. An idle
/// scheduler never polls: it sleeps until an input or a timer. `TASKWIRE_CORE_SPIN_US` sets
/// another window (0: never poll), for measuring its effect.
const SPIN: Duration = Duration::from_micros(100);

fn spin_window() -> Duration {
    std::env::var("TASKWIRE_CORE_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(SPIN, Duration::from_micros)
}

/// Poll `rx` for up to `window` (never past `deadline`), yielding the CPU between polls.
fn spin_for_input(
    rx: &Receiver<Input>,
    window: Duration,
    deadline: Option<Instant>,
) -> Option<Input> {
    if window.is_zero() {
        return None;
    }
    let start = Instant::now();
    let end = deadline.map_or(start + window, |d| d.min(start + window));
    loop {
        if let Ok(input) = rx.try_recv() {
            return Some(input);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::yield_now();
    }
}

/// Say what losing a worker cost (nothing is logged for a retired worker's connection).
fn log_recovery(peer: Peer, before: RecoveryCounts, after: RecoveryCounts) {
    let cost = (after.tasks_rescheduled - before.tasks_rescheduled)
        + (after.results_lost - before.results_lost)
        + (after.killed_worker_errors - before.killed_worker_errors);
    if after.workers_lost == before.workers_lost || cost == 0 {
        // A worker that held nothing and ran nothing (say, a clean shutdown) costs nothing.
        return;
    }
    tracing::info!(
        "lost {peer:?}: {} tasks rescheduled, {} results recomputed from lineage, {} tasks failed \
         with KilledWorker (totals: {} workers lost, {} rescheduled, {} recomputed)",
        after.tasks_rescheduled - before.tasks_rescheduled,
        after.results_lost - before.results_lost,
        after.killed_worker_errors - before.killed_worker_errors,
        after.workers_lost,
        after.tasks_rescheduled,
        after.results_lost,
    );
}

fn flush(core: &mut Core, routes: &mut HashMap<Peer, Route>) {
    while let Some(command) = core.poll_command() {
        let (peer, header, close) = match command {
            Command::ToClient(client, msg) => {
                let header = match client_hint(&msg) {
                    0 => encode(&msg),
                    hint => encode_with_capacity(&msg, hint),
                };
                (Peer::Client(client), header, false)
            }
            Command::ToWorker(worker, msg) => {
                let close = matches!(msg, ToWorker::Refused(_));
                let header = match worker_hint(&msg) {
                    0 => encode(&msg),
                    hint => encode_with_capacity(&msg, hint),
                };
                (Peer::Worker(worker), header, close)
            }
        };
        if let Some(tx) = routes.get(&peer) {
            // A closed connection drops it; its Left/Disconnected event is already on its way
            // to the core.
            tx.send(Message::new(header));
        }
        if close {
            // Dropping the route ends the connection's writer once the refusal is written.
            routes.remove(&peer);
        }
    }
}

/// About the archived size of a large batch (0: let the buffer grow as usual). A batch of many
/// thousand tasks would otherwise double its buffer a dozen times, copying everything so far
/// each time; a slight overestimate costs only address space until the message is written.
fn worker_hint(msg: &ToWorker) -> usize {
    match msg {
        ToWorker::Compute(tasks) if tasks.len() > 16 => tasks
            .iter()
            .map(|t| {
                let kind = match &t.kind {
                    TaskKindMsg::Function { name, args } => name.len() + args.len(),
                    TaskKindMsg::Command(_) => 256,
                };
                let deps: usize = t
                    .deps
                    .iter()
                    .map(|d| 40 + d.holders.iter().map(|h| 8 + h.len()).sum::<usize>())
                    .sum();
                96 + t.key.len() + kind + deps + 24 * t.resources.len()
            })
            .sum(),
        _ => 0,
    }
}

/// [`worker_hint`] for client messages.
fn client_hint(msg: &ToClient) -> usize {
    match msg {
        ToClient::KeysInMemory(keys) if keys.len() > 16 => keys
            .iter()
            .map(|k| 64 + k.key.len() + k.worker.len() + k.inline.as_ref().map_or(0, Vec::len))
            .sum(),
        _ => 0,
    }
}
