//! The Taskwire client: submit task graphs to a scheduler, wait for results and fetch them
//! from the workers that hold them.
//!
//! A [`Client`] holds one connection to the scheduler, owned by background tokio tasks, and a
//! pool of connections to workers' data ports. Work is described with the [`Task`] builder
//! (a function from the workers' registry, or an external command) and submitted alone
//! ([`Client::submit`]) or as a graph ([`Client::submit_graph`], [`Client::map`]). Each key
//! gets a [`Future`]: wait on it, ask its [`Status`], or fetch its result, which comes straight
//! from the worker, never through the scheduler. When the last future of a key is dropped the
//! client releases the key so the cluster can forget it, as Dask does.
//!
//! It deliberately does not run tasks, cache results, or retry failed tasks itself (the
//! scheduler does retries, see [`Task::retries`]). Values are bytes; the stock worker functions
//! exchange numbers as 8 little-endian bytes ([`Future::result_i64`]).
//!
//! # Example
//!
//! A scheduler and a worker started in this process (the stock worker functions `inc`, `add`
//! and `fail`), and a client that uses them:
//!
//! ```
//! use taskwire_client::{Address, Client, ClientError, Task};
//! use taskwire_scheduler::Scheduler;
//! use taskwire_worker::Worker;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let scheduler = Scheduler::builder()
//!     .address(Address::inproc("doc-scheduler"))
//!     .start()
//!     .await
//!     .unwrap();
//! let worker = Worker::builder(scheduler.address().clone())
//!     .nthreads(2)
//!     .start()
//!     .await
//!     .unwrap();
//! // `Client::connect("tcp://host:8786")` for a scheduler elsewhere.
//! let client = Client::connect(&scheduler.address().to_string()).await?;
//!
//! // inc(41), then add(inc(41), 100): a chain.
//! let x = client.submit(Task::function("inc-0", "inc").arg_i64(41)).await?;
//! let y = client
//!     .submit(Task::function("add-0", "add").arg_i64(100).dep(&x))
//!     .await?;
//! assert_eq!(y.result_i64().await?, 142);
//!
//! // Many calls at once, gathered concurrently.
//! let futures = client
//!     .map("inc", (0..10i64).map(|i| i.to_le_bytes().to_vec()))
//!     .await?;
//! let values = client.gather(&futures).await?;
//! assert_eq!(values.len(), 10);
//!
//! // A failing task reports its error when its result is asked for.
//! let bad = client
//!     .submit(Task::function("fail-0", "fail").args(b"boom".to_vec()))
//!     .await?;
//! let err = bad.result().await.unwrap_err();
//! assert_eq!(err.to_string(), "task 'fail-0' failed: boom");
//!
//! // Data from here, used as an input.
//! let data = client
//!     .scatter(vec![("ten".into(), 10i64.to_le_bytes().to_vec().into())])
//!     .await?;
//! let z = client.submit(Task::function("inc-1", "inc").dep(&data[0])).await?;
//! assert_eq!(z.result_i64().await?, 11);
//!
//! client.close().await;
//! worker.close().await;
//! scheduler.close().await;
//! # Ok::<(), ClientError>(())
//! # }).unwrap();
//! ```

mod client;
mod error;
mod future;
mod peer;
mod state;
mod task;

pub use client::{Client, ClientBuilder};
pub use error::ClientError;
pub use future::{AsCompleted, Future, Status};
pub use task::Task;
// Types that appear in this crate's API, so users need not depend on the protocol and
// transport crates for them.
pub use taskwire_protocol::{
    AdaptiveTargetMsg, ClusterSecret, CommandOutputMsg, ErrorKindMsg, TaskErrorMsg, WorkerInfoMsg,
};
pub use taskwire_transport::{Address, Registry};
pub use taskwire_transport_tcp::{Security, TlsConfig, TlsError, TlsFiles};
