//! Security against the real binaries on 127.0.0.1: a cluster started with a cluster token
//! refuses clients, workers and peer fetches without it (or with another one), with one clear
//! error line, logs the refusal with the peer's address, and keeps serving its legitimate
//! users; silent, idle and garbage-speaking connections are dropped without harm; the limits
//! (connections, graph size) hold. See docs/security.md.

mod support;

use bytes::BytesMut;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Proc, SOON, nanny_control, rt, scheduler, tempdir, workers_until};
use taskwire::protocol::connection::{ConnectError, connect};
use taskwire::protocol::{AUTH_FAILED, ClientHandshake, ClientStep, HandshakeError, Role};
use taskwire::transport::{Message, TransportConfig, codec};
use taskwire::{Client, ClientError, ClusterSecret, Task};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Write a token file readable by its owner only.
fn token_file(path: &Path, token: &str) {
    std::fs::write(path, token).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn client_with(addr: &str, secret: Option<ClusterSecret>) -> Result<Client, ClientError> {
    let mut b = Client::builder(addr.parse().unwrap()).name("security-test");
    if let Some(s) = secret {
        b = b.auth_token(s);
    }
    tokio::time::timeout(SOON, b.connect())
        .await
        .expect("an answer in time")
}

async fn raw(addr: &str) -> TcpStream {
    TcpStream::connect(addr.trim_start_matches("tcp://"))
        .await
        .unwrap()
}

/// Send `bytes` one at a time, `gap` apart, until the peer cuts the connection off; how many
/// were sent.
async fn trickle(s: &mut TcpStream, bytes: &[u8], gap: Duration) -> usize {
    let mut sent = 0;
    let mut buf = [0u8; 256];
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(gap).await;
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // Closed (0 bytes), reset, or a refusal on its way: cut off.
            _ => break,
        }
    }
    sent
}

fn wire(header: bytes::Bytes) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::encode_into(&Message::new(header), &mut b);
    b.to_vec()
}

/// A raw TCP stream past a successful (authenticated) handshake, to send bytes by hand.
async fn raw_authenticated(addr: &str, secret: &ClusterSecret) -> TcpStream {
    handshake_on(raw(addr).await, Some(secret)).await
}

/// Run a client's handshake (with or without a token) on `s` by hand.
async fn handshake_on(mut s: TcpStream, secret: Option<&ClusterSecret>) -> TcpStream {
    let mut hs = ClientHandshake::new(Role::Client, "raw", secret.cloned());
    s.write_all(&wire(hs.hello())).await.unwrap();
    let mut decoder = codec::Decoder::new(TransportConfig::default());
    let mut buf = BytesMut::new();
    loop {
        let msg = loop {
            if let Some(m) = decoder.decode(&mut buf).unwrap() {
                break m;
            }
            assert!(
                s.read_buf(&mut buf).await.unwrap() > 0,
                "closed mid-handshake"
            );
        };
        match hs.on_message(&msg.header).unwrap() {
            ClientStep::Accepted(_) => return s,
            ClientStep::Send(b) => s.write_all(&wire(b)).await.unwrap(),
        }
    }
}

/// Read until the peer closes (or resets) the stream, within [`SOON`].
async fn closed_by_peer(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

fn incs(prefix: &str, n: i64) -> Vec<Task> {
    (0..n)
        .map(|i| Task::function(format!("{prefix}-{i}"), "inc").arg_i64(i))
        .collect()
}

#[test]
fn a_token_cluster_refuses_strangers_and_keeps_serving() {
    let dir = tempdir("security-token");
    let token = dir.join("cluster.token");
    // The scheduler creates the token file, private to its owner.
    let (sched, addr) = scheduler(&[
        "--auth-token-file",
        token.to_str().unwrap(),
        "--handshake-timeout",
        "30s",
        "--max-graph-tasks",
        "1000",
    ]);
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let wrong = dir.join("wrong.token");
    token_file(&wrong, "not-the-cluster-token");

    // A worker under a nanny: the nanny passes the token file to its child, and requires the
    // token on its control port.
    let worker = Proc::start(&[
        "worker",
        &addr,
        "--nthreads",
        "2",
        "--auth-token-file",
        token.to_str().unwrap(),
    ]);
    let ctl = worker.line("Nanny at:");
    let ctl = ctl.trim_start_matches("tcp://");
    for request in [&b"status\n"[..], b"auth 00\nstatus\n", b"restart\n"] {
        let answer = nanny_control(ctl, request, 3);
        assert!(answer.starts_with("challenge "), "{answer}");
        assert!(
            answer.ends_with(&format!("error: {AUTH_FAILED}\n")),
            "{request:?}: {answer}"
        );
    }
    worker.log("nanny: refusing control connection from 127.0.0.1:");
    let secret = ClusterSecret::read_file(&token).unwrap();
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(ctl).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let challenge = line.trim().strip_prefix("challenge ").unwrap().to_string();
        let answer = secret.control_response(&challenge);
        s.write_all(format!("auth {answer}\nstatus\n").as_bytes())
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "ok\n");
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("{\"workers\":["), "{line}");
    }

    // Workers with a wrong token, or none, stop at once with the clear line.
    for file in [Some(&wrong), None] {
        let mut args = vec!["worker", &addr, "--no-nanny", "--death-timeout", "20s"];
        if let Some(f) = file {
            args.extend(["--auth-token-file", f.to_str().unwrap()]);
        }
        let mut bad = Proc::start(&args);
        let line = bad.log("authentication failed");
        assert!(line.contains("wrong or missing cluster token"), "{line}");
        assert!(!bad.exit_within(SOON).success());
    }

    rt().block_on(async {
        let client = client_with(&addr, Some(secret.clone())).await.unwrap();
        let ws = workers_until(&client, "one worker", |w| w.len() == 1).await;
        let worker_addr = ws[0].address.clone();
        let earlier = client.submit_graph(incs("early", 20)).await.unwrap();
        for (i, f) in earlier.iter().enumerate() {
            assert_eq!(f.result_i64().await.unwrap(), i as i64 + 1);
        }

        // Clients without the token, or with another one: refused with the clear line.
        for (secret, what) in [
            (None, "no token"),
            (Some(ClusterSecret::new("guess").unwrap()), "wrong token"),
        ] {
            let e = client_with(&addr, secret).await.unwrap_err().to_string();
            assert!(e.contains(AUTH_FAILED), "{what}: {e}");
        }
        let refusal = sched.log("authentication failed");
        assert!(refusal.contains("127.0.0.1:"), "no peer address: {refusal}");

        // The worker's data port: a peer fetch without the token, or with another, is refused.
        let registry = taskwire::transport_tcp::standard_registry(Default::default());
        for (secret, expected) in [
            (None, HandshakeError::Refused(AUTH_FAILED.into())),
            (
                Some(ClusterSecret::new("guess").unwrap()),
                HandshakeError::BadPeerProof,
            ),
        ] {
            let mut conn = registry
                .connect(&worker_addr.parse().unwrap())
                .await
                .unwrap();
            let hs = ClientHandshake::new(Role::Peer, "thief", secret);
            match connect(&mut conn, hs, SOON).await {
                Err(ConnectError::Handshake(e)) => assert_eq!(e, expected),
                other => panic!("peer fetch handshake: {other:?}"),
            }
        }
        // ... and with it, accepted.
        let mut conn = registry
            .connect(&worker_addr.parse().unwrap())
            .await
            .unwrap();
        let hs = ClientHandshake::new(Role::Peer, "friend", Some(secret.clone()));
        connect(&mut conn, hs, SOON).await.unwrap();
        drop(conn);

        // 1,000 connections opened and left idle do not stop a legitimate client.
        let mut idle = Vec::with_capacity(1000);
        for _ in 0..1000 {
            idle.push(raw(&addr).await);
        }
        let other = client_with(&addr, Some(secret.clone())).await.unwrap();
        let more = other.submit_graph(incs("late", 50)).await.unwrap();
        for (i, f) in more.iter().enumerate() {
            assert_eq!(f.result_i64().await.unwrap(), i as i64 + 1);
        }
        // They were all still open (within their handshake timeout) while it ran.
        let mut buf = [0u8; 1];
        let open = idle
            .iter()
            .filter(|s| {
                matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        assert_eq!(open, 1000, "idle connections closed early");
        drop(idle);

        // After a valid handshake: random bytes, then a 2^63 length prefix (as the header
        // length, and as a frame length). Each connection is closed; nothing else is.
        let mut s = raw_authenticated(&addr, &secret).await;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = s.write_all(&garbage).await;
        closed_by_peer(&mut s).await;
        for nframes in [0u32, 1] {
            let mut s = raw_authenticated(&addr, &secret).await;
            let mut prelude = Vec::new();
            prelude.extend_from_slice(&codec::MAGIC.to_le_bytes());
            prelude.extend_from_slice(&nframes.to_le_bytes());
            let huge = 1u64 << 63;
            if nframes == 0 {
                prelude.extend_from_slice(&huge.to_le_bytes());
            } else {
                prelude.extend_from_slice(&16u64.to_le_bytes());
                prelude.extend_from_slice(&huge.to_le_bytes());
            }
            prelude.resize(prelude.len().next_multiple_of(16), 0);
            let _ = s.write_all(&prelude).await;
            closed_by_peer(&mut s).await;
        }

        // A graph over --max-graph-tasks is rejected whole, with the flag named.
        let big: Vec<Task> = (0..1001)
            .map(|i| Task::function(format!("big-{i}"), "noop"))
            .collect();
        let e = other.submit_graph(big).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::GraphRejected(r) if r.contains("--max-graph-tasks")),
            "{e}"
        );

        // Earlier results are still there, and both clients still work.
        let sum = client
            .submit(
                Task::function("sum-early", "add")
                    .dep(&earlier[3])
                    .dep(&earlier[4]),
            )
            .await
            .unwrap();
        assert_eq!(sum.result_i64().await.unwrap(), 4 + 5);
        assert_eq!(other.workers().await.unwrap().len(), 1);
        other.close().await;
        client.close().await;
    });
    drop(sched);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_silent_downgrade_and_limits_on_an_open_scheduler() {
    let dir = tempdir("security-open");
    let token = dir.join("cluster.token");
    token_file(&token, "some-token");
    let (_sched, addr) = scheduler(&["--handshake-timeout", "1s", "--max-connections", "5"]);

    // A worker holding a token refuses a scheduler that does not ask for one.
    let mut w = Proc::start(&[
        "worker",
        &addr,
        "--no-nanny",
        "--auth-token-file",
        token.to_str().unwrap(),
    ]);
    let line = w.log("authentication failed");
    assert!(line.contains("does not use one"), "{line}");
    assert!(!w.exit_within(SOON).success());

    rt().block_on(async {
        // So does a client.
        let secret = ClusterSecret::read_file(&token).unwrap();
        let e = client_with(&addr, Some(secret)).await.unwrap_err();
        assert!(
            matches!(
                &e,
                ClientError::Handshake {
                    source: HandshakeError::PeerUnauthenticated,
                    ..
                }
            ),
            "{e}"
        );

        // A peer that connects and says nothing is dropped after the handshake timeout.
        let t = Instant::now();
        let mut silent = raw(&addr).await;
        closed_by_peer(&mut silent).await;
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );

        // A slow sender trickling a valid Hello one byte every 200 ms is cut off by the same
        // timeout, long before it is done.
        let hello = wire(ClientHandshake::new(Role::Client, "trickle", None).hello());
        let mut s = raw(&addr).await;
        let sent = trickle(&mut s, &hello, Duration::from_millis(200)).await;
        assert!(
            sent < hello.len(),
            "a trickled handshake of {} bytes was never cut off",
            hello.len()
        );

        // Beyond --max-connections a newcomer is told why; once the idle ones are dropped
        // (handshake timeout) a client gets in.
        let mut idle = Vec::new();
        for _ in 0..5 {
            idle.push(raw(&addr).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let e = client_with(&addr, None).await.unwrap_err().to_string();
        assert!(e.contains("maximum of 5 connections"), "{e}");
        for s in &mut idle {
            closed_by_peer(s).await;
        }
        let client = client_with(&addr, None).await.unwrap();
        assert!(client.workers().await.unwrap().is_empty());
        client.close().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--scheduler-file` alone is enough to join a token cluster: the scheduler records the
/// token in it (mode 600, even over an older file that was readable by all), and a worker,
/// `submit`, `retire` and `status` need nothing else. A copy that others can read is refused,
/// as a token file is.
#[test]
fn the_scheduler_file_carries_the_token() {
    let dir = tempdir("security-scheduler-file");
    let token = dir.join("cluster.token");
    let file = dir.join("scheduler.json");
    std::fs::write(&file, "{}").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = file.to_str().unwrap();
    let (sched, addr) = scheduler(&[
        "--auth-token-file",
        token.to_str().unwrap(),
        "--scheduler-file",
        f,
    ]);
    let dashboard = sched.line("dashboard at:");
    // `http://HOST:PORT/` (with `?token=...` under a token).
    let dashboard_port = dashboard
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(json["address"], addr.as_str());
    let secret = ClusterSecret::read_file(&token).unwrap();
    assert_eq!(
        ClusterSecret::new(json["auth_token"].as_str().unwrap()).unwrap(),
        secret
    );

    // A worker (under its nanny) with the scheduler file only.
    let worker = Proc::start(&[
        "worker",
        "--scheduler-file",
        f,
        "--nthreads",
        "1",
        "--name",
        "sf-worker",
    ]);
    let ctl = worker.line("Nanny at:");
    // The nanny's control port takes the token from the file too.
    let answer = nanny_control(ctl.trim_start_matches("tcp://"), b"status\n", 3);
    assert!(answer.contains(AUTH_FAILED), "{answer}");
    rt().block_on(async {
        let client = client_with(&addr, Some(secret.clone())).await.unwrap();
        workers_until(&client, "the worker", |w| w.len() == 1).await;
        client.close().await;
    });

    let run = |args: &[&str]| {
        let mut p = Proc::start(args);
        let ok = p.exit_within(SOON).success();
        // Until the pipes close: every line, not only those read so far.
        let out: Vec<String> = p.stdout.iter().collect();
        let err: Vec<String> = p.stderr.iter().collect();
        (ok, out.join("\n"), err.join("\n"))
    };
    let (ok, out, err) = run(&[
        "submit",
        "--scheduler-file",
        f,
        "--",
        "echo",
        "hello from the file",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("hello from the file"), "{out}");
    // (The dashboard's view is published now and then: ask until it shows the worker.)
    let deadline = Instant::now() + SOON;
    loop {
        let (ok, out, err) = run(&[
            "status",
            "--scheduler-file",
            f,
            "--dashboard-port",
            &dashboard_port,
            "--json",
        ]);
        assert!(ok, "{err}");
        if out.contains("sf-worker") {
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Others can read the file: every reader refuses it, naming the fix.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for args in [
        &["submit", "--scheduler-file", f, "--", "true"][..],
        &["retire", "--scheduler-file", f, "sf-worker"],
        &["status", "--scheduler-file", f],
        &["worker", "--scheduler-file", f, "--no-nanny"],
    ] {
        let (ok, _, err) = run(args);
        assert!(!ok, "{args:?} accepted a readable scheduler file");
        assert!(
            err.contains("accessible by group or others (mode 644); run chmod 600"),
            "{args:?}: {err}"
        );
    }
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out, err) = run(&["retire", "--scheduler-file", f, "sf-worker"]);
    assert!(ok, "{err}");
    assert!(out.contains("retired sf-worker"), "{out}");
    drop(worker);
    drop(sched);
    let _ = std::fs::remove_dir_all(&dir);
}

/// This process's open-file limit raised (soft and hard, as root may) to at least `n`.
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_max = lim.rlim_max.max(n as libc::rlim_t);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            0,
            "cannot raise the open-file limit to {n}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// `(VmHWM, VmRSS)` of a process in bytes: its peak and current resident memory.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Read one message from a raw client connection and decode it as a `ToClient`.
async fn read_to_client(
    s: &mut TcpStream,
    decoder: &mut codec::Decoder,
    buf: &mut BytesMut,
) -> Option<taskwire::protocol::ToClient> {
    loop {
        if let Some(m) = decoder.decode(buf).unwrap() {
            return Some(taskwire::protocol::decode(&m.header).unwrap());
        }
        match tokio::time::timeout(SOON, s.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => panic!("no answer in time"),
        }
    }
}

/// Hostile peers against an open scheduler, each followed by a legitimate client that runs a
/// graph and finds the earlier results: 10,000 idle connections, a slow sender trickling a
/// message one byte a second after its handshake, a client that floods requests and never
/// reads the answers, a client that keeps submitting past `--max-client-tasks`.
#[test]
fn hostile_peers_against_an_open_scheduler() {
    const IDLE: usize = 10_000;
    raise_fd_limit(IDLE as u64 + 1024);
    let (sched, addr) = scheduler(&[
        "--max-connections",
        "10100",
        "--handshake-timeout",
        "10m",
        "--message-timeout",
        "3s",
        "--max-client-backlog",
        "1MiB",
        "--max-client-tasks",
        "1000",
    ]);
    let _worker = Proc::start(&["worker", &addr, "--nthreads", "2", "--no-nanny"]);
    let pid = sched.pid();
    rt().block_on(async {
        let client = client_with(&addr, None).await.unwrap();
        workers_until(&client, "one worker", |w| w.len() == 1).await;
        let earlier = client.submit_graph(incs("early", 20)).await.unwrap();
        for (i, f) in earlier.iter().enumerate() {
            assert_eq!(f.result_i64().await.unwrap(), i as i64 + 1);
        }
        // After each attack: earlier results are there and a new graph runs.
        let still_fine = |round: &'static str| {
            let addr = addr.clone();
            let earlier = &earlier;
            async move {
                let c = client_with(&addr, None).await.unwrap();
                let fresh = c.submit_graph(incs(round, 30)).await.unwrap();
                for (i, f) in fresh.iter().enumerate() {
                    assert_eq!(f.result_i64().await.unwrap(), i as i64 + 1, "{round}");
                }
                let sum = c
                    .submit(
                        Task::function(format!("{round}-sum"), "add")
                            .dep(&earlier[3])
                            .dep(&earlier[4]),
                    )
                    .await
                    .unwrap();
                assert_eq!(sum.result_i64().await.unwrap(), 4 + 5, "{round}");
                c.close().await;
            }
        };
        let (_, rss_before) = memory(pid);

        // 10,000 connections opened and left idle (in their handshake; the timeout is long).
        let started = Instant::now();
        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(raw(&addr).await);
        }
        let opened = started.elapsed();
        still_fine("idle").await;
        let mut buf = [0u8; 1];
        let open = idle
            .iter()
            .filter(|s| {
                matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        assert_eq!(open, IDLE, "idle connections closed early");
        let (_, rss_idle) = memory(pid);
        eprintln!(
            "{IDLE} idle connections opened in {opened:?}; scheduler RSS {} MiB -> {} MiB",
            rss_before >> 20,
            rss_idle >> 20
        );
        // About 10 KiB each (a task, a socket, a 4 KiB read buffer); 64 KiB read and write
        // buffers from the start once made it 1 GiB.
        assert!(
            rss_idle < rss_before + (400 << 20),
            "{IDLE} idle connections took the scheduler from {rss_before} to {rss_idle} bytes"
        );
        drop(idle);

        // A slow sender: a valid handshake, a pause longer than --message-timeout (idle
        // between messages is fine: it is answered), then a message trickled one byte a
        // second: dropped after the 3 s limit, long before it is done.
        let mut s = handshake_on(raw(&addr).await, None).await;
        let mut decoder = codec::Decoder::new(TransportConfig::default());
        let mut rbuf = BytesMut::new();
        tokio::time::sleep(Duration::from_secs(4)).await;
        s.write_all(&wire(taskwire::protocol::encode(
            &taskwire::protocol::FromClient::GetWorkers,
        )))
        .await
        .unwrap();
        let answer = read_to_client(&mut s, &mut decoder, &mut rbuf).await;
        assert!(
            matches!(answer, Some(taskwire::protocol::ToClient::Workers(ref w)) if w.len() == 1),
            "{answer:?}"
        );
        let graph = wire(taskwire::protocol::encode(
            &taskwire::protocol::FromClient::UpdateGraph {
                submit_id: 1,
                tasks: vec![],
                wanted: vec!["early-1".into()],
                want_tasks: false,
            },
        ));
        let t = Instant::now();
        let sent = trickle(&mut s, &graph, Duration::from_secs(1)).await;
        assert!(
            sent < graph.len() && t.elapsed() < Duration::from_secs(20),
            "a message of {} bytes trickled for {:?} ({sent} bytes) was not cut off",
            graph.len(),
            t.elapsed()
        );
        let line = sched.log("was not finished within 3s (--message-timeout)");
        assert!(line.contains("127.0.0.1:"), "{line}");
        still_fine("slow").await;

        // A client that floods requests and never reads the answers: dropped once 1 MiB of
        // answers wait for it, with the reason in the log; it is not allowed to grow the
        // scheduler without bound.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket
            .connect(addr.trim_start_matches("tcp://").parse().unwrap())
            .await
            .unwrap();
        let mut s = handshake_on(stream, None).await;
        let one = wire(taskwire::protocol::encode(
            &taskwire::protocol::FromClient::GetWorkers,
        ));
        let burst: Vec<u8> = one.repeat(1000);
        let mut requests = 0;
        while requests < 1_000_000 {
            match tokio::time::timeout(Duration::from_secs(30), s.write_all(&burst)).await {
                Ok(Ok(())) => requests += 1000,
                _ => break,
            }
        }
        let line = sched.log("--max-client-backlog");
        assert!(
            line.contains("dropping client") && line.contains("waiting unread"),
            "{line}"
        );
        closed_by_peer(&mut s).await;
        let (peak, rss_now) = memory(pid);
        eprintln!(
            "never-reading client dropped after about {requests} requests; scheduler RSS {} MiB (peak {} MiB)",
            rss_now >> 20,
            peak >> 20
        );
        still_fine("flood").await;

        // A client that keeps submitting without letting results go stops at
        // --max-client-tasks, with the limit named; others are not affected.
        let greedy = client_with(&addr, None).await.unwrap();
        let held = greedy.submit_graph(incs("greedy-a", 600)).await.unwrap();
        let e = greedy
            .submit_graph(incs("greedy-b", 600))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::GraphRejected(r) if r.contains("--max-client-tasks") && r.contains("1000")),
            "{e}"
        );
        assert_eq!(held[599].result_i64().await.unwrap(), 600);
        still_fine("greedy").await;
        greedy.close().await;
        client.close().await;
    });
    drop(sched);
}

/// A graph of 10 million tasks (about a gigabyte as a message) sent by a peer that has not
/// authenticated, to a scheduler with a token (as its first message, and after a refused
/// Hello) and to an open one (after its handshake): refused at the length prefix, before the
/// scheduler reads or allocates the body; its peak memory does not move, and it keeps
/// serving.
#[test]
fn a_ten_million_task_graph_is_refused_without_memory_growth() {
    use taskwire::protocol::{FromClient, TaskKindMsg, TaskSpecMsg, encode_with_capacity};
    let tasks: Vec<TaskSpecMsg> = (0..10_000_000u64)
        .map(|i| TaskSpecMsg {
            key: format!("t-{i}"),
            deps: vec![],
            kind: TaskKindMsg::Function {
                name: String::new(),
                args: vec![],
            },
            resources: vec![],
            workers: vec![],
            priority: 0,
            retries: 0,
        })
        .collect();
    let msg = FromClient::UpdateGraph {
        submit_id: 1,
        tasks,
        wanted: vec![],
        want_tasks: false,
    };
    let header = encode_with_capacity(&msg, 1 << 30);
    drop(msg);
    // The message as the client's transport writes it: prelude, then the header (not copied).
    let mut prelude = BytesMut::new();
    codec::put_prelude(&Message::new(header.clone()), &mut prelude);
    let graph_len = prelude.len() + header.len();
    eprintln!("a 10M-task graph is {} MiB on the wire", graph_len >> 20);

    let dir = tempdir("security-huge-graph");
    let token = dir.join("cluster.token");
    let (with_token, token_addr) = scheduler(&["--auth-token-file", token.to_str().unwrap()]);
    let (open, open_addr) = scheduler(&[]);
    rt().block_on(async {
        // A message within the 64 MiB header limit, sent before any handshake: a peer that
        // has not authenticated may not make the scheduler buffer more than a handshake.
        let part = header.slice(..60 << 20);
        let mut part_prelude = BytesMut::new();
        codec::put_prelude(&Message::new(part.clone()), &mut part_prelude);
        for (sched, addr, authenticated, graph) in [
            (&with_token, &token_addr, false, (&prelude, &header)),
            (&with_token, &token_addr, true, (&prelude, &header)),
            (&with_token, &token_addr, false, (&part_prelude, &part)),
            (&open, &open_addr, true, (&prelude, &header)),
        ] {
            let secret = if sched.pid() == with_token.pid() {
                Some(ClusterSecret::read_file(&token).unwrap())
            } else {
                None
            };
            let (peak_before, _) = memory(sched.pid());
            let mut s = raw(addr).await;
            if authenticated && secret.is_some() {
                // A Hello without the token: refused; then the graph anyway.
                let hello = ClientHandshake::new(Role::Client, "stranger", None).hello();
                s.write_all(&wire(hello)).await.unwrap();
            } else if authenticated {
                s = handshake_on(s, None).await;
            }
            // Stops at the first failed write: the scheduler closed the connection.
            let total = graph.0.len() + graph.1.len();
            let mut written = 0usize;
            for chunk in std::iter::once(&graph.0[..]).chain(graph.1.chunks(1 << 20)) {
                if s.write_all(chunk).await.is_err() {
                    break;
                }
                written += chunk.len();
            }
            closed_by_peer(&mut s).await;
            let (peak_after, rss) = memory(sched.pid());
            eprintln!(
                "{}: {} of {} MiB written before the close; scheduler peak RSS {} -> {} MiB, now {} MiB",
                if secret.is_some() { "token scheduler" } else { "open scheduler" },
                written >> 20,
                total >> 20,
                peak_before >> 20,
                peak_after >> 20,
                rss >> 20
            );
            assert!(
                peak_after < peak_before + (32 << 20),
                "scheduler peak RSS grew from {peak_before} to {peak_after} bytes"
            );
            let c = client_with(addr, secret).await.unwrap();
            assert!(c.workers().await.unwrap().is_empty());
            c.close().await;
        }
    });
    drop(with_token);
    drop(open);
    let _ = std::fs::remove_dir_all(&dir);
}
