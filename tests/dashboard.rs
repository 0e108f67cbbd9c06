//! The scheduler's HTTP side with real processes: the dashboard page, `/health`, `/metrics`,
//! the JSON API and the live event stream reflect a running cluster; garbage, wrong methods,
//! oversized heads and unknown paths get 4xx answers, and the server carries on.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{rt, scheduler, spawn};
use taskwire::{Client, Task};

/// Send raw bytes, read the whole answer (the server closes after one response).
fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the dashboard");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let answer = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn dashboard_metrics_and_api_reflect_the_cluster_and_survive_garbage() {
    let (sched, address) = scheduler(&[]);
    let link = sched.line("dashboard at:");
    let http = link
        .strip_prefix("http://")
        .and_then(|l| l.strip_suffix('/'))
        .unwrap_or_else(|| panic!("dashboard link {link}"))
        .to_string();
    let _w = spawn(
        &[
            "worker",
            &address,
            "--nthreads",
            "1",
            "--name",
            "dash-0",
            "--no-nanny",
        ],
        &["Registered to:"],
    );
    let rt = rt();
    let client = rt.block_on(Client::connect(&address)).unwrap();
    let n = 1000;
    // Held to the end, so the results stay in memory.
    let _futures = rt.block_on(async {
        let tasks = (0..n)
            .map(|i| Task::function(format!("dash-inc-{i}"), "inc").arg_i64(i))
            .collect();
        let futures = client.submit_graph(tasks).await.unwrap();
        client.wait(&futures).await;
        futures
    });

    // Published snapshots lag by at most a publish interval: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, body) = get(&http, "/metrics");
        assert_eq!(status, 200);
        if body.contains(&format!("taskwire_tasks_finished_total {n}\n")) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {n} tasks:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains("taskwire_workers 1\n"), "{metrics}");
    assert!(
        metrics.contains("taskwire_worker_threads{worker=\"dash-0\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("taskwire_tasks{state=\"memory\"} 1000\n"),
        "{metrics}"
    );

    assert_eq!(get(&http, "/health"), (200, "ok\n".to_string()));
    let (status, page) = get(&http, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>Taskwire</title>") && page.contains("/api/v1/stream"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page loads nothing from the network"
    );

    let (status, body) = get(&http, "/api/v1/workers");
    assert_eq!(status, 200);
    let workers: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(workers[0]["name"], "dash-0");
    assert_eq!(workers[0]["in_memory"], n);
    let (_, body) = get(&http, "/api/v1/groups");
    let groups: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(groups[0]["name"], "dash-inc", "{groups}");
    assert_eq!(groups[0]["memory"], n, "{groups}");
    assert!(
        metrics.contains("taskwire_group_tasks{group=\"dash-inc\",state=\"memory\"} 1000\n"),
        "{metrics}"
    );
    // A task's story, from the core's transition log, as JSON and as a page.
    let (status, body) = get(&http, "/api/v1/task/dash-inc-7");
    assert_eq!(status, 200);
    let story: serde_json::Value = serde_json::from_str(&body).unwrap();
    let steps: Vec<String> = story["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} -> {}",
                t["from"].as_str().unwrap(),
                t["to"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        steps.contains(&"processing -> memory".to_string()),
        "{steps:?}"
    );
    assert!(
        story["transitions"][0]["stimulus"]
            .as_str()
            .unwrap()
            .contains("update-graph")
    );
    let (status, page) = get(&http, "/task/dash%2Dinc%2D7");
    assert_eq!(status, 200);
    assert!(
        page.contains("<h1>dash-inc-7</h1>") && page.contains("memory"),
        "{page}"
    );
    assert_eq!(get(&http, "/task/bad%zz").0, 400);
    let (_, body) = get(&http, "/api/v1/totals");
    let totals: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(totals["tasks"]["memory"], n);
    assert_eq!(totals["workers"], 1);

    // The task stream: every task of the graph, with its worker and times, and nothing twice
    // when asked again from the last number.
    let (status, body) = get(&http, "/api/v1/task-stream?since=0");
    assert_eq!(status, 200);
    let stream: serde_json::Value = serde_json::from_str(&body).unwrap();
    let runs = stream["runs"].as_array().unwrap();
    assert_eq!(runs.len(), n as usize, "{body:.300}");
    assert!(
        runs.iter()
            .all(|r| r["group"] == "dash-inc" && r["worker"] == workers[0]["id"])
    );
    assert!(
        runs.iter()
            .all(|r| r["end_ms"].as_f64() >= r["start_ms"].as_f64())
    );
    let last = stream["seq"].as_u64().unwrap();
    let (_, body) = get(&http, &format!("/api/v1/task-stream?since={last}"));
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(again["runs"].as_array().unwrap().is_empty(), "{again}");
    assert_eq!(get(&http, "/api/v1/task-stream?since=x").0, 400);

    // The same overview in the terminal.
    let port = http.rsplit(':').next().unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["status", "--scheduler", &address, "--dashboard-port", port])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1000 in memory"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("dash-0 ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("dash-inc ")), "{text}");

    // The live stream: an event arrives at once, another after the next snapshot.
    let mut s = TcpStream::connect(&http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    let mut events = 0;
    let mut line = String::new();
    rt.block_on(client.submit(Task::function("dash-more", "inc").arg_i64(1)))
        .unwrap();
    while events < 2 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream closed");
        if let Some(data) = line.strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            assert_eq!(v["totals"]["workers"], 1);
            events += 1;
        }
    }
    drop(reader);

    // Hostile or wrong input: a clear 4xx, and the server stays up.
    assert!(raw(&http, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw(&http, b"POST / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(get(&http, "/nope").0 == 404);
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw(&http, huge.as_bytes()).starts_with("HTTP/1.1 400"));
    // Half a request, then the connection closes.
    drop(TcpStream::connect(&http).unwrap());
    assert_eq!(get(&http, "/health"), (200, "ok\n".to_string()));
    rt.block_on(client.close());
}
