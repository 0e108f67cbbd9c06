//! The engine: one OS thread that owns the UCP context, the worker, every listener and every
//! endpoint, and runs a `current_thread` tokio runtime.
//!
//! The rest of the process talks to it through channels: commands in ([`Cmd`]), accepted
//! connections and received messages out, and each connection's send queue (the transport
//! crate's [`Outbox`]) drained by a task on the engine thread. UCX callbacks run inside
//! `ucp_worker_progress` on this thread; they only record work (deliveries, deferred
//! [`Action`]s) and never call progress themselves. The driver loop progresses until idle, runs
//! deferred actions, spins for a bounded window (progress, then let tasks run), arms the worker
//! and then sleeps on the worker's event fd (through `AsyncFd`), a command, or a kick from a
//! task that posted work: no busy polling when idle.

use crate::err_mode::{ErrMode, ErrModeSetting};
use crate::same_host::{self, Identity, Peer, ReadError};
use crate::status::{Status, StatusPtr, UcxError};
use crate::sys;
use crate::ucp::{self, Armed, Context, EpTarget, UcpListener, UcxConfig, Worker};
use crate::wire;
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use taskwire_transport::{
    Address, ConnReceiver, ConnSender, Connection, Message, Outbox, RecvHalf, Scheme,
    TransportConfig, TransportError,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc, oneshot};

/// Sends posted but not completed, per connection, before its send task waits.
const MAX_INFLIGHT: usize = 256;
/// Bytes posted but not completed, per connection, before its send task waits. Two messages
/// are always allowed in flight whatever their size, so that the rendezvous hand-shake of the
/// next large message overlaps the transfer of the current one.
const MAX_INFLIGHT_BYTES: usize = 32 << 20;
/// Messages taken off a send queue per wake-up before the driver is kicked.
const SEND_BATCH: usize = 64;
/// While operations are outstanding the driver also wakes this often, whatever the event fd
/// says: UCX does not promise an event for every internal state change (a send parked in a
/// transport's pending queue, for one), and a missed one must cost a little latency, not a
/// hang. An idle engine (nothing outstanding) sleeps on the event fd alone. The bounded spin
/// below is what keeps traffic moving; this is only a safety net (`TASKWIRE_UCX_DEBUG=1`
/// prints how often it found work).
const OUTSTANDING_TICK: Duration = Duration::from_millis(1);
/// After the last sign of work, the driver keeps progressing the worker (and running the
/// send tasks) for this long before it arms the event fd and sleeps. A reply that comes back
/// within the window costs no wake-up on either side: sleeping on the event fd and being woken
/// costs tens of microseconds on a busy machine, more than a whole shared-memory round trip.
/// `TASKWIRE_UCX_SPIN_US` overrides it (0: never spin). An idle engine spins once, then sleeps.
const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// How long shutdown waits for endpoints to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long the memory of messages a peer had not finished pulling is kept after the
/// connection broke: a peer that is still alive may be reading it right now, and will have
/// seen the endpoint's error well within this time.
const ABANDONED_PULL_GRACE: Duration = Duration::from_secs(5);

/// A request to the engine thread.
pub(crate) enum Cmd {
    Listen {
        addr: SocketAddr,
        cfg: Arc<TransportConfig>,
        reply: oneshot::Sender<Result<Listening, UcxError>>,
    },
    StopListen(u64),
    Connect {
        addr: SocketAddr,
        cfg: Arc<TransportConfig>,
        reply: oneshot::Sender<Result<Connection, TransportError>>,
    },
    ReceiverDropped(u64),
}

/// A listener the engine opened.
pub(crate) struct Listening {
    pub(crate) id: u64,
    pub(crate) local: SocketAddr,
    pub(crate) accepted: mpsc::UnboundedReceiver<Connection>,
}

/// What the engine tells a connection's receiver.
enum Incoming {
    Msg(Message),
    Eof,
    Error(String),
}

/// A handle on a running engine; the thread stops once every handle (and every connection
/// receiver and listener made through it) is gone.
#[derive(Clone, Debug)]
pub(crate) struct EngineHandle {
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl EngineHandle {
    /// Start an engine thread; fails with UCX's reason if the context or worker cannot be made.
    pub(crate) async fn start(config: UcxConfig) -> Result<EngineHandle, UcxError> {
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("taskwire-ucx".into())
            .spawn({
                let weak = cmd.downgrade();
                move || engine_thread(config, weak, cmd_rx, ready_tx)
            })
            .map_err(|_| UcxError {
                op: "engine thread",
                status: Status(sys::UCS_ERR_NO_RESOURCE),
            })?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(EngineHandle { cmd }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UcxError {
                op: "engine start",
                status: Status(sys::UCS_ERR_NO_RESOURCE),
            }),
        }
    }

    pub(crate) fn send(&self, cmd: Cmd) -> Result<(), TransportError> {
        self.cmd
            .send(cmd)
            .map_err(|_| TransportError::Other("ucx: engine thread has stopped".into()))
    }

    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<Cmd> {
        self.cmd.clone()
    }
}

/// Engine threads currently running (for tests: an engine must stop once unused).
pub(crate) static LIVE_ENGINES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Registers [`wait_for_engines`] once, when the first engine starts.
static WAIT_AT_EXIT: std::sync::Once = std::sync::Once::new();

/// Longest wait at process exit for engine threads to finish.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Runs at process exit (`atexit`), before the shared libraries' destructors: waits, at most
/// [`EXIT_WAIT`], until every engine thread has destroyed its UCX worker and context. UCX's
/// own exit-time cleanup (libucs' destructor) tears down its async event handlers; an engine
/// thread still inside `ucp_worker_progress` then trips UCX's assertions (`async.c:153
/// handler->id == id`, or `ucp_worker.c:634 failed to modify event handler`) and aborts a
/// process that was exiting cleanly. Engines stop once their last handle is dropped, so this
/// wait is short unless a handle is leaked.
extern "C" fn wait_for_engines() {
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    while LIVE_ENGINES.load(std::sync::atomic::Ordering::SeqCst) > 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn engine_thread(
    config: UcxConfig,
    weak: mpsc::WeakUnboundedSender<Cmd>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    ready: oneshot::Sender<Result<(), UcxError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            let _ = ready.send(Err(UcxError {
                op: "engine runtime",
                status: Status(sys::UCS_ERR_NO_RESOURCE),
            }));
            return;
        }
    };
    LIVE_ENGINES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    WAIT_AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function with no arguments; it only reads an atomic and
        // sleeps.
        unsafe { libc::atexit(wait_for_engines) };
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let engine = match Engine::new(&config, weak) {
            Ok(e) => e,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        engine.run(cmd_rx).await;
    });
    drop(local);
    LIVE_ENGINES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

/// The worker's event fd, for `AsyncFd`. UCX owns the fd, so this has no `Drop`.
struct EventFd(RawFd);

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Work recorded by callbacks, done by the driver outside `ucp_worker_progress`.
enum Action {
    Accept(u64, sys::ucp_conn_request_h),
    Failed(u64, Status),
    ProtocolError(u64, String),
    HelloReceived(u64, Result<wire::Hello, String>),
    HelloAcked(u64, Result<wire::Hello, String>),
    /// The peer process (on this host) has exited: its pidfd turned readable.
    PeerExited(u64, u32),
    SenderDone(u64),
    /// Copy a message out of the (same-host) peer's memory: connection, seq, pull id, shape,
    /// regions.
    Pull(u64, u64, u64, wire::Shape, Vec<(u64, u64)>),
    /// The peer finished (or refused) pulling: connection, pull id, outcome.
    PullDone(u64, u64, u8),
}

enum Role {
    /// Client waiting for the server's hello ack.
    Connecting {
        reply: oneshot::Sender<Result<Connection, TransportError>>,
        conn: Connection,
        outbox: Outbox,
        addr: String,
    },
    /// Server side waiting for the client's hello.
    Accepting {
        listener: u64,
        conn: Connection,
        outbox: Outbox,
    },
    Open,
}

/// Receive-side ordering: messages are delivered by sequence number.
#[derive(Default)]
struct RecvOrder {
    next: u64,
    /// Out-of-order arrivals (`None` while a rendezvous transfer is still running).
    parked: BTreeMap<u64, Option<Message>>,
    close_at: Option<u64>,
    finished: bool,
}

struct Conn {
    id: u64,
    ep: Cell<Option<sys::ucp_ep_h>>,
    /// The endpoint's error-handling mode (both ends chose it by the same rule).
    err_mode: ErrMode,
    /// Whether the endpoint may be force-closed. UCX allows that only where both ends have peer
    /// error handling (the peer may see transport errors, which without it are fatal), or where
    /// nobody is left on the other side: true for `Peer` until a hello says the peer chose
    /// otherwise, and once the peer process exited or UCX failed the endpoint.
    may_force: Cell<bool>,
    /// Notified when the endpoint is closed: ends the pidfd watch.
    closed: Rc<Notify>,
    cfg: Arc<TransportConfig>,
    role: RefCell<Role>,
    next_seq: Cell<u64>,
    inflight: Cell<usize>,
    /// Rendezvous receives posted on this endpoint and not yet completed.
    recvs: Cell<usize>,
    inflight_bytes: Cell<usize>,
    sender_wake: Notify,
    failure: RefCell<Option<String>>,
    sender_done: Cell<bool>,
    receiver_dropped: Cell<bool>,
    to_app: mpsc::UnboundedSender<Incoming>,
    order: RefCell<RecvOrder>,
    /// Same host, receiving side: the peer process we copy pulled messages from.
    peer: RefCell<Option<Peer>>,
    /// Same host, sending side: large messages go as `PULL` (until the peer refuses one, or
    /// the endpoint turns out to have a single-copy transport of UCX's own).
    pull_to_peer: Cell<bool>,
    /// Whether UCX's own single-copy path (`cma`) was looked for on this endpoint yet.
    lanes_checked: Cell<bool>,
    /// Messages the peer is pulling (or about to), by pull id, with their sequence numbers:
    /// their memory must stay where the `PULL` said until the peer answers.
    pulls: RefCell<HashMap<u64, (u64, Message)>>,
    next_pull: Cell<u64>,
}

impl Conn {
    fn deliver(&self, seq: u64, msg: Message) {
        let mut o = self.order.borrow_mut();
        if o.finished {
            return;
        }
        if seq == o.next && o.parked.is_empty() {
            o.next += 1;
            let _ = self.to_app.send(Incoming::Msg(msg));
        } else {
            o.parked.insert(seq, Some(msg));
        }
        self.flush(&mut o);
    }

    fn flush(&self, o: &mut RecvOrder) {
        loop {
            let next = o.next;
            match o.parked.get(&next) {
                Some(Some(_)) => {
                    let m = o.parked.remove(&next).flatten().expect("parked message");
                    o.next += 1;
                    let _ = self.to_app.send(Incoming::Msg(m));
                }
                _ => break,
            }
        }
        if !o.finished && o.close_at == Some(o.next) {
            o.finished = true;
            let _ = self.to_app.send(Incoming::Eof);
        }
    }

    /// The connection broke: the receiver sees what arrived in order, then the error (or a
    /// clean end if the peer had already said it was done).
    fn fail(&self, reason: String) {
        {
            let mut o = self.order.borrow_mut();
            self.flush(&mut o);
            if !o.finished {
                o.finished = true;
                let _ = self.to_app.send(Incoming::Error(reason.clone()));
            }
        }
        self.failure.borrow_mut().get_or_insert(reason);
        self.sender_wake.notify_one();
    }
}

struct ListenerEntry {
    /// Dropping the entry destroys the UCP listener.
    _ucp: UcpListener,
    local: SocketAddr,
    accepted: mpsc::UnboundedSender<Connection>,
    cfg: Arc<TransportConfig>,
    _arg: Box<ListenerArg>,
}

struct ListenerArg {
    state: *const State,
    id: u64,
}

/// Engine state reachable from callbacks (through the `arg` pointer) and tasks.
struct State {
    worker: sys::ucp_worker_h,
    /// This process, as told to peers in the hello (`None`: unknown, no `/proc`).
    me: Option<Identity>,
    /// Whether this process takes part in the same-host path (`TASKWIRE_UCX_SAME_HOST`).
    pull_ok: bool,
    /// Pull even where UCX has its own single-copy path (`TASKWIRE_UCX_SAME_HOST=always`).
    pull_always: bool,
    /// How endpoints get their error-handling mode (`TASKWIRE_UCX_ERR_MODE`).
    err_setting: ErrModeSetting,
    max_am_header: usize,
    kick: Notify,
    actions: RefCell<Vec<Action>>,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    by_ep: RefCell<HashMap<usize, u64>>,
    listeners: RefCell<HashMap<u64, ListenerEntry>>,
    closing: RefCell<Vec<*mut c_void>>,
    next_id: Cell<u64>,
    /// Wake-ups by [`OUTSTANDING_TICK`] that found work the event fd had not announced.
    tick_finds: Cell<u64>,
    /// Bumped by every send posted and command handled: the spin watches it to tell whether
    /// a task did something while the driver yielded.
    activity: Cell<u64>,
    /// Weak, so that the engine's own reference does not keep it running.
    cmd: mpsc::WeakUnboundedSender<Cmd>,
}

impl State {
    fn id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    fn push(&self, a: Action) {
        self.actions.borrow_mut().push(a);
    }

    fn bump(&self) {
        self.activity.set(self.activity.get().wrapping_add(1));
    }

    fn conn_by_ep(&self, ep: sys::ucp_ep_h) -> Option<Rc<Conn>> {
        let id = *self.by_ep.borrow().get(&(ep as usize))?;
        self.conns.borrow().get(&id).cloned()
    }

    fn conn(&self, id: u64) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&id).cloned()
    }
}

struct Engine {
    // Field order is drop order: the worker goes before its context, and both before the
    // state that callbacks point into.
    worker: Worker,
    _ctx: Context,
    state: Rc<State>,
}

impl Engine {
    fn new(config: &UcxConfig, weak: mpsc::WeakUnboundedSender<Cmd>) -> Result<Engine, UcxError> {
        let ctx = Context::new(config)?;
        let worker = Worker::new(&ctx)?;
        let state = Rc::new(State {
            worker: worker.raw(),
            me: Identity::local(),
            pull_ok: same_host::path_enabled(),
            pull_always: same_host::path_forced(),
            err_setting: match config.fixed_err_mode() {
                Some(m) => ErrModeSetting::Fixed(m),
                None => ErrModeSetting::from_env().unwrap_or_else(|e| {
                    eprintln!("taskwire-transport-ucx: {e}; using auto");
                    ErrModeSetting::Auto
                }),
            },
            max_am_header: worker.max_am_header()?.min(4096),
            kick: Notify::new(),
            actions: RefCell::new(Vec::new()),
            conns: RefCell::new(HashMap::new()),
            by_ep: RefCell::new(HashMap::new()),
            listeners: RefCell::new(HashMap::new()),
            closing: RefCell::new(Vec::new()),
            next_id: Cell::new(1),
            tick_finds: Cell::new(0),
            activity: Cell::new(0),
            cmd: weak,
        });
        let arg = Rc::as_ptr(&state) as *mut c_void;
        let handlers: [(u32, sys::ucp_am_recv_callback_t); 7] = [
            (wire::AM_HELLO, Some(on_hello)),
            (wire::AM_HELLO_ACK, Some(on_hello_ack)),
            (wire::AM_MSG, Some(on_msg)),
            (wire::AM_MSG_LONG, Some(on_msg_long)),
            (wire::AM_CLOSE, Some(on_close)),
            (wire::AM_PULL, Some(on_pull)),
            (wire::AM_PULL_DONE, Some(on_pull_done)),
        ];
        for (id, cb) in handlers {
            // SAFETY: arg points into `state`, which the Engine keeps alive until after the
            // worker is destroyed (field order).
            unsafe { worker.set_am_handler(id, cb, arg)? };
        }
        Ok(Engine {
            worker,
            _ctx: ctx,
            state,
        })
    }

    async fn run(self, mut cmd_rx: mpsc::UnboundedReceiver<Cmd>) {
        let fd = match self.worker.event_fd() {
            Ok(fd) => fd,
            Err(e) => {
                fail_all_commands(&mut cmd_rx, e).await;
                return;
            }
        };
        // SAFETY: the worker owns the event fd and keeps it open until ucp_worker_destroy; the
        // AsyncFd is dropped at the end of this function, before the Engine (and its worker).
        let registered =
            unsafe { AsyncFd::register_with_interest(EventFd(fd), tokio::io::Interest::READABLE) };
        let afd = match registered {
            Ok(a) => a,
            Err(_) => {
                let e = UcxError {
                    op: "AsyncFd on ucp_worker_get_efd",
                    status: Status(sys::UCS_ERR_IO_ERROR),
                };
                fail_all_commands(&mut cmd_rx, e).await;
                return;
            }
        };
        let st = self.state.clone();
        let spin = spin_window();
        loop {
            self.progress_until_idle();
            // Stay awake a little while: the next message usually follows soon.
            match self.spin(spin, &mut cmd_rx).await {
                Spin::Work => continue,
                Spin::Stop => break,
                Spin::Idle => {}
            }
            match self.worker.arm() {
                // Events are pending that progress has not seen yet: progress again. Arming
                // only when UCX says nothing is pending is what makes sleeping on the event
                // fd safe: every later event is announced on it.
                Ok(Armed::Busy) => continue,
                Ok(Armed::Sleep) => {}
                Err(e) => {
                    // Cannot sleep on the fd: fall back to a short timer rather than spin.
                    tracing_free_warn(&e);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
            // Only connections still in the table count: an operation on an endpoint whose
            // peer died without peer error handling (a rendezvous receive) may never complete,
            // and must not keep the tick going for the rest of the engine's life.
            let busy = !st.closing.borrow().is_empty()
                || st.conns.borrow().values().any(|c| {
                    c.inflight.get() > 0
                        || c.recvs.get() > 0
                        || !matches!(*c.role.borrow(), Role::Open)
                });
            let tick = async {
                if busy {
                    tokio::time::sleep(OUTSTANDING_TICK).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                // Biased, so that a tick that finds work really means the fd did not say so.
                biased;
                guard = afd.readable() => {
                    if let Ok(mut g) = guard {
                        g.clear_ready();
                    }
                }
                _ = st.kick.notified() => {}
                cmd = cmd_rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                _ = tick => {
                    if self.worker.progress() != 0 {
                        st.tick_finds.set(st.tick_finds.get() + 1);
                    }
                }
            }
        }
        self.shutdown().await;
        if std::env::var_os("TASKWIRE_UCX_DEBUG").is_some() {
            eprintln!(
                "taskwire-transport-ucx: engine stopped; {} timer wake-ups found unannounced work",
                st.tick_finds.get()
            );
        }
        drop(afd);
    }

    /// Progress the worker and let the engine's tasks (send queues, timers) run for up to
    /// `window`, returning as soon as anything happens. Each round yields the CPU to other
    /// threads and then to the runtime, which also polls its I/O driver without blocking, so a
    /// message queued by another thread is picked up without a wake-up.
    async fn spin(&self, window: Duration, cmd_rx: &mut mpsc::UnboundedReceiver<Cmd>) -> Spin {
        if window.is_zero() {
            return Spin::Idle;
        }
        let st = &self.state;
        let start = std::time::Instant::now();
        loop {
            let seen = st.activity.get();
            // Give the CPU away for a moment: on a machine with more busy threads than cores,
            // the thread we just woke (a receiver, the peer process) may be waiting for this
            // very core, and spinning through its time slice would delay the reply we wait for.
            std::thread::yield_now();
            tokio::task::yield_now().await;
            match cmd_rx.try_recv() {
                Ok(cmd) => {
                    self.handle(cmd);
                    return Spin::Work;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return Spin::Stop,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if self.worker.progress() != 0
                || st.activity.get() != seen
                || !st.actions.borrow().is_empty()
            {
                return Spin::Work;
            }
            if start.elapsed() >= window {
                return Spin::Idle;
            }
        }
    }

    fn progress_until_idle(&self) {
        loop {
            while self.worker.progress() != 0 {}
            let actions = std::mem::take(&mut *self.state.actions.borrow_mut());
            let reaped = self.reap_closing();
            if actions.is_empty() && !reaped {
                return;
            }
            for a in actions {
                self.act(a);
            }
        }
    }

    /// Free finished endpoint-close requests; true if any finished.
    fn reap_closing(&self) -> bool {
        let mut closing = self.state.closing.borrow_mut();
        let before = closing.len();
        closing.retain(|&req| {
            // SAFETY: req is a close request we have not freed yet.
            if unsafe { ucp::request_in_progress(req) } {
                true
            } else {
                // SAFETY: completed, freed once, and removed from the list.
                unsafe { ucp::request_free(req) };
                false
            }
        });
        closing.len() != before
    }

    fn handle(&self, cmd: Cmd) {
        self.state.bump();
        match cmd {
            Cmd::Listen { addr, cfg, reply } => {
                let _ = reply.send(self.listen(addr, cfg));
            }
            Cmd::StopListen(id) => {
                self.state.listeners.borrow_mut().remove(&id);
            }
            Cmd::Connect { addr, cfg, reply } => self.connect(addr, cfg, reply),
            Cmd::ReceiverDropped(id) => {
                if let Some(c) = self.state.conn(id) {
                    c.receiver_dropped.set(true);
                    self.maybe_close(&c);
                }
            }
        }
    }

    fn listen(&self, addr: SocketAddr, cfg: Arc<TransportConfig>) -> Result<Listening, UcxError> {
        let id = self.state.id();
        let arg = Box::new(ListenerArg {
            state: Rc::as_ptr(&self.state),
            id,
        });
        let arg_ptr = (&*arg as *const ListenerArg).cast_mut().cast::<c_void>();
        // SAFETY: arg lives in the ListenerEntry, which owns (and drops first) the listener.
        let ucp = unsafe { UcpListener::new(&self.worker, addr, Some(on_conn_request), arg_ptr)? };
        let local = ucp.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.state.listeners.borrow_mut().insert(
            id,
            ListenerEntry {
                _ucp: ucp,
                local,
                accepted: tx,
                cfg,
                _arg: arg,
            },
        );
        Ok(Listening {
            id,
            local,
            accepted: rx,
        })
    }

    fn new_conn(
        &self,
        ep: sys::ucp_ep_h,
        cfg: Arc<TransportConfig>,
        local: SocketAddr,
        peer: SocketAddr,
        err_mode: ErrMode,
    ) -> (Rc<Conn>, Connection, Outbox) {
        let id = self.state.id();
        let (to_app, from_engine) = mpsc::unbounded_channel();
        let (sender, outbox) = ConnSender::channel(cfg.clone());
        let receiver = UcxReceiver {
            rx: from_engine,
            cmd: self.state.cmd.upgrade(),
            id,
            state: RecvState::Open,
        };
        let connection = Connection {
            sender,
            receiver: ConnReceiver::new(Box::new(receiver)),
            local: ucx_address(local),
            peer: ucx_address(peer),
        };
        let conn = Rc::new(Conn {
            id,
            ep: Cell::new(Some(ep)),
            err_mode,
            may_force: Cell::new(err_mode == ErrMode::Peer),
            closed: Rc::new(Notify::new()),
            cfg,
            role: RefCell::new(Role::Open),
            next_seq: Cell::new(0),
            inflight: Cell::new(0),
            recvs: Cell::new(0),
            inflight_bytes: Cell::new(0),
            sender_wake: Notify::new(),
            failure: RefCell::new(None),
            sender_done: Cell::new(false),
            receiver_dropped: Cell::new(false),
            to_app,
            order: RefCell::new(RecvOrder::default()),
            peer: RefCell::new(None),
            pull_to_peer: Cell::new(false),
            lanes_checked: Cell::new(false),
            pulls: RefCell::new(HashMap::new()),
            next_pull: Cell::new(0),
        });
        self.state.conns.borrow_mut().insert(id, conn.clone());
        self.state.by_ep.borrow_mut().insert(ep as usize, id);
        (conn, connection, outbox)
    }

    fn connect(
        &self,
        addr: SocketAddr,
        cfg: Arc<TransportConfig>,
        reply: oneshot::Sender<Result<Connection, TransportError>>,
    ) {
        let addr_str = ucx_address(addr).to_string();
        let mode = self.state.err_setting.mode_for(addr.ip());
        // SAFETY: the state pointer outlives every endpoint (closed in shutdown before the
        // worker and state go).
        let ep = match unsafe {
            ucp::ep_create(
                &self.worker,
                EpTarget::Connect(addr),
                mode,
                Some(on_ep_error),
                Rc::as_ptr(&self.state).cast_mut().cast(),
            )
        } {
            Ok(ep) => ep,
            Err(e) => {
                let _ = reply.send(Err(TransportError::Connect {
                    addr: addr_str,
                    reason: e.to_string(),
                }));
                return;
            }
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let (conn, connection, outbox) = self.new_conn(ep, cfg.clone(), unspecified, addr, mode);
        *conn.role.borrow_mut() = Role::Connecting {
            reply,
            conn: connection,
            outbox,
            addr: addr_str,
        };
        if let Err(e) = post(
            &self.state,
            &conn,
            wire::AM_HELLO,
            self.hello(&conn),
            Data::None,
        ) {
            self.fail_conn(&conn, e.to_string());
            return;
        }
        // The engine enforces the timeout too, so an endpoint that never wires up is cleaned
        // up even when the caller has given up.
        let st = self.state.clone();
        let id = conn.id;
        let timeout = cfg.connect_timeout;
        tokio::task::spawn_local(async move {
            tokio::time::sleep(timeout).await;
            if let Some(c) = st.conn(id)
                && matches!(*c.role.borrow(), Role::Connecting { .. })
            {
                st.push(Action::Failed(id, Status(sys::UCS_ERR_TIMED_OUT)));
                st.kick.notify_one();
            }
        });
    }

    fn act(&self, a: Action) {
        match a {
            Action::Accept(listener, req) => self.accept(listener, req),
            Action::Failed(id, status) => {
                if let Some(c) = self.state.conn(id) {
                    if status.0 != sys::UCS_ERR_TIMED_OUT {
                        // UCX failed the endpoint: it can only be force-closed.
                        c.may_force.set(true);
                    }
                    let mut reason = format!("ucx: {status}");
                    if matches!(
                        status.0,
                        sys::UCS_ERR_NOT_CONNECTED | sys::UCS_ERR_ENDPOINT_TIMEOUT
                    ) && matches!(*c.role.borrow(), Role::Connecting { .. })
                    {
                        // What a client sees when the server's UCX refuses its endpoint for a
                        // different error-handling mode ("asymmetric endpoint configuration",
                        // logged on the server), among other causes.
                        reason.push_str(&format!(
                            " during set-up (also what a peer whose error-handling mode \
                             differs answers: see {})",
                            crate::err_mode::ENV_ERR_MODE
                        ));
                    }
                    self.fail_conn(&c, reason);
                }
            }
            Action::PeerExited(id, pid) => {
                if let Some(c) = self.state.conn(id) {
                    c.may_force.set(true);
                    self.fail_conn(&c, format!("ucx: peer process {pid} has exited"));
                }
            }
            Action::ProtocolError(id, reason) => {
                if let Some(c) = self.state.conn(id) {
                    self.fail_conn(&c, reason);
                }
            }
            Action::HelloReceived(id, check) => {
                let Some(c) = self.state.conn(id) else { return };
                if let Err(e) = self.check_peer(&c, check) {
                    self.fail_conn(&c, e);
                    return;
                }
                let role = std::mem::replace(&mut *c.role.borrow_mut(), Role::Open);
                let Role::Accepting {
                    listener,
                    conn,
                    outbox,
                } = role
                else {
                    // A second hello: not from a Taskwire peer.
                    self.fail_conn(&c, "ucx: unexpected hello".into());
                    return;
                };
                if let Err(e) = post(
                    &self.state,
                    &c,
                    wire::AM_HELLO_ACK,
                    self.hello(&c),
                    Data::None,
                ) {
                    drop(conn);
                    self.fail_conn(&c, e.to_string());
                    return;
                }
                tokio::task::spawn_local(send_loop(self.state.clone(), c.clone(), outbox));
                let listeners = self.state.listeners.borrow();
                match listeners.get(&listener) {
                    Some(l) => {
                        let _ = l.accepted.send(conn);
                    }
                    None => drop(conn),
                }
            }
            Action::SenderDone(id) => {
                if let Some(c) = self.state.conn(id) {
                    self.maybe_close(&c);
                }
            }
            Action::HelloAcked(id, check) => {
                let Some(c) = self.state.conn(id) else { return };
                if let Err(e) = self.check_peer(&c, check) {
                    self.fail_conn(&c, e);
                    return;
                }
                let role = std::mem::replace(&mut *c.role.borrow_mut(), Role::Open);
                let Role::Connecting {
                    reply,
                    mut conn,
                    outbox,
                    ..
                } = role
                else {
                    self.fail_conn(&c, "ucx: unexpected hello ack".into());
                    return;
                };
                if let Some(ep) = c.ep.get()
                    && let Some(local) = ucp::ep_local_addr(ep)
                {
                    conn.local = ucx_address(local);
                }
                tokio::task::spawn_local(send_loop(self.state.clone(), c.clone(), outbox));
                // If the caller gave up, dropping the connection closes it.
                let _ = reply.send(Ok(conn));
            }
            Action::Pull(id, seq, pull, shape, regions) => {
                if let Some(c) = self.state.conn(id) {
                    self.pull(&c, seq, pull, shape, &regions);
                }
            }
            Action::PullDone(id, pull, outcome) => {
                if let Some(c) = self.state.conn(id) {
                    self.pull_done(&c, pull, outcome);
                }
            }
        }
    }

    /// This side's hello (or ack) on `c`.
    fn hello(&self, c: &Conn) -> Vec<u8> {
        wire::hello(&wire::Hello {
            identity: self.state.me,
            takes_pulls: self.state.pull_ok,
            err_mode: c.err_mode,
        })
    }

    /// After the peer's hello: check that it chose the same error-handling mode, and if it is
    /// a process on this host, hold a pidfd on it (to read its `PULL`s, and to notice when it
    /// exits) and send it `PULL`s if both sides take part in the same-host path.
    fn check_peer(&self, c: &Rc<Conn>, hello: Result<wire::Hello, String>) -> Result<(), String> {
        let hello = hello?;
        if hello.err_mode != c.err_mode {
            c.may_force.set(false);
            return Err(format!(
                "ucx: this side chose error-handling mode {}, the peer {}: set {}=peer (or the \
                 same value) on both",
                c.err_mode.name(),
                hello.err_mode.name(),
                crate::err_mode::ENV_ERR_MODE,
            ));
        }
        let (Some(me), Some(peer)) = (self.state.me.as_ref(), hello.identity) else {
            return Ok(());
        };
        if !me.shares_host_with(&peer) {
            return Ok(());
        }
        let Some(p) = Peer::open(peer.pid) else {
            return Ok(());
        };
        if let Some(fd) = p.watch_fd() {
            self.watch_peer(c, fd, peer.pid);
        }
        c.pull_to_peer.set(self.state.pull_ok && hello.takes_pulls);
        *c.peer.borrow_mut() = Some(p);
        Ok(())
    }

    /// Turn the exit of the peer process into an error on `c`, promptly and whatever UCX says
    /// (without peer error handling it may say nothing). Ends when the endpoint is closed.
    fn watch_peer(&self, c: &Rc<Conn>, fd: OwnedFd, pid: u32) {
        // SAFETY: the AsyncFd owns the descriptor and closes it only when dropped, after
        // deregistering it.
        let registered =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        let Ok(afd) = registered else {
            return;
        };
        let st = self.state.clone();
        let id = c.id;
        let closed = c.closed.clone();
        tokio::task::spawn_local(async move {
            tokio::select! {
                r = afd.readable() => {
                    if r.is_ok() {
                        st.push(Action::PeerExited(id, pid));
                        st.kick.notify_one();
                    }
                }
                _ = closed.notified() => {}
            }
        });
    }

    /// Copy a `PULL`ed message out of the peer's memory, deliver it, and tell the peer.
    fn pull(&self, c: &Rc<Conn>, seq: u64, pull: u64, shape: wire::Shape, regions: &[(u64, u64)]) {
        let outcome = if c.receiver_dropped.get() {
            // Nobody will read it: let the sender go without copying.
            wire::PULLED
        } else {
            let len = shape.body_len();
            let mut buf: Vec<u8> = Vec::with_capacity(len);
            same_host::prefer_huge_pages(&mut buf);
            let read = match &*c.peer.borrow() {
                Some(peer) => peer.read(regions, &mut buf.spare_capacity_mut()[..len]),
                None => Err(ReadError::Denied("no pidfd on the peer".into())),
            };
            match read {
                Ok(()) => {
                    // SAFETY: the read filled all `len` bytes.
                    unsafe { buf.set_len(len) };
                    RecvOp {
                        st: Rc::as_ptr(&self.state),
                        conn: c.clone(),
                        seq,
                        buf,
                        body: Body::Short(shape),
                    }
                    .finish();
                    wire::PULLED
                }
                Err(ReadError::Denied(_)) => {
                    // The sender will send it again the ordinary way; stop trying.
                    c.peer.borrow_mut().take();
                    wire::PULL_REFUSED
                }
                Err(ReadError::Gone) => {
                    c.may_force.set(true);
                    let pid = c.peer.borrow().as_ref().map_or(0, Peer::pid);
                    self.fail_conn(c, format!("ucx: peer process {pid} has exited"));
                    return;
                }
                Err(ReadError::Fault(why)) => {
                    self.fail_conn(c, format!("ucx: bad pull from peer: {why}"));
                    return;
                }
            }
        };
        if let Err(e) = post(
            &self.state,
            c,
            wire::AM_PULL_DONE,
            wire::pull_done(pull, outcome),
            Data::None,
        ) {
            self.fail_conn(c, e.to_string());
        }
    }

    /// The peer copied (or refused to copy) one of our messages.
    fn pull_done(&self, c: &Rc<Conn>, pull: u64, outcome: u8) {
        let Some((seq, msg)) = c.pulls.borrow_mut().remove(&pull) else {
            self.fail_conn(c, format!("ucx: peer acknowledged unknown pull {pull}"));
            return;
        };
        c.inflight.set(c.inflight.get() - 1);
        c.inflight_bytes.set(c.inflight_bytes.get() - msg.len());
        c.sender_wake.notify_one();
        if outcome != wire::PULLED {
            c.pull_to_peer.set(false);
            let mut out = wire::Outgoing::new(seq, msg, self.state.max_am_header);
            let header = std::mem::take(&mut out.am_header);
            if let Err(e) = post(&self.state, c, out.am_id, header, Data::Msg(out)) {
                self.fail_conn(c, e.to_string());
                return;
            }
        }
        self.maybe_close(c);
    }

    fn accept(&self, listener: u64, req: sys::ucp_conn_request_h) {
        let (local, cfg) = {
            let ls = self.state.listeners.borrow();
            match ls.get(&listener) {
                Some(l) => (l.local, l.cfg.clone()),
                None => return,
            }
        };
        let client = ucp::conn_request_client(req);
        // The client applied the same rule to its destination; an unknown client address
        // gets peer error handling (and the hello says so if the client chose otherwise).
        let mode = match client {
            Some(a) => self.state.err_setting.mode_for(a.ip()),
            None => ErrMode::Peer,
        };
        let peer = client.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        // SAFETY: req is a pending request from our listener's callback, consumed here; the
        // state pointer outlives the endpoint.
        let ep = match unsafe {
            ucp::ep_create(
                &self.worker,
                EpTarget::Accept(req),
                mode,
                Some(on_ep_error),
                Rc::as_ptr(&self.state).cast_mut().cast(),
            )
        } {
            Ok(ep) => ep,
            Err(_) => return,
        };
        let timeout = cfg.connect_timeout;
        let (conn, connection, outbox) = self.new_conn(ep, cfg, local, peer, mode);
        *conn.role.borrow_mut() = Role::Accepting {
            listener,
            conn: connection,
            outbox,
        };
        // A client that never says hello (it died right after connecting, before anyone held
        // a pidfd on it, and UCX did not report it) is dropped after the connect timeout, so
        // its endpoint does not stay forever.
        let st = self.state.clone();
        let id = conn.id;
        tokio::task::spawn_local(async move {
            tokio::time::sleep(timeout).await;
            if let Some(c) = st.conn(id)
                && matches!(*c.role.borrow(), Role::Accepting { .. })
            {
                st.push(Action::Failed(id, Status(sys::UCS_ERR_TIMED_OUT)));
                st.kick.notify_one();
            }
        });
    }

    fn fail_conn(&self, c: &Rc<Conn>, reason: String) {
        let role = std::mem::replace(&mut *c.role.borrow_mut(), Role::Open);
        match role {
            Role::Connecting {
                reply,
                addr,
                outbox,
                ..
            } => {
                let err = TransportError::Connect {
                    addr,
                    reason: reason.clone(),
                };
                outbox.fail(&TransportError::Other(reason.clone()));
                let _ = reply.send(Err(err));
            }
            Role::Accepting { outbox, .. } => outbox.fail(&TransportError::Other(reason.clone())),
            Role::Open => {}
        }
        c.fail(reason);
        self.close_ep(c, true);
    }

    /// Close the endpoint once both halves are done with it (and the peer has pulled all it
    /// was told to).
    fn maybe_close(&self, c: &Rc<Conn>) {
        if c.sender_done.get() && c.receiver_dropped.get() && c.pulls.borrow().is_empty() {
            self.close_ep(c, c.failure.borrow().is_some());
        }
    }

    fn close_ep(&self, c: &Rc<Conn>, force: bool) {
        let Some(ep) = c.ep.take() else { return };
        c.closed.notify_one();
        // Otherwise the endpoint is flushed and closed in order (see `may_force`).
        let force = force && c.may_force.get();
        self.state.by_ep.borrow_mut().remove(&(ep as usize));
        self.state.conns.borrow_mut().remove(&c.id);
        let abandoned = std::mem::take(&mut *c.pulls.borrow_mut());
        if !abandoned.is_empty() {
            tokio::task::spawn_local(async move {
                tokio::time::sleep(ABANDONED_PULL_GRACE).await;
                drop(abandoned);
            });
        }
        // SAFETY: ep is live and taken out of the connection, so it is closed exactly once.
        match unsafe { ucp::ep_close(ep, force) } {
            StatusPtr::Request(req) => self.state.closing.borrow_mut().push(req),
            StatusPtr::Done | StatusPtr::Error(_) => {}
        }
    }

    async fn shutdown(&self) {
        self.state.listeners.borrow_mut().clear();
        let conns: Vec<Rc<Conn>> = self.state.conns.borrow().values().cloned().collect();
        for c in conns {
            self.fail_conn(&c, "ucx: transport shut down".into());
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.state.closing.borrow().is_empty() && tokio::time::Instant::now() < deadline {
            self.progress_until_idle();
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        // Closes still flushing (a peer without peer error handling that is stopped or
        // unreachable never answers): hand the requests back to UCX, which frees them when they
        // end. ucp_worker_destroy then destroys their endpoints; with a close request not yet
        // released it fails an assertion (`UCP_REQUEST_FLAG_RELEASED`, ucp_ep.c:382).
        for req in self.state.closing.borrow_mut().drain(..) {
            // SAFETY: a close request we have not freed; it is freed once, here.
            unsafe { ucp::request_free(req) };
        }
    }
}

/// What a spin found.
enum Spin {
    /// Something happened: go round again.
    Work,
    /// Nothing happened within the window: arm and sleep.
    Idle,
    /// Every handle on the engine is gone.
    Stop,
}

/// The spin window: [`DEFAULT_SPIN`], or `TASKWIRE_UCX_SPIN_US` microseconds.
fn spin_window() -> Duration {
    std::env::var("TASKWIRE_UCX_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_SPIN, Duration::from_micros)
}

fn tracing_free_warn(e: &UcxError) {
    eprintln!("taskwire-transport-ucx: {e}; polling every millisecond instead");
}

async fn fail_all_commands(cmd_rx: &mut mpsc::UnboundedReceiver<Cmd>, e: UcxError) {
    while let Some(cmd) = cmd_rx.recv().await {
        match cmd {
            Cmd::Listen { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Cmd::Connect { reply, addr, .. } => {
                let _ = reply.send(Err(TransportError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }));
            }
            _ => {}
        }
    }
}

pub(crate) fn ucx_address(sa: SocketAddr) -> Address {
    Address::Net {
        scheme: Scheme::Ucx,
        host: sa.ip().to_string(),
        port: sa.port(),
    }
}

/// One posted send: everything UCX reads from stays here until the completion callback.
struct SendOp {
    conn: Rc<Conn>,
    am_header: Vec<u8>,
    data: Data,
    iov: Vec<sys::ucp_dt_iov_t>,
    bytes: usize,
}

/// What an active message carries besides its header.
enum Data {
    None,
    /// A message's header and frames (counted against the connection's bytes in flight).
    Msg(wire::Outgoing),
    /// Bytes of our own (a pull descriptor).
    Raw(Vec<u8>),
}

impl Data {
    fn pieces(&self) -> Vec<(*const u8, usize)> {
        match self {
            Data::None => Vec::new(),
            Data::Msg(out) => out.pieces(),
            Data::Raw(v) if v.is_empty() => Vec::new(),
            Data::Raw(v) => vec![(v.as_ptr(), v.len())],
        }
    }
}

/// Post one active message on `conn`'s endpoint.
fn post(
    st: &State,
    conn: &Rc<Conn>,
    am_id: u32,
    am_header: Vec<u8>,
    data: Data,
) -> Result<(), UcxError> {
    st.bump();
    let Some(ep) = conn.ep.get() else {
        return Err(UcxError {
            op: "ucp_am_send_nbx",
            status: Status(sys::UCS_ERR_CONNECTION_RESET),
        });
    };
    let mut op = Box::new(SendOp {
        conn: conn.clone(),
        am_header,
        bytes: match &data {
            Data::Msg(out) => out.data_len(),
            _ => 0,
        },
        data,
        iov: Vec::new(),
    });
    let pieces = op.data.pieces();
    let mut param = sys::ucp_request_param_t {
        op_attr_mask: sys::UCP_OP_ATTR_FIELD_CALLBACK
            | sys::UCP_OP_ATTR_FIELD_USER_DATA
            | sys::UCP_OP_ATTR_FIELD_FLAGS,
        flags: sys::UCP_AM_SEND_FLAG_REPLY,
        ..Default::default()
    };
    param.cb.send = Some(on_send_done);
    let (buffer, count): (*const c_void, usize) = match pieces.len() {
        0 => (std::ptr::null(), 0),
        1 => (pieces[0].0.cast(), pieces[0].1),
        _ => {
            op.iov = pieces
                .iter()
                .map(|&(p, n)| sys::ucp_dt_iov_t {
                    buffer: p.cast_mut().cast(),
                    length: n,
                })
                .collect();
            param.op_attr_mask |= sys::UCP_OP_ATTR_FIELD_DATATYPE;
            param.datatype = sys::UCP_DATATYPE_IOV as u64;
            (op.iov.as_ptr().cast(), op.iov.len())
        }
    };
    let bytes = op.bytes;
    let header_ptr = op.am_header.as_ptr().cast::<c_void>();
    let header_len = op.am_header.len();
    let raw = Box::into_raw(op);
    param.user_data = raw.cast();
    // SAFETY: ep is live (taken out of the connection before it is closed); the header, the
    // iov array and the data it points to live in the boxed SendOp, which is freed only when
    // the send completes (in the callback, or below when UCX finished or refused it in place).
    let r =
        unsafe { sys::ucp_am_send_nbx(ep, am_id, header_ptr, header_len, buffer, count, &param) };
    match StatusPtr::from_raw(r) {
        StatusPtr::Done => {
            // SAFETY: completed in place: no callback will run, so the box is ours again.
            drop(unsafe { Box::from_raw(raw) });
            Ok(())
        }
        StatusPtr::Error(s) => {
            // SAFETY: refused: no callback will run.
            drop(unsafe { Box::from_raw(raw) });
            Err(UcxError {
                op: "ucp_am_send_nbx",
                status: s,
            })
        }
        StatusPtr::Request(_) => {
            conn.inflight.set(conn.inflight.get() + 1);
            conn.inflight_bytes.set(conn.inflight_bytes.get() + bytes);
            Ok(())
        }
    }
}

unsafe extern "C" fn on_send_done(
    request: *mut c_void,
    status: sys::ucs_status_t,
    user: *mut c_void,
) {
    // SAFETY: user is the SendOp boxed in `post`, handed to UCX with this request; UCX runs
    // this callback once, so the box is reclaimed once.
    let op = unsafe { Box::from_raw(user.cast::<SendOp>()) };
    let c = &op.conn;
    c.inflight.set(c.inflight.get() - 1);
    c.inflight_bytes.set(c.inflight_bytes.get() - op.bytes);
    let status = Status(status);
    if !status.is_ok() && c.failure.borrow().is_none() {
        // The endpoint's error callback normally says the same; record it in case it does not.
        c.failure
            .borrow_mut()
            .replace(format!("ucx: send failed: {status}"));
    }
    c.sender_wake.notify_one();
    drop(op);
    // SAFETY: the request completed and is freed exactly once (freeing in the callback is
    // allowed).
    unsafe { ucp::request_free(request) };
}

/// Offer `msg` to a same-host peer to copy out of our memory: it stays in `conn.pulls`
/// (and counts as in flight) until the peer's `PULL_DONE`.
fn post_pull(st: &State, conn: &Rc<Conn>, seq: u64, msg: Message) -> Result<(), UcxError> {
    let pull = conn.next_pull.get();
    conn.next_pull.set(pull + 1);
    let descriptor = wire::pull_descriptor(&msg);
    conn.inflight.set(conn.inflight.get() + 1);
    conn.inflight_bytes
        .set(conn.inflight_bytes.get() + msg.len());
    conn.pulls.borrow_mut().insert(pull, (seq, msg));
    post(
        st,
        conn,
        wire::AM_PULL,
        wire::pull_header(seq, pull),
        Data::Raw(descriptor),
    )
}

/// Whether large messages on `conn` go as `PULL`s. Checked at the first large message (the
/// endpoint is wired up by then): where UCX has shared memory for the endpoint (a single-copy
/// transport such as `cma` among its lanes, which UCX 1.13 sets up only without peer error
/// handling and with `sm` in `UCX_TLS`), its own rendezvous was measured as fast or faster than
/// pulling at most sizes (BENCHMARKS.md), so the path steps aside.
fn pulls_to(st: &State, conn: &Conn) -> bool {
    if !conn.pull_to_peer.get() {
        return false;
    }
    if !conn.lanes_checked.replace(true)
        && !st.pull_always
        && let Some(ep) = conn.ep.get()
        && ucp::ep_has_single_copy(ep)
    {
        conn.pull_to_peer.set(false);
    }
    conn.pull_to_peer.get()
}

/// Drain one connection's send queue into active messages.
async fn send_loop(st: Rc<State>, conn: Rc<Conn>, mut outbox: Outbox) {
    loop {
        if let Some(reason) = conn.failure.borrow().clone() {
            outbox.fail(&TransportError::Other(format!(
                "connection failed: {reason}"
            )));
            return;
        }
        if conn.inflight.get() >= MAX_INFLIGHT
            || (conn.inflight.get() >= 2 && conn.inflight_bytes.get() >= MAX_INFLIGHT_BYTES)
        {
            conn.sender_wake.notified().await;
            continue;
        }
        let next = tokio::select! {
            biased;
            _ = conn.sender_wake.notified() => continue,
            m = outbox.recv() => m,
        };
        let Some(first) = next else {
            // Every sender is gone: tell the peer where the stream ends.
            let n = conn.next_seq.get();
            if let Err(e) = post(
                &st,
                &conn,
                wire::AM_CLOSE,
                n.to_le_bytes().to_vec(),
                Data::None,
            ) {
                st.push(Action::ProtocolError(conn.id, e.to_string()));
            }
            conn.sender_done.set(true);
            st.push(Action::SenderDone(conn.id));
            st.kick.notify_one();
            return;
        };
        let mut msg = Some(first);
        let mut sent = 0;
        while let Some(m) = msg.take() {
            let seq = conn.next_seq.get();
            conn.next_seq.set(seq + 1);
            let posted = if m.len() >= same_host::MIN_LEN && pulls_to(&st, &conn) {
                post_pull(&st, &conn, seq, m)
            } else {
                let mut out = wire::Outgoing::new(seq, m, st.max_am_header);
                let header = std::mem::take(&mut out.am_header);
                post(&st, &conn, out.am_id, header, Data::Msg(out))
            };
            if let Err(e) = posted {
                st.push(Action::ProtocolError(conn.id, e.to_string()));
                break;
            }
            sent += 1;
            if sent < SEND_BATCH && conn.inflight.get() < MAX_INFLIGHT {
                msg = outbox.try_recv();
            }
        }
        st.kick.notify_one();
    }
}

/// A connection's receiving half: messages the engine delivered, in order.
struct UcxReceiver {
    rx: mpsc::UnboundedReceiver<Incoming>,
    /// Keeps the engine running while the connection is in use, and tells it when the
    /// receiver is gone.
    cmd: Option<mpsc::UnboundedSender<Cmd>>,
    id: u64,
    state: RecvState,
}

enum RecvState {
    Open,
    Eof,
    Broken,
}

impl RecvHalf for UcxReceiver {
    fn poll_recv(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Option<Message>, TransportError>> {
        match self.state {
            RecvState::Open => {}
            RecvState::Eof => return Poll::Ready(Ok(None)),
            RecvState::Broken => return Poll::Ready(Err(TransportError::Closed)),
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Incoming::Msg(m)) => Poll::Ready(Ok(Some(m))),
            Some(Incoming::Eof) => {
                self.state = RecvState::Eof;
                Poll::Ready(Ok(None))
            }
            Some(Incoming::Error(reason)) => {
                self.state = RecvState::Broken;
                Poll::Ready(Err(TransportError::Other(format!(
                    "connection failed: {reason}"
                ))))
            }
            None => {
                self.state = RecvState::Broken;
                Poll::Ready(Err(TransportError::Other(
                    "ucx: engine thread has stopped".into(),
                )))
            }
        }
    }
}

impl Drop for UcxReceiver {
    fn drop(&mut self) {
        if let Some(cmd) = &self.cmd {
            let _ = cmd.send(Cmd::ReceiverDropped(self.id));
        }
    }
}

// ---- UCX callbacks. They run inside ucp_worker_progress on the engine thread, never call
// progress, and hand anything that needs more UCX calls to the driver as an Action.

/// # Safety
/// `arg` must be the engine's `State` pointer registered with the handler.
unsafe fn state<'a>(arg: *mut c_void) -> &'a State {
    // SAFETY: guaranteed by the caller; the state outlives the worker that runs callbacks.
    unsafe { &*(arg as *const State) }
}

/// # Safety
/// `p` must be null or a valid `ucp_am_recv_param_t`, and `(ptr, len)` a readable region.
unsafe fn am_args<'a>(
    header: *const c_void,
    len: usize,
    p: *const sys::ucp_am_recv_param_t,
) -> (&'a [u8], u64, sys::ucp_ep_h) {
    let h = if len == 0 || header.is_null() {
        &[][..]
    } else {
        // SAFETY: UCX hands us a header of `len` readable bytes for the callback's duration.
        unsafe { std::slice::from_raw_parts(header.cast::<u8>(), len) }
    };
    // SAFETY: UCX always passes a valid param struct.
    let p = unsafe { &*p };
    let ep = if p.recv_attr & sys::UCP_AM_RECV_ATTR_FIELD_REPLY_EP as u64 != 0 {
        p.reply_ep
    } else {
        std::ptr::null_mut()
    };
    (h, p.recv_attr, ep)
}

unsafe extern "C" fn on_conn_request(req: sys::ucp_conn_request_h, arg: *mut c_void) {
    // SAFETY: arg is the ListenerArg boxed in the ListenerEntry that owns this listener.
    let la = unsafe { &*(arg as *const ListenerArg) };
    // SAFETY: the state outlives every listener.
    let st = unsafe { &*la.state };
    st.push(Action::Accept(la.id, req));
}

unsafe extern "C" fn on_ep_error(arg: *mut c_void, ep: sys::ucp_ep_h, status: sys::ucs_status_t) {
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    if let Some(c) = st.conn_by_ep(ep) {
        st.push(Action::Failed(c.id, Status(status)));
    }
}

unsafe extern "C" fn on_hello(
    arg: *mut c_void,
    header: *const c_void,
    header_len: usize,
    _data: *mut c_void,
    _len: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: UCX's callback contract (see am_args); arg is the state.
    let (h, _, ep) = unsafe { am_args(header, header_len, param) };
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    if let Some(c) = st.conn_by_ep(ep) {
        st.push(Action::HelloReceived(c.id, wire::check_hello(h)));
    }
    sys::UCS_OK
}

unsafe extern "C" fn on_hello_ack(
    arg: *mut c_void,
    header: *const c_void,
    header_len: usize,
    _data: *mut c_void,
    _len: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: as in on_hello.
    let (h, _, ep) = unsafe { am_args(header, header_len, param) };
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    if let Some(c) = st.conn_by_ep(ep) {
        st.push(Action::HelloAcked(c.id, wire::check_hello(h)));
    }
    sys::UCS_OK
}

unsafe extern "C" fn on_close(
    arg: *mut c_void,
    header: *const c_void,
    header_len: usize,
    _data: *mut c_void,
    _len: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: as in on_hello.
    let (h, _, ep) = unsafe { am_args(header, header_len, param) };
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    let Some(c) = st.conn_by_ep(ep) else {
        return sys::UCS_OK;
    };
    match wire::seq_of(h) {
        Ok(n) => {
            let mut o = c.order.borrow_mut();
            o.close_at = Some(n);
            c.flush(&mut o);
        }
        Err(e) => st.push(Action::ProtocolError(c.id, e.to_string())),
    }
    sys::UCS_OK
}

unsafe extern "C" fn on_pull(
    arg: *mut c_void,
    header: *const c_void,
    header_len: usize,
    data: *mut c_void,
    len: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: as in on_hello.
    let (h, attr, ep) = unsafe { am_args(header, header_len, param) };
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    let Some(c) = st.conn_by_ep(ep) else {
        return sys::UCS_OK;
    };
    let max = wire::max_pull_descriptor_len(&c.cfg);
    let parsed = wire::seq_of(h).and_then(|seq| {
        let pull = h
            .get(8..16)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| TransportError::Other("ucx: pull header too short".into()))?;
        if len > max {
            return Err(TransportError::Other(format!(
                "ucx: pull descriptor of {len} bytes exceeds {max} bytes"
            )));
        }
        Ok((seq, pull))
    });
    match parsed {
        Ok((seq, pull)) => {
            // SAFETY: UCX's contract for data/len/attr, forwarded. A descriptor is small and
            // comes eagerly unless the message has thousands of frames.
            unsafe { receive(st, c, seq, Body::Pull(pull), data, len, attr) }
        }
        Err(e) => {
            st.push(Action::ProtocolError(c.id, format!("ucx: bad pull: {e}")));
            sys::UCS_OK
        }
    }
}

unsafe extern "C" fn on_pull_done(
    arg: *mut c_void,
    header: *const c_void,
    header_len: usize,
    _data: *mut c_void,
    _len: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: as in on_hello.
    let (h, _, ep) = unsafe { am_args(header, header_len, param) };
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    if let Some(c) = st.conn_by_ep(ep) {
        match wire::parse_pull_done(h) {
            Ok((pull, outcome)) => st.push(Action::PullDone(c.id, pull, outcome)),
            Err(e) => st.push(Action::ProtocolError(c.id, e.to_string())),
        }
    }
    sys::UCS_OK
}

/// Where a received body goes once all of it is here.
enum Body {
    /// `MSG`: the shape came in the AM header.
    Short(wire::Shape),
    /// `MSG_LONG`: the prelude is at the start of the body.
    Long,
    /// `PULL` with this pull id: the body is the descriptor of a message to copy.
    Pull(u64),
}

struct RecvOp {
    st: *const State,
    conn: Rc<Conn>,
    seq: u64,
    buf: Vec<u8>,
    body: Body,
}

impl RecvOp {
    fn finish(self) {
        let RecvOp {
            st,
            conn,
            seq,
            buf,
            body,
        } = self;
        // SAFETY: the state outlives every operation on its worker.
        let st = unsafe { &*st };
        let body_bytes = Bytes::from(buf);
        let result = match body {
            Body::Short(shape) => wire::split(body_bytes, 0, &shape),
            Body::Long => wire::parse_prelude(&body_bytes, &conn.cfg)
                .and_then(|(shape, plen)| wire::split(body_bytes.clone(), plen, &shape)),
            Body::Pull(pull) => {
                match wire::parse_pull_descriptor(&body_bytes, &conn.cfg) {
                    Ok((shape, regions)) => {
                        // Later messages wait for this one (delivered in order).
                        conn.order.borrow_mut().parked.insert(seq, None);
                        st.push(Action::Pull(conn.id, seq, pull, shape, regions));
                    }
                    Err(e) => st.push(Action::ProtocolError(
                        conn.id,
                        format!("ucx: bad pull: {e}"),
                    )),
                }
                return;
            }
        };
        match result {
            Ok(m) => conn.deliver(seq, m),
            Err(e) => {
                st.push(Action::ProtocolError(
                    conn.id,
                    format!("ucx: bad message: {e}"),
                ));
            }
        }
    }
}

unsafe extern "C" fn on_msg(
    arg: *mut c_void,
    header: *const c_void,
    header_len: usize,
    data: *mut c_void,
    len: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: as in on_hello.
    let (h, attr, ep) = unsafe { am_args(header, header_len, param) };
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    let Some(c) = st.conn_by_ep(ep) else {
        return sys::UCS_OK;
    };
    let parsed = wire::seq_of(h).and_then(|seq| {
        let (shape, _) = wire::parse_prelude(&h[8..], &c.cfg)?;
        if shape.body_len() != len {
            return Err(TransportError::Truncated {
                have: len,
                need: shape.body_len(),
            });
        }
        Ok((seq, shape))
    });
    match parsed {
        Ok((seq, shape)) => {
            // SAFETY: UCX's contract for data/len/attr, forwarded.
            unsafe { receive(st, c, seq, Body::Short(shape), data, len, attr) }
        }
        Err(e) => {
            st.push(Action::ProtocolError(
                c.id,
                format!("ucx: bad message: {e}"),
            ));
            sys::UCS_OK
        }
    }
}

unsafe extern "C" fn on_msg_long(
    arg: *mut c_void,
    header: *const c_void,
    header_len: usize,
    data: *mut c_void,
    len: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t {
    // SAFETY: as in on_hello.
    let (h, attr, ep) = unsafe { am_args(header, header_len, param) };
    // SAFETY: registered with the state pointer.
    let st = unsafe { state(arg) };
    let Some(c) = st.conn_by_ep(ep) else {
        return sys::UCS_OK;
    };
    let max = wire::max_long_len(&c.cfg);
    match wire::seq_of(h) {
        Ok(_) if len > max => {
            st.push(Action::ProtocolError(
                c.id,
                format!("ucx: message of {len} bytes exceeds the limit of {max} bytes"),
            ));
            sys::UCS_OK
        }
        Ok(seq) => {
            // SAFETY: UCX's contract for data/len/attr, forwarded.
            unsafe { receive(st, c, seq, Body::Long, data, len, attr) }
        }
        Err(e) => {
            st.push(Action::ProtocolError(c.id, e.to_string()));
            sys::UCS_OK
        }
    }
}

/// Take a message body: copy an eager one, or start a rendezvous receive straight into a
/// buffer of our own.
///
/// # Safety
/// `data`, `len` and `attr` must be what UCX passed to the active-message callback now running.
unsafe fn receive(
    st: &State,
    conn: Rc<Conn>,
    seq: u64,
    body: Body,
    data: *mut c_void,
    len: usize,
    attr: u64,
) -> sys::ucs_status_t {
    if attr & sys::UCP_AM_RECV_ATTR_FLAG_RNDV as u64 == 0 {
        let buf = if len == 0 {
            Vec::new()
        } else {
            // SAFETY: eager data: `len` readable bytes, valid during the callback.
            unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec()
        };
        RecvOp {
            st,
            conn,
            seq,
            buf,
            body,
        }
        .finish();
        return sys::UCS_OK;
    }
    conn.order.borrow_mut().parked.insert(seq, None);
    let op = Box::new(RecvOp {
        st,
        conn,
        seq,
        buf: Vec::with_capacity(len),
        body,
    });
    let dst = op.buf.as_ptr().cast_mut().cast::<c_void>();
    let raw = Box::into_raw(op);
    let mut param = sys::ucp_request_param_t {
        op_attr_mask: sys::UCP_OP_ATTR_FIELD_CALLBACK | sys::UCP_OP_ATTR_FIELD_USER_DATA,
        user_data: raw.cast(),
        ..Default::default()
    };
    param.cb.recv_am = Some(on_recv_done);
    // SAFETY: data is the rendezvous descriptor of this callback; dst has capacity for len
    // bytes and lives in the boxed RecvOp, which is reclaimed only on completion.
    let r = unsafe { sys::ucp_am_recv_data_nbx(st.worker, data, dst, len, &param) };
    match StatusPtr::from_raw(r) {
        StatusPtr::Done => {
            // SAFETY: completed in place (no callback will run); UCX wrote all len bytes.
            let mut op = unsafe { Box::from_raw(raw) };
            // SAFETY: the receive completed successfully and filled `len` bytes.
            unsafe { op.buf.set_len(len) };
            op.finish();
        }
        StatusPtr::Error(s) => {
            // SAFETY: refused: no callback will run.
            let op = unsafe { Box::from_raw(raw) };
            st.push(Action::ProtocolError(
                op.conn.id,
                format!("ucx: rendezvous receive failed: {s}"),
            ));
        }
        StatusPtr::Request(_) => {
            // SAFETY: UCX holds the op until `on_recv_done`, which runs on this thread
            // inside a later progress call, never during this one.
            let conn = unsafe { &(*raw).conn };
            conn.recvs.set(conn.recvs.get() + 1);
        }
    }
    // UCP owns the descriptor now that ucp_am_recv_data_nbx was called on it.
    sys::UCS_INPROGRESS
}

unsafe extern "C" fn on_recv_done(
    request: *mut c_void,
    status: sys::ucs_status_t,
    length: usize,
    user: *mut c_void,
) {
    // SAFETY: user is the RecvOp boxed in `receive` for this request; UCX calls this once.
    let mut op = unsafe { Box::from_raw(user.cast::<RecvOp>()) };
    // SAFETY: the state outlives every operation on its worker.
    let st = unsafe { &*op.st };
    op.conn.recvs.set(op.conn.recvs.get() - 1);
    let status = Status(status);
    if status.is_ok() && length <= op.buf.capacity() {
        // SAFETY: the receive completed successfully and wrote `length` bytes into the buffer.
        unsafe { op.buf.set_len(length) };
        op.finish();
    } else {
        st.push(Action::ProtocolError(
            op.conn.id,
            format!("ucx: rendezvous receive failed: {status}"),
        ));
    }
    // SAFETY: completed; freed once.
    unsafe { ucp::request_free(request) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UcxTransport;
    use std::sync::atomic::Ordering;
    use taskwire_transport::{Registry, Transport};

    /// A process that used UCX and dropped everything gets its thread (and UCX context) back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn engine_stops_when_everything_is_dropped() {
        let reg =
            Registry::default().register(Arc::new(UcxTransport::new(UcxConfig::new().tls("tcp"))));
        let addr: Address = "ucx://127.0.0.1:0".parse().unwrap();
        let mut listener = reg.listen(&addr).await.unwrap();
        let addr = listener.local_addr().clone();
        let (client, server) = tokio::join!(reg.connect(&addr), listener.accept());
        let (client, mut server) = (client.unwrap(), server.unwrap());
        client
            .send(Message::new(Bytes::from_static(b"x")))
            .await
            .unwrap();
        assert_eq!(&server.recv_msg().await.unwrap().header[..], b"x");
        assert!(LIVE_ENGINES.load(Ordering::SeqCst) >= 1);
        drop((client, server, listener, reg));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while LIVE_ENGINES.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "engine thread still running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = UcxTransport::default().scheme();
    }
}
