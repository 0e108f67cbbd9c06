//! Adaptive scaling, the manager's half (Dask's `Adaptive`): a loop that asks the scheduler
//! how many workers the work calls for and brings any [`Cluster`] there.
//!
//! Every `interval` it asks for the scheduler's recommendation ([`Client::adaptive_target`],
//! clamped to `minimum..=maximum`). Above the workers the manager runs it scales up at once
//! ([`Cluster::scale`]). Below, it takes the workers the scheduler suggests closing (workers
//! the manager asked for that never registered first), and closes one only once it was
//! suggested `wait_count` times in a row: a short lull between two bursts does not cost a
//! worker. Closing is graceful: [`Client::retire_workers`] moves the results only that worker
//! holds to the others, then [`Cluster::stop_workers`] lets the manager stop the process or
//! cancel the job. Nothing is recomputed.

use crate::cluster::{Cluster, ClusterError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use taskwire_client::Client;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// Options of adaptive scaling, with Dask's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptOptions {
    minimum: usize,
    maximum: usize,
    interval: Duration,
    target_duration: Duration,
    wait_count: u32,
}

impl AdaptOptions {
    /// Between `minimum` and `maximum` workers; a decision every second, a 5 s target
    /// duration, a worker closed after being suggested 3 times in a row.
    pub fn new(minimum: usize, maximum: usize) -> AdaptOptions {
        AdaptOptions {
            minimum,
            maximum,
            interval: Duration::from_secs(1),
            target_duration: Duration::from_secs(5),
            wait_count: 3,
        }
    }

    /// How often to decide (Dask: `interval`, 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The queued and running work should finish in about this long with the workers the
    /// scheduler recommends (Dask: `target_duration`, 5 s). Shorter asks for more workers.
    pub fn target_duration(mut self, d: Duration) -> Self {
        self.target_duration = d;
        self
    }

    /// Consecutive decisions that must suggest closing a worker before it is closed (Dask:
    /// `wait_count`, 3).
    pub fn wait_count(mut self, n: u32) -> Self {
        self.wait_count = n.max(1);
        self
    }

    /// The fewest workers.
    pub fn minimum(&self) -> usize {
        self.minimum
    }

    /// The most workers.
    pub fn maximum(&self) -> usize {
        self.maximum
    }
}

/// A cluster scaling itself (see [`Cluster::adapt`]). The loop runs in a tokio task and holds
/// the cluster between decisions; [`stop`](Self::stop) gives the cluster back,
/// [`close`](Self::close) closes it.
#[derive(Debug)]
pub struct Adaptive<C> {
    cluster: Arc<Mutex<C>>,
    address: String,
    dashboard: Option<String>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl<C: Cluster + Send + Sync + 'static> Adaptive<C> {
    /// Start adapting `cluster` (on the current tokio runtime).
    pub(crate) fn start(cluster: C, options: AdaptOptions) -> Result<Adaptive<C>, ClusterError> {
        if options.minimum > options.maximum {
            return Err(ClusterError::Scale {
                requested: options.minimum,
                reason: format!(
                    "adaptive minimum {} is above the maximum {}",
                    options.minimum, options.maximum
                ),
            });
        }
        let address = cluster.scheduler_address();
        let dashboard = cluster.dashboard_link();
        let cluster = Arc::new(Mutex::new(cluster));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(cluster.clone(), options, stopped));
        Ok(Adaptive {
            cluster,
            address,
            dashboard,
            stop,
            task,
        })
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> &str {
        &self.address
    }

    /// The scheduler's dashboard, if it serves one.
    pub fn dashboard_link(&self) -> Option<&str> {
        self.dashboard.as_deref()
    }

    /// The workers the cluster runs now (waits for a scaling step in progress to end).
    pub async fn workers(&self) -> Vec<String> {
        self.cluster.lock().await.workers()
    }

    /// Look at the cluster between two decisions (e.g. a batch manager's jobs).
    pub async fn inspect<R>(&self, f: impl FnOnce(&C) -> R) -> R {
        f(&*self.cluster.lock().await)
    }

    /// A client connected to the scheduler.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        self.cluster.lock().await.client().await
    }

    /// Stop adapting (after the step in progress) and give the cluster back as it is.
    pub async fn stop(self) -> C {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        match Arc::try_unwrap(self.cluster) {
            Ok(m) => m.into_inner(),
            Err(_) => unreachable!("the adaptive loop has ended and dropped its handle"),
        }
    }

    /// Stop adapting, then close the cluster.
    pub async fn close(self) -> Result<(), ClusterError> {
        self.stop().await.close().await
    }
}

/// The decision loop.
async fn run<C: Cluster + Send + Sync>(
    cluster: Arc<Mutex<C>>,
    options: AdaptOptions,
    mut stopped: watch::Receiver<bool>,
) {
    let mut state = Decisions::default();
    let mut client: Option<Client> = None;
    // The same failure every decision (a retirement the scheduler refuses, a pool that cannot
    // grow) is logged once, until something else happens.
    let mut last_error = String::new();
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            _ = ticker.tick() => {}
        }
        let mut c = cluster.lock().await;
        if client.is_none() {
            match c.client().await {
                Ok(cl) => client = Some(cl),
                Err(e) => {
                    tracing::warn!("adaptive: cannot reach the scheduler: {e}");
                    continue;
                }
            }
        }
        let cl = client.as_ref().expect("connected");
        match step(&mut *c, cl, &options, &mut state).await {
            Ok(true) => last_error.clear(),
            Ok(false) => {}
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!("adaptive: {text}");
                    last_error = text;
                }
                if matches!(
                    e,
                    ClusterError::Client(taskwire_client::ClientError::Closed)
                ) {
                    client = None;
                }
            }
        }
    }
    if let Some(cl) = client {
        cl.close().await;
    }
}

/// What the loop remembers between decisions.
#[derive(Debug, Default)]
struct Decisions {
    /// Workers suggested for closing, with how many decisions in a row suggested them.
    close_counts: BTreeMap<String, u32>,
}

/// One decision: ask, then scale up, or count suggestions and close the workers suggested
/// often enough. Whether the cluster changed.
async fn step<C: Cluster>(
    cluster: &mut C,
    client: &Client,
    options: &AdaptOptions,
    state: &mut Decisions,
) -> Result<bool, ClusterError> {
    let rec = client
        .adaptive_target(options.target_duration, options.minimum, options.maximum)
        .await?;
    let target = rec.target as usize;
    cluster.observe_workers(&rec.workers).await?;
    let plan = cluster.workers();
    let down = plan_down(&plan, target, &rec.workers, &rec.to_close);
    let firm = state.count(&down, options.wait_count);
    if target > plan.len() {
        tracing::info!(
            "adaptive: scaling up from {} to {target} workers",
            plan.len()
        );
        return cluster.scale(target).await.map(|()| true);
    }
    if firm.is_empty() {
        return Ok(false);
    }
    let observed: BTreeSet<&str> = rec.workers.iter().map(String::as_str).collect();
    let registered: Vec<&str> = firm
        .iter()
        .map(String::as_str)
        .filter(|n| observed.contains(n))
        .collect();
    tracing::info!(
        "adaptive: scaling down from {} to {} workers: closing {}",
        plan.len(),
        plan.len() - firm.len(),
        firm.join(", ")
    );
    if !registered.is_empty() {
        client.retire_workers(&registered).await?;
    }
    cluster.stop_workers(&firm).await.map(|()| true)
}

/// Which of the manager's workers (`plan`) to close to get down to `target` (none when it is
/// not below): those the scheduler has not seen (`observed`) first, e.g. a queued job, then
/// those it suggests (`suggested`, cheapest first).
fn plan_down(
    plan: &[String],
    target: usize,
    observed: &[String],
    suggested: &[String],
) -> Vec<String> {
    let excess = plan.len().saturating_sub(target);
    let observed: BTreeSet<&str> = observed.iter().map(String::as_str).collect();
    let planned: BTreeSet<&str> = plan.iter().map(String::as_str).collect();
    plan.iter()
        .filter(|n| !observed.contains(n.as_str()))
        .chain(suggested.iter().filter(|n| planned.contains(n.as_str())))
        .take(excess)
        .cloned()
        .collect()
}

impl Decisions {
    /// Count one more suggestion for each of `suggested`, forget the workers no longer
    /// suggested, and return (and forget) those suggested `wait_count` times in a row.
    fn count(&mut self, suggested: &[String], wait_count: u32) -> Vec<String> {
        self.close_counts
            .retain(|name, _| suggested.iter().any(|s| s == name));
        let mut firm = Vec::new();
        for name in suggested {
            let n = self.close_counts.entry(name.clone()).or_insert(0);
            *n += 1;
            if *n >= wait_count {
                firm.push(name.clone());
            }
        }
        for name in &firm {
            self.close_counts.remove(name);
        }
        firm
    }
}

#[cfg(test)]
mod tests {
    use super::{Decisions, plan_down};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_worker_closes_only_after_three_suggestions_in_a_row() {
        let mut d = Decisions::default();
        assert!(d.count(&s(&["a", "b"]), 3).is_empty());
        assert!(d.count(&s(&["a", "b"]), 3).is_empty());
        // b is needed again for one decision: its count starts over.
        assert_eq!(d.count(&s(&["a"]), 3), ["a"]);
        assert!(d.count(&s(&["b"]), 3).is_empty());
        assert!(d.count(&s(&["b"]), 3).is_empty());
        assert_eq!(d.count(&s(&["b"]), 3), ["b"]);
        // Nothing suggested: everything is forgotten.
        d.count(&s(&["c"]), 3);
        d.count(&s(&[]), 3);
        assert!(d.count(&s(&["c"]), 3).is_empty());
        assert_eq!(d.count(&s(&["x"]), 1), ["x"]);
    }

    #[test]
    fn unregistered_workers_go_first_then_the_schedulers_suggestions() {
        let plan = s(&["w0", "w1", "w2", "job-3"]);
        let observed = s(&["w0", "w1", "w2"]);
        // job-3 never registered; the scheduler suggests w2 then w1.
        assert_eq!(
            plan_down(&plan, 2, &observed, &s(&["w2", "w1"])),
            ["job-3", "w2"]
        );
        assert_eq!(
            plan_down(&plan, 1, &observed, &s(&["w2", "w1"])),
            ["job-3", "w2", "w1"]
        );
        // Not below the plan: nothing; a suggestion the manager does not run is ignored.
        assert!(plan_down(&plan, 4, &observed, &s(&["w2"])).is_empty());
        assert_eq!(plan_down(&plan, 3, &plan, &s(&["zz", "w1"])), ["w1"]);
    }
}
