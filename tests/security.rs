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

fn wire(header: bytes::Bytes) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::encode_into(&Message::new(header), &mut b);
    b.to_vec()
}

/// A raw TCP stream past a successful (authenticated) handshake, to send bytes by hand.
async fn raw_authenticated(addr: &str, secret: &ClusterSecret) -> TcpStream {
    let mut s = raw(addr).await;
    let mut hs = ClientHandshake::new(Role::Client, "raw", Some(secret.clone()));
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
        let mut sent = 0;
        let mut buf = [0u8; 256];
        for b in &hello {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            match s.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Closed (0 bytes), reset, or a refusal on its way: cut off.
                _ => break,
            }
        }
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
