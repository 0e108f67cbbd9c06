//! `taskwire status`: the dashboard's overview in the terminal, read from the scheduler's JSON
//! API (`/api/v1/totals`, `/api/v1/workers`, `/api/v1/groups`).

use clap::Args;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;
use taskwire_transport::Address;

/// Print the cluster's overview: tasks by state, task groups, workers.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Scheduler address, e.g. tcp://host:8786 (its dashboard is assumed on the same host, at
    /// --dashboard-port).
    #[arg(long)]
    scheduler: Option<String>,
    /// Read the scheduler address from this file instead.
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    /// The scheduler's dashboard port.
    #[arg(long, default_value_t = taskwire_scheduler::DEFAULT_DASHBOARD_PORT)]
    dashboard_port: u16,
    /// Print the three JSON documents instead of tables.
    #[arg(long)]
    json: bool,
    /// With a cluster token, the dashboard needs the credential derived from it.
    #[command(flatten)]
    auth: super::security::AuthArgs,
    /// Accepted so one set of flags serves every command. The dashboard answers plain HTTP,
    /// so with --require-encryption only a dashboard on this host (loopback) is read.
    #[command(flatten)]
    tls: super::security::TlsArgs,
}

/// `GET path` from `host:port` (with `Authorization: Bearer` when the cluster has a token);
/// the body of a 200 answer.
fn get(hostport: &str, path: &str, credential: Option<&str>) -> Result<String, String> {
    let mut s = TcpStream::connect(hostport)
        .map_err(|e| format!("cannot reach the dashboard at http://{hostport}/: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let auth = credential.map_or(String::new(), |c| format!("Authorization: Bearer {c}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("reading {path}: {e}"))?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{path}: not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(format!("{path}: {line}"));
    }
    Ok(body.to_string())
}

fn json(hostport: &str, path: &str, credential: Option<&str>) -> Result<Value, String> {
    serde_json::from_str(&get(hostport, path, credential)?).map_err(|e| format!("{path}: {e}"))
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub(crate) fn run(args: StatusArgs) -> Result<(), String> {
    let scheduler =
        super::scheduler_address(args.scheduler.as_deref(), args.scheduler_file.as_deref())?;
    let host = match &scheduler {
        Address::Net { host, .. } => host.clone(),
        Address::Inproc(_) => return Err("an inproc:// scheduler has no dashboard".into()),
    };
    if args.tls.security()?.requires_encryption()
        && !taskwire_transport_tcp::is_loopback_host(&host)
    {
        return Err(format!(
            "the dashboard at {host}:{} answers plain HTTP, which --require-encryption refuses \
             off this host; run `taskwire status` on the scheduler's host",
            args.dashboard_port
        ));
    }
    let hostport = if host.contains(':') {
        format!("[{host}]:{}", args.dashboard_port)
    } else {
        format!("{host}:{}", args.dashboard_port)
    };
    let credential = args
        .auth
        .secret_with(args.scheduler_file.as_deref())?
        .map(|s| s.http_credential());
    let credential = credential.as_deref();
    let totals = json(&hostport, "/api/v1/totals", credential)?;
    let workers = json(&hostport, "/api/v1/workers", credential)?;
    let groups = json(&hostport, "/api/v1/groups", credential)?;
    if args.json {
        println!("{totals}\n{workers}\n{groups}");
        return Ok(());
    }
    print!(
        "{}",
        render(&scheduler.to_string(), &totals, &workers, &groups)
    );
    Ok(())
}

fn render(scheduler: &str, totals: &Value, workers: &Value, groups: &Value) -> String {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let t = &totals["tasks"];
    let r = &totals["recovery"];
    let mut out = format!(
        "scheduler {scheduler}: {} workers, {} threads, {} clients\n\
         tasks: {} held — {} waiting, {} no-worker, {} queued, {} processing, {} in memory, \
         {} erred; {} finished in all\n\
         recovery: {} workers lost, {} retired, {} tasks rescheduled, {} results recomputed, \
         {} KilledWorker\n\
         transfers: {} fetched between workers, {} served from data ports\n",
        n(&totals["workers"]),
        n(&totals["threads"]),
        n(&totals["clients"]),
        n(&t["total"]),
        n(&t["waiting"]) + n(&t["released"]),
        n(&t["no_worker"]),
        n(&t["queued"]),
        n(&t["processing"]),
        n(&t["memory"]),
        n(&t["erred"]),
        n(&totals["tasks_finished_total"]),
        n(&r["workers_lost"]),
        n(&r["workers_retired"]),
        n(&r["tasks_rescheduled"]),
        n(&r["results_recomputed"]),
        n(&r["killed_worker_errors"]),
        bytes(n(&totals["transfers"]["fetched_bytes"])),
        bytes(n(&totals["transfers"]["served_bytes"])),
    );
    if let Some(gs) = groups.as_array().filter(|g| !g.is_empty()) {
        out.push_str(&format!(
            "\n{:<24} {:>9} {:>10} {:>9} {:>7}\n",
            "group", "waiting", "processing", "memory", "erred"
        ));
        for g in gs {
            out.push_str(&format!(
                "{:<24} {:>9} {:>10} {:>9} {:>7}\n",
                g["name"].as_str().unwrap_or("?"),
                n(&g["waiting"]),
                n(&g["processing"]),
                n(&g["memory"]),
                n(&g["erred"])
            ));
        }
    }
    out.push_str(&format!(
        "\n{:<24} {:>7} {:>10} {:>8} {:>21} {:>10} {:>8} {:>8} {:>9}\n",
        "worker",
        "threads",
        "processing",
        "results",
        "memory / limit",
        "spilled",
        "state",
        "restarts",
        "last seen"
    ));
    for w in workers.as_array().into_iter().flatten() {
        let limit = n(&w["memory_limit"]);
        out.push_str(&format!(
            "{:<24} {:>7} {:>10} {:>8} {:>21} {:>10} {:>8} {:>8} {:>8.1}s\n",
            w["name"].as_str().unwrap_or("?"),
            n(&w["nthreads"]),
            n(&w["processing"]),
            n(&w["in_memory"]),
            format!(
                "{} / {}",
                bytes(n(&w["managed_bytes"])),
                if limit == 0 {
                    "none".into()
                } else {
                    bytes(limit)
                }
            ),
            bytes(n(&w["spilled_bytes"])),
            if w["paused"].as_bool().unwrap_or(false) {
                "paused"
            } else {
                "running"
            },
            n(&w["restarts"]),
            n(&w["last_seen_ms"]) as f64 / 1000.0,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_totals_groups_and_workers() {
        let totals = json!({"workers": 1, "threads": 2, "clients": 1,
            "tasks": {"total": 5, "waiting": 1, "released": 0, "no_worker": 0, "queued": 0,
                      "processing": 1, "memory": 3, "erred": 0},
            "tasks_finished_total": 42,
            "recovery": {"workers_lost": 1, "workers_retired": 0, "tasks_rescheduled": 2,
                         "results_recomputed": 3, "killed_worker_errors": 0}});
        let workers = json!([{"name": "w0", "nthreads": 2, "processing": 1, "in_memory": 3,
            "managed_bytes": 2048, "memory_limit": 1 << 30, "spilled_bytes": 0,
            "paused": true, "restarts": 1, "last_seen_ms": 250}]);
        let groups =
            json!([{"name": "inc", "waiting": 1, "processing": 1, "memory": 3, "erred": 0}]);
        let text = render("tcp://h:8786", &totals, &workers, &groups);
        assert!(text.contains("1 workers, 2 threads"), "{text}");
        assert!(text.contains("42 finished"), "{text}");
        assert!(text.contains("3 results recomputed"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("inc ")), "{text}");
        let w = text.lines().find(|l| l.starts_with("w0 ")).unwrap();
        assert!(
            w.contains("2.0 KiB / 1.0 GiB") && w.contains("paused"),
            "{w}"
        );
    }
}
