//! Taskwire's scheduler core: the scheduler as a pure state machine.
//!
//! [`Core`] owns every task, worker and client record. It takes decoded messages and
//! connection changes in as [`Event`]s, and hands out the messages to send as [`Command`]s.
//! It does no I/O, reads no clock (time is always an argument) and has no randomness: the
//! scheduler process (`taskwire-scheduler`) is a thin shell that decodes, feeds the core,
//! and sends what it says, and tests drive the very same code with a virtual clock.
//!
//! It deliberately does **not** know about sockets, tokio, heartbeat timeouts (the shell turns a
//! silent worker into [`Event::WorkerLeft`]) or the dashboard (it reads [`Core::counts`],
//! [`Core::workers`] and [`Core::story`]).
//!
//! # Semantics
//!
//! Tasks move through Dask's states ([`TaskState`]): `released`, `waiting`, `no-worker`,
//! `queued`, `processing`, `memory`, `erred`, `forgotten`. Each state change is one small
//! transition function chosen by a `match (from, to)`, driven by a recommendations loop as in
//! Dask; an impossible pair is reported with the [`StimulusId`] of the event that caused it
//! (a debug assertion, and an error from [`Core::check_invariants`]). The last
//! [`CoreConfig::transition_log_len`] transitions are kept for [`Core::story`].
//!
//! Placement follows Dask: the worker holding most input bytes, else the least occupied one
//! (occupancy from per-prefix duration averages), within `workers` restrictions and available
//! `resources`; root tasks queue while every worker is saturated
//! ([`CoreConfig::worker_saturation`]); idle workers steal from backlogged ones on a timer.
//! Lost results are recomputed from lineage; a task on more than
//! [`CoreConfig::allowed_failures`] dead workers errs with `KilledWorker`. For adaptive
//! scaling the core recommends a worker count ([`Core::adaptive_target`]) and the workers to
//! retire ([`Core::workers_to_close`]); starting and stopping workers is a cluster manager's
//! job.
//!
//! # Calling order
//!
//! 1. For every input, call [`Core::handle_event`] (with the current time).
//! 2. Then drain [`Core::poll_command`] until it returns `None` and send each command. All
//!    `Compute` for one worker made by one event come as one `ToWorker::Compute` batch (the
//!    same for `Free` and for a client's `KeysInMemory` / `KeysErred`).
//! 3. Re-read [`Core::poll_timeout`]; when that instant passes, call [`Core::handle_timeout`]
//!    and go to 2. `None` means no timer is needed.
//!
//! ```
//! use std::time::Instant;
//! use taskwire_protocol::{
//!     ClientId, RegisterWorkerMsg, TaskFinishedMsg, TaskKindMsg, TaskSpecMsg, ToClient, ToWorker,
//!     WorkerId,
//! };
//! use taskwire_scheduler_core::{Command, Core, CoreConfig, Event};
//!
//! let mut core = Core::new(CoreConfig::default());
//! let now = Instant::now();
//! let (client, worker) = (ClientId(1), WorkerId(1));
//!
//! // A worker registers; the core answers `Registered`.
//! let info = RegisterWorkerMsg {
//!     name: "w1".into(),
//!     address: "tcp://10.0.0.1:9000".into(),
//!     nthreads: 1,
//!     memory_limit: 0,
//!     resources: vec![],
//!     pid: 42,
//!     restarts: 0,
//! };
//! core.handle_event(now, Event::WorkerJoined { worker, info });
//! assert!(matches!(
//!     core.poll_command(),
//!     Some(Command::ToWorker(w, ToWorker::Registered { .. })) if w == worker
//! ));
//!
//! // A client submits `double-0 = f(load-0)` and wants `double-0`.
//! let task = |key: &str, deps: &[&str]| TaskSpecMsg {
//!     key: key.into(),
//!     deps: deps.iter().map(|d| d.to_string()).collect(),
//!     kind: TaskKindMsg::Function { name: key.into(), args: vec![] },
//!     resources: vec![],
//!     workers: vec![],
//!     priority: 0,
//!     retries: 0,
//! };
//! core.handle_event(now, Event::UpdateGraph {
//!     client,
//!     submit_id: 1,
//!     tasks: vec![task("load-0", &[]), task("double-0", &["load-0"])],
//!     wanted: vec!["double-0".into()],
//! });
//! let mut out: Vec<Command> = std::iter::from_fn(|| core.poll_command()).collect();
//! assert_eq!(out[0], Command::ToClient(client, ToClient::GraphAccepted { submit_id: 1 }));
//! let Command::ToWorker(_, ToWorker::Compute(batch)) = out.remove(1) else { panic!() };
//! assert_eq!(batch[0].key, "load-0");
//!
//! // The worker reports it done; the core sends the dependent.
//! let done = |t| {
//!     let f = TaskFinishedMsg { task: t, nbytes: 8, duration_us: 100, started_us: 0, thread: 0,
//!                               inline: None };
//!     vec![f]
//! };
//! core.handle_event(now, Event::TasksFinished { worker, tasks: done(batch[0].task) });
//! let Some(Command::ToWorker(_, ToWorker::Compute(batch))) = core.poll_command() else { panic!() };
//! assert_eq!(batch[0].key, "double-0");
//! assert!(batch[0].deps[0].holders.is_empty(), "the input is on the same worker");
//!
//! // When it is done, the input is freed and the client hears where the result is.
//! core.handle_event(now, Event::TasksFinished { worker, tasks: done(batch[0].task) });
//! let out: Vec<Command> = std::iter::from_fn(|| core.poll_command()).collect();
//! assert!(matches!(&out[0], Command::ToWorker(_, ToWorker::Free(_))));
//! let Command::ToClient(_, ToClient::KeysInMemory(keys)) = &out[1] else { panic!() };
//! assert_eq!(keys[0].key, "double-0");
//! assert_eq!(keys[0].worker, "tcp://10.0.0.1:9000");
//!
//! // Releasing the key frees the result and leaves nothing behind.
//! core.handle_event(now, Event::ReleaseKeys { client, keys: vec!["double-0".into()] });
//! assert!(matches!(core.poll_command(), Some(Command::ToWorker(_, ToWorker::Free(_)))));
//! assert_eq!(core.counts().total(), 0);
//! assert_eq!(core.story("double-0").last().unwrap().to_string(),
//!            "double-0: released -> forgotten (release-keys-5)");
//! core.check_invariants().unwrap();
//! ```

mod adaptive;
mod config;
mod core;
mod event;
mod graph;
mod heap;
mod invariants;
mod lifecycle;
mod placement;
mod placement_cost;
mod root_queue;
mod small;
mod state;
mod stealing;
mod task;
mod transitions;
mod worker;

pub use crate::config::{CoreConfig, DEFAULT_MAX_CLIENT_TASKS};
pub use crate::core::{Core, MAX_TASK_RUNS};
pub use crate::event::{Command, Event};
pub use crate::lifecycle::RecoveryCounts;
pub use crate::state::{GroupInfo, StateCounts, StimulusId, TaskRun, TaskState, TransitionRecord};
pub use crate::task::key_prefix as key_group;
