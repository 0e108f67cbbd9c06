//! The worker's own metrics: counters the data plane and the event loop keep, and a small
//! HTTP port (`taskwire worker --dashboard-port`) serving them as Prometheus text at
//! `/metrics`, with `/health` for liveness checks. The HTTP server is
//! `taskwire_transport_tcp::http`, the one the scheduler's dashboard uses.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use taskwire_protocol::WorkerMetricsMsg;
use taskwire_transport_tcp::http::{self, prometheus_label, respond};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Counts kept as the worker runs (all since it started).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Bytes of values fetched from other workers.
    pub(crate) fetched_bytes: AtomicU64,
    /// Values fetched from other workers.
    pub(crate) fetched_values: AtomicU64,
    /// Bytes of values served from the data port (to workers and clients).
    pub(crate) served_bytes: AtomicU64,
    /// Values served from the data port.
    pub(crate) served_values: AtomicU64,
    /// Tasks that ran to a result.
    pub(crate) tasks_finished: AtomicU64,
    /// Tasks that ran and failed.
    pub(crate) tasks_erred: AtomicU64,
}

impl Counters {
    /// Count values moved: `(fetched|served)_bytes` and `_values`.
    pub(crate) fn add(bytes: &AtomicU64, values: &AtomicU64, sizes: impl Iterator<Item = usize>) {
        let (mut b, mut n) = (0u64, 0u64);
        for s in sizes {
            b += s as u64;
            n += 1;
        }
        bytes.fetch_add(b, Ordering::Relaxed);
        values.fetch_add(n, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What the metrics port reports besides the counters.
pub(crate) struct Shown {
    pub(crate) name: String,
    pub(crate) nthreads: usize,
    pub(crate) memory_limit: u64,
    /// The worker's latest heartbeat (memory, spilled, executing, paused, GPU).
    pub(crate) heartbeat: watch::Receiver<WorkerMetricsMsg>,
    pub(crate) counters: Arc<Counters>,
}

/// Serve `/metrics` and `/health` until `stop`; with a `credential`, `/metrics` needs it.
pub(crate) async fn serve(
    listener: TcpListener,
    shown: Shown,
    stop: watch::Receiver<bool>,
    credential: Option<String>,
) {
    let options = http::Options {
        credential,
        open: vec!["/health"],
    };
    let shown = Arc::new(shown);
    http::serve(listener, options, stop, move |request, mut tcp| {
        let shown = shown.clone();
        async move {
            match request.path.as_str() {
                "/health" => respond(&mut tcp, 200, "text/plain", b"ok\n").await,
                "/metrics" => {
                    let body = text(&shown);
                    respond(&mut tcp, 200, "text/plain; version=0.0.4", body.as_bytes()).await
                }
                _ => respond(&mut tcp, 404, "text/plain", b"not found\n").await,
            }
        }
    })
    .await;
}

/// The Prometheus text: one family per line of the table below, each with a `worker` label.
fn text(s: &Shown) -> String {
    let m = s.heartbeat.borrow().clone();
    let c = &s.counters;
    let families: [(&str, &str, &str, u64); 16] = [
        (
            "taskwire_worker_threads",
            "gauge",
            "Task threads.",
            s.nthreads as u64,
        ),
        (
            "taskwire_worker_memory_limit_bytes",
            "gauge",
            "Memory limit (0: none).",
            s.memory_limit,
        ),
        (
            "taskwire_worker_managed_bytes",
            "gauge",
            "Bytes of results held in memory.",
            m.managed,
        ),
        (
            "taskwire_worker_spilled_bytes",
            "gauge",
            "Bytes of results spilled to disk.",
            m.spilled,
        ),
        (
            "taskwire_worker_rss_bytes",
            "gauge",
            "Resident memory of the worker process.",
            m.rss,
        ),
        (
            "taskwire_worker_executing",
            "gauge",
            "Tasks running now.",
            u64::from(m.executing),
        ),
        (
            "taskwire_worker_paused",
            "gauge",
            "1 while paused for memory.",
            u64::from(m.paused),
        ),
        (
            "taskwire_worker_gpu_memory_used_bytes",
            "gauge",
            "Memory in use on the worker's GPU (0: none).",
            m.gpu_memory_used,
        ),
        (
            "taskwire_worker_gpu_memory_total_bytes",
            "gauge",
            "Memory of the worker's GPU (0: none).",
            m.gpu_memory_total,
        ),
        (
            "taskwire_worker_tasks_finished_total",
            "counter",
            "Tasks that ran to a result.",
            Counters::get(&c.tasks_finished),
        ),
        (
            "taskwire_worker_tasks_erred_total",
            "counter",
            "Tasks that ran and failed.",
            Counters::get(&c.tasks_erred),
        ),
        (
            "taskwire_worker_fetched_bytes_total",
            "counter",
            "Bytes of task inputs fetched from other workers.",
            Counters::get(&c.fetched_bytes),
        ),
        (
            "taskwire_worker_fetched_values_total",
            "counter",
            "Task inputs fetched from other workers.",
            Counters::get(&c.fetched_values),
        ),
        (
            "taskwire_worker_served_bytes_total",
            "counter",
            "Bytes served from the data port, to other workers and to clients.",
            Counters::get(&c.served_bytes),
        ),
        (
            "taskwire_worker_served_values_total",
            "counter",
            "Values served from the data port.",
            Counters::get(&c.served_values),
        ),
        ("taskwire_worker_up", "gauge", "1: the worker answers.", 1),
    ];
    let worker = prometheus_label(&s.name);
    let mut out = String::with_capacity(4096);
    for (name, kind, help, v) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{worker=\"{worker}\"}} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_every_family_once_with_the_worker_label() {
        let (_tx, heartbeat) = watch::channel(WorkerMetricsMsg {
            spilled: 7,
            executing: 2,
            ..Default::default()
        });
        let counters = Arc::new(Counters::default());
        Counters::add(
            &counters.fetched_bytes,
            &counters.fetched_values,
            [3usize, 4].into_iter(),
        );
        let t = text(&Shown {
            name: "w\"0".into(),
            nthreads: 3,
            memory_limit: 10,
            heartbeat,
            counters,
        });
        assert!(
            t.contains("taskwire_worker_spilled_bytes{worker=\"w\\\"0\"} 7\n"),
            "{t}"
        );
        assert!(t.contains("taskwire_worker_executing{worker=\"w\\\"0\"} 2\n"));
        assert!(t.contains("taskwire_worker_fetched_bytes_total{worker=\"w\\\"0\"} 7\n"));
        assert!(t.contains("taskwire_worker_fetched_values_total{worker=\"w\\\"0\"} 2\n"));
        assert_eq!(t.matches("# TYPE ").count(), 16);
    }
}
