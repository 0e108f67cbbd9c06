//! The Taskwire worker: runs tasks the scheduler assigns and holds their results.
//!
//! Task execution is built from three parts:
//!
//! - a [`Registry`] of named Rust functions, `f(&TaskContext, args, inputs) -> TaskResult`; the
//!   stock worker ships [`Registry::stock`], and users build their own worker binary with their
//!   functions registered (Dask's "environments must match" rule, as a binary);
//! - [`run_command`] for command tasks: argv, env, cwd and stdin in; exit status, stdout and
//!   stderr out, as an encoded `CommandOutputMsg`; a nonzero exit is a task error carrying the
//!   tail of stderr;
//! - an [`Executor`]: `nthreads` OS threads that take [`Job`]s in submission order and send a
//!   [`JobOutcome`] for each. A panicking function becomes an error of kind `Panicked` and the
//!   thread keeps going.
//!
//! # Stock functions
//!
//! A number is an `i64` as 8 little-endian bytes ([`encode_i64`], [`decode_i64`]); counts and
//! durations in args are `u64` as 8 little-endian bytes.
//!
//! - `noop`: returns nothing.
//! - `sleep`: args u64 milliseconds; sleeps, returns nothing.
//! - `inc`: x + 1, where x is the first input, or args when there is no input.
//! - `add`, `sum`: the sum of all inputs, plus args when args are non-empty.
//! - `make-bytes`: args u64 n; n bytes where byte `i` is `i % 251` ([`pattern_bytes`]).
//! - `len`: the byte length of the first input (of args without inputs), as a number.
//! - `fail`: fails with args (utf-8) as its message.
//! - `panic`: panics with args as its message; tests that the worker survives.
//! - `identity`: the first input, or args when there is no input.
//! - `checksum`: 64-bit FNV-1a ([`fnv1a64`]) of the inputs concatenated (of args without inputs),
//!   as u64 little-endian; lets tests check transferred data.
//! - `alloc`: args u64 n, optionally followed by u64 milliseconds; allocates n bytes, touches
//!   every page so they count in the worker's RSS, holds them that long, and returns n as a
//!   number. Tests use it to push a worker over its memory limit.
//!
//! Overflow and malformed numbers are task errors with messages such as
//! `inc: expected 8-byte i64, got 3 bytes`.
//!
//! The [nanny](Nanny) runs each worker as a child process and restarts it when it dies, goes
//! over its memory limit, loses the scheduler or reaches its lifetime.
//!
//! A worker counts the bytes it fetches from other workers and serves from its data port, and
//! reports them with its heartbeats; [`WorkerBuilder::metrics_port`] also serves them, with its
//! memory and tasks run, as Prometheus text on a small HTTP port of its own.
//!
//! ```
//! use taskwire_protocol::{TaskId, TaskKindMsg};
//! use taskwire_worker::{Executor, Job, Registry, decode_i64, encode_i64};
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let executor = Executor::start(2, Registry::stock(), "w1".into(), std::env::temp_dir(), tx);
//! executor.submit(Job {
//!     task: TaskId(1),
//!     key: "inc-1".into(),
//!     kind: TaskKindMsg::Function { name: "inc".into(), args: vec![] },
//!     inputs: vec![encode_i64(41)],
//! });
//! let outcome = rx.blocking_recv().unwrap();
//! assert_eq!(decode_i64(&outcome.result.unwrap()).unwrap(), 42);
//! executor.shutdown();
//! ```

mod command;
mod executor;
mod functions;
mod memory;
mod metrics;
mod nanny;
mod peer;
mod registry;
mod store;
mod worker;

pub use command::run_command;
pub use executor::{Executor, Job, JobOutcome};
pub use functions::{decode_i64, encode_i64, fnv1a64, pattern_bytes};
pub use memory::{MemoryConfig, MemoryRelease, MemorySource, PAUSE_HYSTERESIS};
pub use nanny::{
    ChildOptions, ChildState, ChildStatus, EXIT_DEATH_TIMEOUT, EXIT_LOST_SCHEDULER, Nanny,
    NannyBuilder, NannyError, NannyHandle, NannyOutcome, RestartPolicy, THREAD_LIMIT_ENV, rss_of,
    staggered_lifetime, status_json,
};
pub use registry::{Registry, TaskContext, TaskFn, TaskResult};
pub use worker::{
    GpuMemoryProbe, StopReason, Worker, WorkerBuilder, WorkerError, WorkerHandle, available_cpus,
    machine_memory, process_rss,
};
