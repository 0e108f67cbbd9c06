//! UCX-specific behaviour beyond the shared conformance suite: a peer process killed with
//! SIGKILL (the connection must fail, not hang), messages with more frames than fit in an
//! active-message header, and rendezvous-sized messages on a fresh connection.
//!
//! The killed peer is this test binary run again as a child (`child_peer`, which does nothing
//! unless `TASKWIRE_UCX_CHILD_CONNECT` is set).

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use taskwire_transport::{Address, Message, Registry, Scheme, TransportConfig};
use taskwire_transport_ucx::{UcxConfig, UcxTransport};

const CHILD_ENV: &str = "TASKWIRE_UCX_CHILD_CONNECT";

fn registry() -> Registry {
    Registry::new(TransportConfig::default())
        .register(Arc::new(UcxTransport::new(UcxConfig::new().tls("tcp"))))
}

fn local(port: u16) -> Address {
    Address::Net {
        scheme: Scheme::Ucx,
        host: "127.0.0.1".into(),
        port,
    }
}

/// The child side of `killed_peer_is_an_error`: connect, say hello, then wait to be killed.
#[tokio::test]
async fn child_peer() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return;
    };
    let conn = registry()
        .connect(&addr.parse().unwrap())
        .await
        .expect("child connect");
    conn.send(Message::new(Bytes::from_static(b"child here")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// A worker process dies (OOM killer, kill -9) while connected: the survivor's receive fails
/// and its sends start failing, within seconds, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_is_an_error() {
    let reg = registry();
    let mut listener = reg.listen(&local(0)).await.unwrap();
    let addr = listener.local_addr().to_string();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_peer", "--nocapture"])
        .env(CHILD_ENV, &addr)
        .spawn()
        .unwrap();
    let mut conn = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("child never connected")
        .unwrap();
    let hello = conn.recv_msg().await.unwrap();
    assert_eq!(&hello.header[..], b"child here");
    child.kill().unwrap();
    child.wait().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), conn.recv())
        .await
        .expect("receive hung after the peer was killed");
    let err = outcome.expect_err("a killed peer is not a clean close");
    assert!(err.to_string().contains("connection failed"), "{err}");
    let sender = conn.sender.clone();
    let send_failed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if sender
                .send(Message::new(Bytes::from_static(b"x")))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        send_failed.is_ok(),
        "sends to a killed peer kept succeeding"
    );
}

/// Thousands of frames (a prelude too big for an AM header) and a 64 MiB frame (rendezvous)
/// arrive intact, in order, on a connection that has just been opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_frames_and_rendezvous_on_a_fresh_connection() {
    let reg = registry();
    let mut listener = reg.listen(&local(0)).await.unwrap();
    let addr = listener.local_addr().clone();
    let (client, server) = tokio::join!(reg.connect(&addr), listener.accept());
    let (client, mut server) = (client.unwrap(), server.unwrap());
    let many = Message::with_frames(
        Bytes::from_static(b"many"),
        (0..3000u32)
            .map(|i| Bytes::from(i.to_le_bytes().repeat((i % 3) as usize)))
            .collect(),
    );
    let big: Bytes = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    let large = Message::with_frames(Bytes::from_static(b"large"), vec![big]);
    let small = Message::new(Bytes::from_static(b"small"));
    for m in [&large, &many, &small, &large] {
        client.send(m.clone()).await.unwrap();
    }
    for want in [&large, &many, &small, &large] {
        let got = tokio::time::timeout(Duration::from_secs(60), server.recv_msg())
            .await
            .expect("hung")
            .unwrap();
        assert!(&got == want, "message {:?} corrupted", want.header);
    }
    assert_eq!(client.local.scheme(), Scheme::Ucx);
    assert_eq!(server.peer.host(), Some("127.0.0.1"));
}
