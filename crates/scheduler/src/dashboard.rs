//! The scheduler's HTTP side: a live dashboard page, a JSON API, Prometheus metrics and a
//! liveness check. Everything is served from the snapshots the core thread publishes at a
//! bounded rate (see [`crate::snapshot`]): a request never reaches the core.
//!
//! Routes (GET only):
//! - `/`: the dashboard page (embedded; no asset comes from the network);
//! - `/health`: `ok` (open even when the cluster has a token);
//! - `/metrics`: Prometheus text format;
//! - `/api/v1/totals`, `/api/v1/workers`, `/api/v1/groups`, `/api/v1/durations`: JSON;
//! - `/api/v1/stream`: server-sent events, one `totals` + `workers` + `groups` + `durations`
//!   object per snapshot;
//! - `/api/v1/task-stream?since=SEQ`: the tasks that ran (finished or failed) in the last
//!   minute after number `SEQ` (worker, executor thread, start, end, erred), for the task
//!   stream;
//! - `/api/v1/task/KEY` (JSON) and `/task/KEY` (a page): the task's transitions still in the
//!   core's log, with their stimulus ids. This is the one request that reaches the core thread:
//!   one bounded lookup in its queue, like any event.
//!
//! HTTP itself (limits, hostile input, the cluster-token credential) is
//! `taskwire_transport_tcp::http`, which the workers' metrics ports share.

use crate::core_thread::Input;
use crate::durations::DURATION_BUCKETS_US;
use crate::snapshot::{PUBLISH_INTERVAL, Snapshot, TaskStream};
use crossbeam_channel::Sender;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use taskwire_scheduler_core::TransitionRecord;
use taskwire_transport_tcp::http::{self, Request, prometheus_label as label, respond, stopped};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PAGE: &str = include_str!("dashboard.html");

/// Serve until `stop` turns true; with a `credential`, everything but `/health` needs it.
pub(crate) async fn serve(
    listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stream: TaskStream,
    core: Sender<Input>,
    stop: watch::Receiver<bool>,
    credential: Option<String>,
) {
    let options = http::Options {
        credential,
        open: vec!["/health"],
    };
    let handler_stop = stop.clone();
    http::serve(listener, options, stop, move |request, tcp| {
        handle(
            request,
            tcp,
            snapshots.clone(),
            stream.clone(),
            core.clone(),
            handler_stop.clone(),
        )
    })
    .await;
}

async fn handle(
    request: Request,
    mut stream: TcpStream,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    runs: TaskStream,
    core: Sender<Input>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let path = request.path.as_str();
    let snapshot = snapshots.borrow().clone();
    match path {
        "/" | "/index.html" => {
            respond(
                &mut stream,
                200,
                "text/html; charset=utf-8",
                PAGE.as_bytes(),
            )
            .await
        }
        "/health" => respond(&mut stream, 200, "text/plain", b"ok\n").await,
        "/metrics" => {
            let body = metrics(&snapshot);
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4",
                body.as_bytes(),
            )
            .await
        }
        "/api/v1/totals" => json_response(&mut stream, &totals(&snapshot)).await,
        "/api/v1/workers" => json_response(&mut stream, &workers(&snapshot)).await,
        "/api/v1/groups" => json_response(&mut stream, &groups(&snapshot)).await,
        "/api/v1/durations" => json_response(&mut stream, &durations(&snapshot, false)).await,
        "/api/v1/task-stream" => {
            let since = request
                .query_param("since")
                .map_or(Some(0), |v| v.parse::<u64>().ok());
            let Some(since) = since else {
                return respond(&mut stream, 400, "text/plain", b"since must be a number\n").await;
            };
            let body = task_stream(&runs, since);
            respond(&mut stream, 200, "application/json", body.as_bytes()).await
        }
        "/api/v1/stream" => stream_events(stream, snapshots, stop).await,
        p if p.starts_with("/api/v1/task/") || p.starts_with("/task/") => {
            let raw = p.rsplit_once("/task/").map_or("", |(_, k)| k);
            let Some(key) = percent_decode(raw) else {
                return respond(&mut stream, 400, "text/plain", b"bad key encoding\n").await;
            };
            let Some(story) = story(&core, key.clone()).await else {
                return respond(&mut stream, 503, "text/plain", b"scheduler stopping\n").await;
            };
            if p.starts_with("/api/") {
                json_response(&mut stream, &story_json(&key, &story)).await
            } else {
                let body = story_page(&key, &story);
                respond(
                    &mut stream,
                    200,
                    "text/html; charset=utf-8",
                    body.as_bytes(),
                )
                .await
            }
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n").await,
    }
}

async fn json_response(stream: &mut TcpStream, value: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).expect("JSON values serialize");
    respond(stream, 200, "application/json", &body).await
}

/// Server-sent events: one message per new snapshot, until the client goes or the scheduler
/// stops.
async fn stream_events(
    mut stream: TcpStream,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
              Connection: close\r\n\r\n",
        )
        .await?;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let event = json!({
            "totals": totals(&snapshot),
            "workers": workers(&snapshot),
            "groups": groups(&snapshot),
            "durations": durations(&snapshot, true),
        });
        let line = format!("data: {event}\n\n");
        stream.write_all(line.as_bytes()).await?;
        // At most one event per publish interval, whatever the snapshot rate.
        tokio::time::sleep(PUBLISH_INTERVAL).await;
        let keep_alive = tokio::select! {
            _ = stopped(&mut stop) => return Ok(()),
            changed = snapshots.changed() => match changed {
                Ok(()) => false,
                Err(_) => return Ok(()),
            },
            _ = tokio::time::sleep(Duration::from_secs(15)) => true,
        };
        if keep_alive {
            // A comment line lets a client notice a dead server.
            stream.write_all(b": keep-alive\n\n").await?;
        }
    }
}

fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn totals(s: &Snapshot) -> Value {
    let c = &s.counts;
    let r = &s.recovery;
    json!({
        "taken_ms": millis(s.taken),
        "tasks": {
            "released": c.released, "waiting": c.waiting, "no_worker": c.no_worker,
            "queued": c.queued, "processing": c.processing, "memory": c.memory,
            "erred": c.erred, "total": c.total(),
        },
        "tasks_finished_total": s.finished_total,
        "workers": s.workers.len(),
        "threads": s.workers.iter().map(|w| w.nthreads as u64).sum::<u64>(),
        "clients": s.clients,
        "transfers": {
            "fetched_bytes": s.transfers.fetched_bytes,
            "served_bytes": s.transfers.served_bytes,
        },
        "recovery": {
            "workers_lost": r.workers_lost, "workers_retired": r.workers_retired,
            "tasks_rescheduled": r.tasks_rescheduled, "results_recomputed": r.results_lost,
            "killed_worker_errors": r.killed_worker_errors,
        },
    })
}

pub(crate) fn workers(s: &Snapshot) -> Value {
    Value::Array(
        s.workers
            .iter()
            .map(|w| {
                json!({
                    "id": w.id.0, "name": w.name, "address": w.address, "nthreads": w.nthreads,
                    "memory_limit": w.memory_limit,
                    "resources": w.resources.iter().map(|r| json!({"name": r.name, "amount": r.amount})).collect::<Vec<_>>(),
                    "processing": w.processing, "in_memory": w.in_memory,
                    "executing": w.metrics.executing, "managed_bytes": w.metrics.managed,
                    "spilled_bytes": w.metrics.spilled, "rss_bytes": w.metrics.rss,
                    "paused": w.metrics.paused, "restarts": w.restarts,
                    "gpu_memory_used_bytes": w.metrics.gpu_memory_used,
                    "gpu_memory_total_bytes": w.metrics.gpu_memory_total,
                    "gpu_memory_limit_bytes": w.metrics.gpu_memory_limit,
                    "fetched_bytes": w.metrics.fetched_bytes,
                    "served_bytes": w.metrics.served_bytes,
                    "last_seen_ms": w.last_seen_ms,
                })
            })
            .collect(),
    )
}

/// A group's tasks that have not started: released, waiting, no-worker or queued.
fn not_started(c: &taskwire_scheduler_core::StateCounts) -> usize {
    c.released + c.waiting + c.no_worker + c.queued
}

pub(crate) fn groups(s: &Snapshot) -> Value {
    Value::Array(
        s.groups
            .iter()
            .map(|g| {
                let c = &g.counts;
                json!({
                    "name": g.name,
                    "waiting": not_started(c),
                    "processing": c.processing, "memory": c.memory, "erred": c.erred,
                    "total": c.total(), "duration_us": g.duration_us,
                })
            })
            .collect(),
    )
}

/// Run-time histograms per group: bucket bounds in µs and cumulative counts (the last is
/// every task, as Prometheus' `+Inf`). `live`: only the groups with tasks now (the page's
/// progress table), so that the live stream stays small after many groups came and went.
fn durations(s: &Snapshot, live: bool) -> Value {
    let live_groups: std::collections::HashSet<&str> =
        s.groups.iter().map(|g| g.name.as_str()).collect();
    let shown = |name: &str| !live || live_groups.contains(name);
    json!({
        "le_us": DURATION_BUCKETS_US,
        "unrecorded": s.durations_unrecorded,
        "groups": s.durations.iter().filter(|g| shown(&g.name)).map(|g| json!({
            "name": g.name, "count": g.count, "sum_us": g.sum_us,
            "cumulative": g.buckets.iter().scan(0u64, |acc, n| { *acc += n; Some(*acc) }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The stream's tasks after number `since`, and the last number (for the next request), as
/// JSON. Written directly rather than through `Value`s: at full speed the answer has the
/// window's 16,384 runs, each of which would cost a map of eight allocated entries.
fn task_stream(runs: &TaskStream, since: u64) -> String {
    // Copied out (a few hundred µs at most), so the publisher on the core thread never waits
    // for the JSON to be written.
    let (list, last) = runs.lock().expect("task stream").since(since);
    let mut out = String::with_capacity(32 + list.len() * 150);
    let _ = write!(out, "{{\"seq\":{last},\"runs\":[");
    for (i, (r, start, end)) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"seq\":{},\"key\":{},\"group\":{},\"worker\":{},\"thread\":{},\"erred\":{},\
             \"start_ms\":{},\"end_ms\":{}}}",
            r.seq,
            Value::from(&*r.key),
            Value::from(taskwire_scheduler_core::key_group(&r.key)),
            r.worker,
            r.thread,
            r.erred,
            finite(*start),
            finite(*end),
        );
    }
    out.push_str("]}");
    out
}

/// A number JSON can carry (it has no NaN or infinity).
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// Ask the core thread for a key's story; `None` if it is gone.
async fn story(core: &Sender<Input>, key: String) -> Option<Vec<TransitionRecord>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    core.send(Input::Story(key, tx)).ok()?;
    rx.await.ok()
}

fn story_json(key: &str, story: &[TransitionRecord]) -> Value {
    let now = std::time::Instant::now();
    json!({
        "key": key,
        "transitions": story.iter().map(|r| json!({
            "from": r.from.to_string(), "to": r.to.to_string(),
            "stimulus": r.stimulus.to_string(),
            "ago_ms": now.saturating_duration_since(r.at).as_millis() as u64,
        })).collect::<Vec<_>>(),
    })
}

fn story_page(key: &str, story: &[TransitionRecord]) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let now = std::time::Instant::now();
    let mut rows = String::new();
    for r in story {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3} s ago</td></tr>",
            esc(&r.from.to_string()),
            esc(&r.to.to_string()),
            esc(&r.stimulus.to_string()),
            now.saturating_duration_since(r.at).as_secs_f64()
        );
    }
    if story.is_empty() {
        rows.push_str("<tr><td colspan=4>no transitions of this key in the log</td></tr>");
    }
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{k} - Taskwire</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:24px}}td,th{{padding:4px 10px;\
         text-align:left;border-bottom:1px solid #e5e5ea}}</style></head><body>\
         <p><a href=\"/\">Taskwire</a></p><h1>{k}</h1><table><tr><th>From</th><th>To</th>\
         <th>Stimulus</th><th>When</th></tr>{rows}</table></body></html>",
        k = esc(key)
    )
}

/// Decode `%XX` escapes of a URL path segment; `None` for a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One metric family: its help, its type and its samples (labels as written, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

pub(crate) fn metrics(s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096 + s.workers.len() * 512);
    let one = |v: f64| vec![(String::new(), v)];
    let c = &s.counts;
    let states = [
        ("released", c.released),
        ("waiting", c.waiting),
        ("no-worker", c.no_worker),
        ("queued", c.queued),
        ("processing", c.processing),
        ("memory", c.memory),
        ("erred", c.erred),
    ];
    let by_state: Vec<(String, f64)> = states
        .iter()
        .map(|(st, n)| (format!("{{state=\"{st}\"}}"), *n as f64))
        .collect();
    family(
        &mut out,
        "taskwire_tasks",
        "gauge",
        "Tasks the scheduler holds, by state.",
        &by_state,
    );
    let mut by_group = Vec::new();
    for g in &s.groups {
        let c = &g.counts;
        for (st, n) in [
            ("waiting", not_started(c)),
            ("processing", c.processing),
            ("memory", c.memory),
            ("erred", c.erred),
        ] {
            by_group.push((
                format!("{{group=\"{}\",state=\"{st}\"}}", label(&g.name)),
                n as f64,
            ));
        }
    }
    family(
        &mut out,
        "taskwire_group_tasks",
        "gauge",
        "Tasks of each task group (key prefix) the scheduler holds, by state.",
        &by_group,
    );
    // Run times per group: one histogram family, cumulative buckets ending in +Inf.
    let _ = writeln!(
        out,
        "# HELP taskwire_task_duration_seconds Run time of finished tasks (as their workers \
         measured it), by task group."
    );
    let _ = writeln!(out, "# TYPE taskwire_task_duration_seconds histogram");
    for g in &s.durations {
        let name = label(&g.name);
        let mut cumulative = 0;
        for (i, n) in g.buckets.iter().enumerate() {
            cumulative += n;
            let le = DURATION_BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |&us| (us as f64 / 1e6).to_string());
            let _ = writeln!(
                out,
                "taskwire_task_duration_seconds_bucket{{group=\"{name}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "taskwire_task_duration_seconds_sum{{group=\"{name}\"}} {}",
            g.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "taskwire_task_duration_seconds_count{{group=\"{name}\"}} {}",
            g.count
        );
    }
    family(
        &mut out,
        "taskwire_task_durations_unrecorded_total",
        "counter",
        "Finished tasks missing from taskwire_task_duration_seconds (more finished in one batch \
         of the core thread than the core keeps a record of).",
        &one(s.durations_unrecorded as f64),
    );
    let t = &s.transfers;
    family(
        &mut out,
        "taskwire_transfer_fetched_bytes_total",
        "counter",
        "Bytes workers fetched from other workers (task inputs), all workers since the \
         scheduler started.",
        &one(t.fetched_bytes as f64),
    );
    family(
        &mut out,
        "taskwire_transfer_served_bytes_total",
        "counter",
        "Bytes workers served from their data ports (to other workers and to clients), all \
         workers since the scheduler started.",
        &one(t.served_bytes as f64),
    );
    family(
        &mut out,
        "taskwire_tasks_finished_total",
        "counter",
        "Tasks finished on workers since the scheduler started.",
        &one(s.finished_total as f64),
    );
    family(
        &mut out,
        "taskwire_workers",
        "gauge",
        "Workers registered.",
        &one(s.workers.len() as f64),
    );
    family(
        &mut out,
        "taskwire_clients",
        "gauge",
        "Clients connected.",
        &one(s.clients as f64),
    );
    let r = &s.recovery;
    for (name, help, v) in [
        (
            "taskwire_workers_lost_total",
            "Workers removed without retiring (connection lost, TTL expired, killed).",
            r.workers_lost,
        ),
        (
            "taskwire_workers_retired_total",
            "Workers retired gracefully.",
            r.workers_retired,
        ),
        (
            "taskwire_tasks_rescheduled_total",
            "Tasks sent back to placement after their worker was lost.",
            r.tasks_rescheduled,
        ),
        (
            "taskwire_results_recomputed_total",
            "Results whose only copies were on lost workers.",
            r.results_lost,
        ),
        (
            "taskwire_killed_worker_errors_total",
            "Tasks failed with KilledWorker.",
            r.killed_worker_errors,
        ),
    ] {
        family(&mut out, name, "counter", help, &one(v as f64));
    }
    let per_worker = |f: &dyn Fn(&taskwire_protocol::WorkerInfoMsg) -> f64| -> Vec<(String, f64)> {
        s.workers
            .iter()
            .map(|w| (format!("{{worker=\"{}\"}}", label(&w.name)), f(w)))
            .collect()
    };
    for (name, kind, help, samples) in [
        (
            "taskwire_worker_threads",
            "gauge",
            "Task threads of a worker.",
            per_worker(&|w| w.nthreads as f64),
        ),
        (
            "taskwire_worker_processing",
            "gauge",
            "Tasks assigned to a worker and not finished.",
            per_worker(&|w| w.processing as f64),
        ),
        (
            "taskwire_worker_executing",
            "gauge",
            "Tasks a worker is running now (last heartbeat).",
            per_worker(&|w| w.metrics.executing as f64),
        ),
        (
            "taskwire_worker_results",
            "gauge",
            "Results a worker holds.",
            per_worker(&|w| w.in_memory as f64),
        ),
        (
            "taskwire_worker_managed_bytes",
            "gauge",
            "Bytes of results a worker holds in memory.",
            per_worker(&|w| w.metrics.managed as f64),
        ),
        (
            "taskwire_worker_spilled_bytes",
            "gauge",
            "Bytes of results a worker spilled to disk.",
            per_worker(&|w| w.metrics.spilled as f64),
        ),
        (
            "taskwire_worker_rss_bytes",
            "gauge",
            "Resident memory of a worker process.",
            per_worker(&|w| w.metrics.rss as f64),
        ),
        (
            "taskwire_worker_memory_limit_bytes",
            "gauge",
            "Memory limit of a worker (0: none).",
            per_worker(&|w| w.memory_limit as f64),
        ),
        (
            "taskwire_worker_paused",
            "gauge",
            "1 while a worker is paused for memory.",
            per_worker(&|w| f64::from(u8::from(w.metrics.paused))),
        ),
        (
            "taskwire_worker_restarts",
            "gauge",
            "Times the worker's nanny restarted it.",
            per_worker(&|w| w.restarts as f64),
        ),
        (
            "taskwire_worker_gpu_memory_used_bytes",
            "gauge",
            "Memory in use on a worker's GPU (0: none).",
            per_worker(&|w| w.metrics.gpu_memory_used as f64),
        ),
        (
            "taskwire_worker_gpu_memory_total_bytes",
            "gauge",
            "Memory of a worker's GPU (0: none).",
            per_worker(&|w| w.metrics.gpu_memory_total as f64),
        ),
        (
            "taskwire_worker_last_seen_seconds",
            "gauge",
            "Seconds since the scheduler last heard from a worker.",
            per_worker(&|w| w.last_seen_ms as f64 / 1000.0),
        ),
    ] {
        family(&mut out, name, kind, help, &samples);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskwire_protocol::{WorkerId, WorkerInfoMsg, WorkerMetricsMsg};

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::empty();
        s.counts.processing = 3;
        s.finished_total = 42;
        s.workers.push(WorkerInfoMsg {
            id: WorkerId(1),
            name: "w\"1".into(),
            address: "tcp://127.0.0.1:1".into(),
            nthreads: 2,
            memory_limit: 100,
            resources: vec![],
            processing: 3,
            in_memory: 5,
            metrics: WorkerMetricsMsg {
                managed: 10,
                spilled: 20,
                rss: 30,
                executing: 2,
                paused: true,
                ..Default::default()
            },
            restarts: 1,
            last_seen_ms: 250,
        });
        let mut buckets = [0; DURATION_BUCKETS_US.len() + 1];
        buckets[0] = 2; // <= 10 µs
        buckets[6] = 1; // <= 1 ms
        buckets[DURATION_BUCKETS_US.len()] = 1; // > 1000 s
        s.durations.push(crate::GroupDurations {
            name: "inc".into(),
            buckets,
            count: 4,
            sum_us: 2_000_001_000,
        });
        s.transfers.fetched_bytes = 1234;
        s
    }

    #[test]
    fn durations_are_cumulative_histograms() {
        let text = metrics(&snapshot());
        for line in [
            "# TYPE taskwire_task_duration_seconds histogram\n",
            "taskwire_task_duration_seconds_bucket{group=\"inc\",le=\"0.00001\"} 2\n",
            "taskwire_task_duration_seconds_bucket{group=\"inc\",le=\"0.0005\"} 2\n",
            "taskwire_task_duration_seconds_bucket{group=\"inc\",le=\"0.001\"} 3\n",
            "taskwire_task_duration_seconds_bucket{group=\"inc\",le=\"1000\"} 3\n",
            "taskwire_task_duration_seconds_bucket{group=\"inc\",le=\"+Inf\"} 4\n",
            "taskwire_task_duration_seconds_sum{group=\"inc\"} 2000.001\n",
            "taskwire_task_duration_seconds_count{group=\"inc\"} 4\n",
            "taskwire_transfer_fetched_bytes_total 1234\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let d = durations(&snapshot(), false);
        assert_eq!(d["groups"][0]["cumulative"][6], 3);
        assert_eq!(d["groups"][0]["cumulative"][25], 4);
    }

    #[test]
    fn metrics_are_prometheus_text_with_escaped_labels() {
        let text = metrics(&snapshot());
        assert!(
            text.contains("taskwire_tasks{state=\"processing\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("taskwire_tasks_finished_total 42\n"));
        assert!(text.contains("taskwire_worker_spilled_bytes{worker=\"w\\\"1\"} 20\n"));
        assert!(text.contains("taskwire_worker_paused{worker=\"w\\\"1\"} 1\n"));
        // Every sample line belongs to a family declared just before it.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }

    /// The task stream's JSON is written by hand: it must still parse, keys with quotes
    /// included, and carry each run's thread and failure.
    #[test]
    fn task_stream_json_parses_and_carries_threads() {
        let stream = TaskStream::default();
        {
            let mut w = stream.lock().unwrap();
            for (seq, thread, erred) in [(1, 0, false), (2, 1, true)] {
                w.push(
                    crate::snapshot::StreamRun {
                        seq,
                        key: format!("q\"\\x-{seq}").into(),
                        worker: 3,
                        thread,
                        erred,
                        started_us: 1_000 * seq,
                        duration_us: 500,
                    },
                    5_000.0,
                );
            }
        }
        let v: Value = serde_json::from_str(&task_stream(&stream, 0)).unwrap();
        assert_eq!(v["seq"], 2);
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1]["key"], "q\"\\x-2");
        assert_eq!(runs[1]["group"], "q\"\\x");
        assert_eq!(
            (runs[1]["worker"].as_u64(), runs[1]["thread"].as_u64()),
            (Some(3), Some(1))
        );
        assert_eq!(
            (runs[0]["erred"].as_bool(), runs[1]["erred"].as_bool()),
            (Some(false), Some(true))
        );
        assert_eq!(
            runs[1]["end_ms"].as_f64().unwrap() - runs[1]["start_ms"].as_f64().unwrap(),
            0.5
        );
        let v: Value = serde_json::from_str(&task_stream(&stream, 2)).unwrap();
        assert_eq!(v, json!({"seq": 2, "runs": []}));
    }

    #[test]
    fn json_views() {
        let s = snapshot();
        let t = totals(&s);
        assert_eq!(t["tasks"]["processing"], 3);
        assert_eq!(t["threads"], 2);
        let w = workers(&s);
        assert_eq!(w[0]["spilled_bytes"], 20);
        assert_eq!(w[0]["paused"], true);
    }
}
