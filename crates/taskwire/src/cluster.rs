//! Cluster managers: one interface over the ways a cluster comes to life ([`LocalCluster`] in
//! this process, [`SshCluster`](crate::SshCluster) over SSH,
//! [`JobQueueCluster`](crate::JobQueueCluster) as Slurm or PBS jobs), in the spirit of Dask's
//! `SpecCluster`. A manager starts a scheduler, starts and stops workers on its platform, and
//! hands out clients.
//!
//! Scaling is by worker count. Scaling down goes through the scheduler
//! ([`Client::retire_workers`]): the workers leaving hand the results only they hold to the
//! workers that stay, so nothing is recomputed.
//!
//! Adaptive scaling ([`Cluster::adapt`], Dask's `adapt(minimum, maximum)`) comes with the
//! trait: a loop asks the scheduler for a target ([`Client::adaptive_target`]), scales up with
//! [`Cluster::scale`], and scales down by retiring the workers the scheduler names
//! ([`Client::retire_workers`]) and then [`Cluster::stop_workers`]. A manager gets it by
//! implementing those two operations; see [`Adaptive`].
//!
//! [`LocalCluster`]: crate::LocalCluster

use crate::adaptive::{AdaptOptions, Adaptive};
use std::future::Future;
use taskwire_client::{Client, ClientError};

/// Why a cluster manager could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Something failed on one host (ssh refused, the binary is missing, a process died); the
    /// message includes what the remote side said.
    #[error("{host}: {message}")]
    Host {
        /// The host, as given to the manager.
        host: String,
        /// What went wrong, with ssh's or the process's stderr.
        message: String,
    },
    /// Talking to the scheduler failed (connecting, retiring workers).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local scheduler or worker did not start.
    #[error(transparent)]
    Local(#[from] crate::LocalClusterError),
    /// A batch system's command failed or refused a job (`sbatch`, `qsub`, `squeue`, ...);
    /// the message quotes what it said.
    #[error("{command}: {message}")]
    Batch {
        /// The command, e.g. `sbatch`.
        command: String,
        /// What went wrong, with the command's stderr.
        message: String,
    },
    /// The platform cannot reach the requested size.
    #[error("cannot scale to {requested} workers: {reason}")]
    Scale {
        /// The worker count asked for.
        requested: usize,
        /// Why not.
        reason: String,
    },
}

/// A cluster manager (Dask's `SpecCluster`): it started a scheduler and manages a set of
/// workers on some platform.
pub trait Cluster {
    /// The address clients and workers use to reach the scheduler.
    fn scheduler_address(&self) -> String;

    /// The scheduler's dashboard, if it serves one.
    fn dashboard_link(&self) -> Option<String>;

    /// The names of the workers this manager runs now or has asked its platform for (a batch
    /// job still queued counts), as the scheduler knows them or will.
    fn workers(&self) -> Vec<String>;

    /// Start workers or retire them gracefully until this manager runs `n` of them (rounded up
    /// to the platform's unit, e.g. a whole `--nworkers` group on a host). Resolves once the
    /// new workers are registered, or the retired ones are gone; a batch-system manager
    /// resolves once its jobs are submitted (a job may wait in the queue for hours).
    fn scale(&mut self, n: usize) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Stop the named workers and forget them (Dask's `scale_down`): each was just retired
    /// through the scheduler (its results moved, it closed or is closing) or never
    /// registered. Wait until their processes are gone, or cancel their jobs, and free what
    /// ran them (a host slot, a job) once all of its workers are stopped. Names this manager
    /// does not run are ignored. Adaptive scaling calls this after
    /// [`Client::retire_workers`].
    fn stop_workers(
        &mut self,
        names: &[String],
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Bring the manager's account of its workers up to date before an adaptive decision;
    /// `registered` are the names the scheduler has registered now. Nothing by default: a
    /// manager that starts its workers itself knows them. A batch-system manager learns
    /// here which jobs ended by themselves (so they are replaced) and which jobs' workers
    /// registered (a job that ends before its worker ever did is a failure, and it stops
    /// submitting after a few in a row rather than resubmit a broken job forever).
    fn observe_workers(
        &mut self,
        registered: &[String],
    ) -> impl Future<Output = Result<(), ClusterError>> + Send {
        let _ = registered;
        async { Ok(()) }
    }

    /// A client connected to the scheduler.
    fn client(&self) -> impl Future<Output = Result<Client, ClusterError>> + Send;

    /// Stop every worker, then the scheduler, and everything else this manager started.
    fn close(self) -> impl Future<Output = Result<(), ClusterError>> + Send
    where
        Self: Sized;

    /// Scale adaptively between `minimum` and `maximum` workers with Dask's defaults (a
    /// decision a second, a 5 s target duration, a worker retired after being suggested 3
    /// times in a row). The cluster moves into the returned [`Adaptive`], which runs the loop
    /// on the current tokio runtime until it is stopped or closed. Refused when `minimum`
    /// is above `maximum`.
    fn adapt(self, minimum: usize, maximum: usize) -> Result<Adaptive<Self>, ClusterError>
    where
        Self: Sized + Send + Sync + 'static,
    {
        Adaptive::start(self, AdaptOptions::new(minimum, maximum))
    }

    /// [`adapt`](Self::adapt) with all the options.
    fn adapt_with(self, options: AdaptOptions) -> Result<Adaptive<Self>, ClusterError>
    where
        Self: Sized + Send + Sync + 'static,
    {
        Adaptive::start(self, options)
    }
}
