//! Tunables of the scheduler core, with Dask's defaults.

use std::time::Duration;

/// Default for [`CoreConfig::max_client_tasks`]: twice the largest graph one submission may
/// carry by default, so one client can have a full-size graph running and submit the next.
pub const DEFAULT_MAX_CLIENT_TASKS: usize = 20_000_000;

/// Scheduler core settings. `Default` gives Dask's values.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreConfig {
    /// Root tasks sent to a worker at most `ceil(worker_saturation * nthreads)` at a time; the
    /// rest wait in `queued`. `f64::INFINITY` disables queuing. Dask: `worker-saturation: 1.1`.
    /// Unlike Dask, once the tasks at the head of the queue have measured durations and
    /// result sizes, a worker thread may also hold up to 20 ms of their work (and 64 MiB of
    /// their results), so that tiny tasks do not each wait for a scheduler round trip.
    pub worker_saturation: f64,
    /// A task may be running on this many workers that died; one more and it errs with
    /// `KilledWorker`. Dask: `allowed-failures: 3`.
    pub allowed_failures: u32,
    /// How often work stealing looks for idle workers.
    pub steal_interval: Duration,
    /// How many transitions the log keeps for [`Core::story`](crate::Core::story).
    pub transition_log_len: usize,
    /// Whether idle workers steal queued-up tasks from busy ones.
    pub work_stealing: bool,
    /// A worker not heard from for this long is removed (and a worker that has not heard
    /// from the scheduler for this long gives up on it). The core only tells workers; the
    /// shell enforces it. Dask: `worker-ttl: 5 minutes`.
    pub worker_ttl: Duration,
    /// Most tasks one client may hold in the scheduler at once, over all its submissions
    /// (graphs and scattered keys); a submission that would take it over is rejected whole.
    /// A task counts for the client that submitted it until the scheduler forgets it.
    pub max_client_tasks: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            worker_saturation: 1.1,
            allowed_failures: 3,
            steal_interval: Duration::from_millis(100),
            transition_log_len: 100_000,
            work_stealing: true,
            worker_ttl: Duration::from_secs(30),
            max_client_tasks: DEFAULT_MAX_CLIENT_TASKS,
        }
    }
}
