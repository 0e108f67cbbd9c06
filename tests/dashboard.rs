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

    // One row per worker thread: a worker with two threads runs sleepers side by side, quick
    // tasks and a failure. The stream names both threads, and the runs on one thread follow
    // each other without overlapping (placed by the worker's own clock, however its reports
    // were batched).
    let _w2 = spawn(
        &[
            "worker",
            &address,
            "--nthreads",
            "2",
            "--name",
            "dash-2t",
            "--no-nanny",
        ],
        &["Registered to:"],
    );
    let _futures2 = rt.block_on(async {
        let mut tasks: Vec<Task> = (0..20)
            .map(|i| Task::function(format!("dash-sleep-{i}"), "sleep").arg_u64(30))
            .collect();
        tasks.extend((0..200).map(|i| Task::function(format!("dash-quick-{i}"), "inc").arg_i64(i)));
        tasks.push(Task::function("dash-fail-0", "fail"));
        let tasks = tasks.into_iter().map(|t| t.worker("dash-2t")).collect();
        let futures = client.submit_graph(tasks).await.unwrap();
        client.wait(&futures).await;
        futures
    });
    let (_, body) = get(&http, "/api/v1/workers");
    let workers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "dash-2t")
        .map(|w| w["id"].clone())
        .unwrap_or_else(|| panic!("{workers}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let runs = loop {
        let (_, body) = get(&http, &format!("/api/v1/task-stream?since={last}"));
        let stream: serde_json::Value = serde_json::from_str(&body).unwrap();
        let runs: Vec<serde_json::Value> = stream["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["worker"] == id)
            .cloned()
            .collect();
        if runs.len() == 221 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 221 runs in the stream",
            runs.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut threads: std::collections::BTreeMap<u64, Vec<(f64, f64, String)>> = Default::default();
    for r in &runs {
        let (start, end) = (
            r["start_ms"].as_f64().unwrap(),
            r["end_ms"].as_f64().unwrap(),
        );
        assert!(end >= start, "{r}");
        threads
            .entry(r["thread"].as_u64().unwrap())
            .or_default()
            .push((start, end, r["key"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        threads.keys().copied().collect::<Vec<_>>(),
        [0, 1],
        "both threads ran tasks"
    );
    for (thread, mut on) in threads {
        // By start, then end: a run shorter than the clock's microsecond that started in the
        // same microsecond as the next one comes first (it ran first), not after it.
        on.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for pair in on.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "thread {thread}: {:?} overlaps {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    let failed: Vec<&serde_json::Value> = runs.iter().filter(|r| r["erred"] == true).collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["key"], "dash-fail-0");
    assert_eq!(failed[0]["group"], "dash-fail");

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

// ---------------------------------------------------------------------------------------------
// A real browser

/// Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: requests
/// on fd 3, answers on fd 4, each a JSON text ended by a NUL byte), so that the test can wait
/// for the live page's numbers, read its DOM and take a screenshot. The process group is killed
/// when it is dropped.
struct Browser {
    _proc: support::Proc,
    requests: std::io::PipeWriter,
    answers: BufReader<std::io::PipeReader>,
    session: String,
    next_id: u64,
}

impl Browser {
    fn start(profile: &std::path::Path) -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .expect("this test needs Chromium: apt-get install chromium (see .ci/run)");
        let (their_requests, requests) = std::io::pipe().unwrap();
        let (answers, their_answers) = std::io::pipe().unwrap();
        let mut cmd = std::process::Command::new(binary);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            "--window-size=1440,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
        let (r, w) = (their_requests.as_raw_fd(), their_answers.as_raw_fd());
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
        unsafe {
            cmd.pre_exec(move || {
                for (from, to) in [(r, 3), (w, 4)] {
                    if from == to {
                        libc::fcntl(to, libc::F_SETFD, 0);
                    } else if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let proc = support::Proc::start_cmd(cmd);
        drop((their_requests, their_answers));
        let mut b = Browser {
            _proc: proc,
            requests,
            answers: BufReader::new(answers),
            session: String::new(),
            next_id: 1,
        };
        let target = b.call(
            "Target.createTarget",
            serde_json::json!({"url": "about:blank"}),
        );
        let attached = b.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Send a command (to the page once attached) and return its result; events are skipped.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.requests.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.answers.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "the browser closed its pipe during {method}");
            buf.pop();
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Evaluate `expression` until `done` holds for its value, for at most [`support::SOON`].
    fn wait_for(
        &mut self,
        expression: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + support::SOON;
        loop {
            let v = self.eval(expression);
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{expression} is still {v}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Standard base64 (the screenshot comes that way).
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | u32::from(d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// `GET path` with a bearer credential; status and body.
fn get_with(addr: &str, path: &str, credential: &str) -> (u16, String) {
    let answer = raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {credential}\r\n\r\n")
            .as_bytes(),
    );
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `promtool check metrics` on `text`: Prometheus' own parser and linter.
fn promtool(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("this test needs promtool: apt-get install prometheus (see .ci/run)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample line `series` (name and labels as written) in a metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_real_browser_shows_the_live_cluster_under_the_cluster_token() {
    let dir = support::tempdir("dashboard-browser");
    let token = dir.join("token");
    let token_arg = token.to_str().unwrap();
    let (sched, address) = scheduler(&["--auth-token-file", token_arg]);
    let link = sched.line("dashboard at:");
    let secret = taskwire::ClusterSecret::read_file(&token).unwrap();
    let credential = secret.http_credential();
    assert!(
        link.ends_with(&format!("/?token={credential}")),
        "the link carries the credential: {link}"
    );
    let token_text = std::fs::read_to_string(&token).unwrap();
    assert!(!link.contains(token_text.trim()), "never the token itself");
    let http = link
        .strip_prefix("http://")
        .and_then(|l| l.split_once('/'))
        .map(|(hostport, _)| hostport.to_string())
        .unwrap();

    // Two workers of two threads under a nanny, each with its own metrics port.
    let (workers, _) = spawn(
        &[
            "worker",
            &address,
            "--nworkers",
            "2",
            "--nthreads",
            "2",
            "--name",
            "browser",
            "--auth-token-file",
            token_arg,
            "--dashboard-port",
            "0",
        ],
        &[],
    );
    let worker_metrics: Vec<String> = (0..2)
        .map(|_| {
            let l = workers.line("worker metrics at:");
            l.strip_prefix("http://")
                .and_then(|l| l.strip_suffix("/metrics"))
                .unwrap_or_else(|| panic!("worker metrics link {l}"))
                .to_string()
        })
        .collect();
    assert_ne!(worker_metrics[0], worker_metrics[1], "one port per worker");

    // The page, opened before the graph runs so that its charts see it run.
    let mut browser = Browser::start(&dir.join("chromium-profile"));
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    );
    browser.call("Page.enable", serde_json::json!({}));
    browser.call("Page.navigate", serde_json::json!({"url": link}));
    browser.wait_for(
        "document.readyState == 'complete' && document.getElementById('workers').textContent",
        |v| v == "2",
    );
    assert_eq!(
        browser.eval("location.search"),
        "",
        "the ?token= link redirects to the page without it"
    );

    let rt = rt();
    let client = rt.block_on(async {
        tokio::time::timeout(
            support::SOON,
            Client::builder(address.parse().unwrap())
                .auth_token(secret.clone())
                .connect(),
        )
        .await
        .expect("connect in time")
        .unwrap()
    });
    // 300 quick tasks, 40 that sleep 120 ms (a few seconds of throughput on the charts), 40
    // blocks of 256 KiB made on both workers that one checksum task gathers (half of them
    // cross between the workers), and one task that fails.
    let _futures = rt.block_on(async {
        let mut tasks: Vec<Task> = (0..300)
            .map(|i| Task::function(format!("browser-inc-{i}"), "inc").arg_i64(i))
            .collect();
        tasks.extend(
            (0..40).map(|i| Task::function(format!("browser-sleep-{i}"), "sleep").arg_u64(120)),
        );
        let mut check = Task::function("browser-check-0", "checksum");
        for i in 0..40 {
            let key = format!("browser-data-{i}");
            tasks.push(
                Task::function(&key, "make-bytes")
                    .arg_u64(256 << 10)
                    .worker(if i % 2 == 0 { "browser-0" } else { "browser-1" }),
            );
            check = check.dep_key(key);
        }
        tasks.push(check);
        // A command that fails after 300 ms: wide enough to see its outline in the picture.
        tasks.push(Task::command(
            "browser-fail-0",
            ["sh", "-c", "sleep 0.3; exit 3"].map(String::from).to_vec(),
        ));
        let futures = client.submit_graph(tasks).await.unwrap();
        client.wait(&futures).await;
        futures
    });
    // Finished; held (and run) with the failure.
    let total = 381;
    let held = total + 1;

    // The live page catches up with the finished graph and its failure.
    browser.wait_for(
        "document.getElementById('finished').textContent + ' '
            + document.getElementById('legend').textContent.includes('erred 1')",
        |v| v == format!("{total} true").as_str(),
    );
    // The workers table lists them by name, whichever registered first.
    let names =
        browser.eval("[...document.querySelectorAll('#rows tr')].map(r => r.cells[0].textContent)");
    assert_eq!(names, serde_json::json!(["browser-0", "browser-1"]));
    let groups = browser.eval(
        "Object.fromEntries([...document.querySelectorAll('#groups tr')]
            .map(r => [r.cells[0].textContent, r.cells[2].textContent]))",
    );
    assert_eq!(
        groups,
        serde_json::json!({"browser-inc": "300", "browser-sleep": "40",
                           "browser-data": "40", "browser-check": "1", "browser-fail": "1"}),
        "the progress table shows each group's tasks"
    );
    // Each group's bar is all "in memory" (green), as the results are held, but the
    // failure's, which is all "erred".
    let bars = browser.eval(
        "Object.fromEntries([...document.querySelectorAll('#groups tr')].map(r => {
            const b = r.querySelector('.bar');
            return [r.cells[0].textContent, b.children.length == 1
                ? b.children[0].title.split(':')[0] : 'mixed'];
        }))",
    );
    assert_eq!(
        bars,
        serde_json::json!({"browser-inc": "memory", "browser-sleep": "memory",
                           "browser-data": "memory", "browser-check": "memory",
                           "browser-fail": "erred"}),
        "{groups}"
    );
    // The task stream has a row per worker thread, labelled with the worker's name and the
    // thread; between them the rows hold every task that ran, the failure among them, and
    // the sleepers ran side by side on both threads of each worker.
    let rows = browser.wait_for(
        "[...document.querySelectorAll('#streamlabels div')].map(d =>
            [d.textContent, +d.dataset.tasks, +d.dataset.failed])",
        |v| {
            v.as_array().is_some_and(|rows| {
                rows.iter().map(|r| r[1].as_u64().unwrap_or(0)).sum::<u64>() == held
            })
        },
    );
    let labels: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "browser-0 #0",
            "browser-0 #1",
            "browser-1 #0",
            "browser-1 #1"
        ],
        "{rows}"
    );
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r[1].as_u64() > Some(0)),
        "every thread ran tasks: {rows}"
    );
    assert_eq!(
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r[2].as_u64().unwrap())
            .sum::<u64>(),
        1,
        "one failure: {rows}"
    );
    // Run times: the tasks that slept 120 ms all fall under 250 ms.
    let sleep_times = browser.wait_for(
        "[...document.querySelectorAll('#groups tr')].find(r => r.cells[0].textContent ==
            'browser-sleep').cells[4].textContent",
        |v| v.as_str().is_some_and(|s| s.contains("p50")),
    );
    // At least 250 ms (the first bound above 120 ms); more on a machine too busy to wake the
    // sleepers on time.
    let bound_us = |text: &str, which: &str| -> f64 {
        let b = text
            .split(&format!("{which} ≤ "))
            .nth(1)
            .and_then(|r| r.split(" ·").next())
            .unwrap_or_else(|| panic!("no {which} in {text}"));
        let (v, unit) = b.split_once(' ').unwrap();
        let scale = match unit {
            "µs" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            _ => panic!("{text}"),
        };
        v.parse::<f64>().unwrap() * scale
    };
    let text = sleep_times.as_str().unwrap();
    assert!(bound_us(text, "p50") >= 250e3, "{text}");
    assert!(bound_us(text, "p95") >= bound_us(text, "p50"), "{text}");
    assert_eq!(
        browser.eval("document.getElementById('status').textContent"),
        "live"
    );
    assert_eq!(
        browser.eval("document.getElementById('total').textContent"),
        held.to_string().as_str()
    );
    // The transfers arrive with the workers' next heartbeats.
    let moved = browser.wait_for("document.getElementById('moved').textContent", |v| {
        v.as_str().is_some_and(|s| s.ends_with("MiB"))
    });
    // A few more updates, so the charts have their lines, then a picture for people.
    std::thread::sleep(Duration::from_secs(3));
    // Redrawn charts never widen the page.
    assert_eq!(
        browser.eval("document.documentElement.scrollWidth <= window.innerWidth"),
        true,
        "{}",
        browser.eval("document.documentElement.scrollWidth")
    );
    let height = browser.eval("document.documentElement.scrollHeight");
    let shot = browser.call(
        "Page.captureScreenshot",
        serde_json::json!({"format": "png", "captureBeyondViewport": true,
            "clip": {"x": 0, "y": 0, "width": 1440, "height": height, "scale": 1}}),
    );
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("dashboard screenshot ({moved} moved): {}", path.display());

    // The same numbers in /metrics, which Prometheus' own tool accepts; transfers add up to
    // what the workers counted themselves, and the run times landed in the right buckets.
    let (status, _) = get(&http, "/metrics");
    assert_eq!(status, 401, "no credential, no metrics");
    assert_eq!(
        get(&http, "/health"),
        (200, "ok\n".to_string()),
        "liveness stays open"
    );
    let worker_texts: Vec<String> = worker_metrics
        .iter()
        .map(|w| {
            assert_eq!(get(w, "/metrics").0, 401);
            assert_eq!(get(w, "/health").0, 200);
            let (status, text) = get_with(w, "/metrics", &credential);
            assert_eq!(status, 200);
            promtool(&text);
            text
        })
        .collect();
    let mut names: Vec<&str> = worker_texts
        .iter()
        .map(|t| {
            t.split("taskwire_worker_up{worker=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("{t}"))
        })
        .collect();
    names.sort();
    assert_eq!(names, ["browser-0", "browser-1"]);
    let worker_fetched: f64 = worker_texts
        .iter()
        .map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("taskwire_worker_fetched_bytes_total{"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{t}"))
        })
        .sum();
    assert!(
        worker_fetched >= (20 << 18) as f64,
        "half the blocks crossed: {worker_fetched}"
    );
    let deadline = Instant::now() + support::SOON;
    let metrics = loop {
        let (status, text) = get_with(&http, "/metrics", &credential);
        assert_eq!(status, 200);
        if sample(&text, "taskwire_transfer_fetched_bytes_total") == Some(worker_fetched) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "transfers never added up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    promtool(&metrics);
    let bucket = |group: &str, le: &str| {
        sample(
            &metrics,
            &format!("taskwire_task_duration_seconds_bucket{{group=\"{group}\",le=\"{le}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {group} {le} bucket:\n{metrics}"))
    };
    assert_eq!(bucket("browser-sleep", "0.1"), 0.0, "each slept 120 ms");
    assert!(bucket("browser-sleep", "0.25") <= 40.0);
    assert_eq!(bucket("browser-sleep", "+Inf"), 40.0);
    assert_eq!(bucket("browser-inc", "+Inf"), 300.0);
    assert_eq!(
        sample(
            &metrics,
            "taskwire_task_duration_seconds_count{group=\"browser-inc\"}"
        ),
        Some(300.0)
    );
    let (_, totals) = get_with(&http, "/api/v1/totals", &credential);
    let totals: serde_json::Value = serde_json::from_str(&totals).unwrap();
    assert_eq!(
        totals["transfers"]["fetched_bytes"].as_f64(),
        Some(worker_fetched)
    );
    let (_, durations) = get_with(&http, "/api/v1/durations", &credential);
    let durations: serde_json::Value = serde_json::from_str(&durations).unwrap();
    assert!(
        durations["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "browser-sleep" && g["count"] == 40),
        "{durations}"
    );

    // `taskwire status` with the token file reads the same API.
    let port = http.rsplit(':').next().unwrap();
    let out = std::process::Command::new(support::BIN)
        .args(["status", "--scheduler", &address, "--dashboard-port", port])
        .args(["--auth-token-file", token_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{total} in memory")), "{text}");
    assert!(text.contains("MiB fetched between workers"), "{text}");

    // HTTP garbage at the dashboard port: random bytes, a huge header, a request that trickles
    // in. Each gets its answer (or is dropped) and the page's stream goes on.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .chain(*b"\r\n\r\n")
        .collect();
    assert!(raw(&http, &noise).starts_with("HTTP/1.1 400"));
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1 << 20));
    let mut s = TcpStream::connect(&http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server answers and closes once 8 KiB arrived; the rest may not be accepted.
    let _ = s.write_all(huge.as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let mut slow = TcpStream::connect(&http).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /api/v1/tot").unwrap();
    assert_eq!(get(&http, "/health").0, 200, "served while one trickles in");
    std::thread::sleep(Duration::from_secs(1));
    slow.write_all(format!("als HTTP/1.1\r\nAuthorization: Bearer {credential}\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    slow.write_all(b"\r\n").unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"tasks\""),
        "{answer}"
    );
    let before = browser.eval("document.getElementById('finished').textContent");
    rt.block_on(async {
        let f = client
            .submit(Task::function("browser-after-1", "inc").arg_i64(1))
            .await
            .unwrap();
        client.wait(&[f]).await;
    });
    let after = browser.wait_for("document.getElementById('finished').textContent", |v| {
        v != &before
    });
    assert_eq!(after, (total + 1).to_string().as_str(), "still live");
    rt.block_on(client.close());
    let _ = std::fs::remove_dir_all(&dir);
}
