//! Taskwire: a distributed task runtime in the spirit of dask.distributed, with a Rust core.
//!
//! This facade re-exports the public API: the [`Client`] that submits task graphs, the
//! [`Scheduler`] and [`Worker`] library objects, the cluster managers ([`Cluster`]:
//! [`LocalCluster`], [`SshCluster`], and [`JobQueueCluster`] for Slurm and PBS), of which
//! [`LocalCluster`] starts both in this process. The `taskwire` binary in this crate is the
//! command-line interface (`taskwire scheduler`, `taskwire worker`, `taskwire local`,
//! `taskwire ssh`, `taskwire jobqueue`, `taskwire submit`, `taskwire bench ...`).
//!
//! ```
//! use taskwire::{LocalCluster, Task};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let cluster = LocalCluster::builder().workers(2).start().await?;
//! let client = cluster.client().await?;
//! let a = client.submit(Task::function("inc-1", "inc").arg_i64(1)).await?;
//! let b = client.submit(Task::function("inc-2", "inc").arg_i64(10)).await?;
//! let total = client.submit(Task::function("add-1", "add").dep(&a).dep(&b)).await?;
//! assert_eq!(total.result_i64().await?, 13);
//! client.close().await;
//! cluster.close().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod adaptive;
mod cluster;
mod jobqueue;
mod local;
mod local_cuda;
mod scheduler_file;
mod ssh;

pub use adaptive::{AdaptOptions, Adaptive};
pub use cluster::{Cluster, ClusterError};
pub use jobqueue::{BatchSystem, Job, JobQueueBuilder, JobQueueCluster, JobState};
pub use local::{LocalCluster, LocalClusterBuilder, LocalClusterError, LocalTransport};
pub use local_cuda::{LocalCudaCluster, LocalCudaClusterBuilder, LocalCudaClusterError};
pub use scheduler_file::{SchedulerFile, read_scheduler_file};
pub use ssh::{SshCluster, SshClusterBuilder};
pub use taskwire_client::*;
pub use taskwire_cuda_worker as cuda;
pub use taskwire_protocol as protocol;
pub use taskwire_scheduler::{Scheduler, SchedulerBuilder, SchedulerError, SchedulerHandle};
pub use taskwire_scheduler_core::CoreConfig;
pub use taskwire_transport as transport;
pub use taskwire_transport_tcp as transport_tcp;
pub use taskwire_worker::{
    Registry as Functions, TaskContext, TaskResult, Worker, WorkerBuilder, WorkerError,
    WorkerHandle, decode_i64, encode_i64,
};
