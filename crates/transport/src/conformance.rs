//! The conformance suite: one set of behaviours every transport must show. A transport's test
//! file implements [`Harness`] and invokes [`conformance_tests!`](crate::conformance_tests),
//! which expands to one `#[tokio::test]` per case.
//!
//! Raw-byte cases (garbage, truncation, abort) run for transports that carry a byte stream
//! (`conformance_tests!(harness, bytes)`); the in-memory transport moves whole messages and has
//! no bytes to corrupt, so it runs the message cases only.

use crate::{Address, BoxFuture, Connection, Message, Registry, TransportError};
use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// A raw byte stream to a listener, for feeding it bad input.
pub trait RawStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Drop the stream abruptly (TCP: reset instead of FIN).
    fn abort(self: Box<Self>);
}

/// What a transport provides to run the suite.
pub trait Harness: Send + Sync + 'static {
    /// The registry to use (with the transport under test registered).
    fn registry(&self) -> Registry;
    /// A fresh address to listen on.
    fn listen_address(&self) -> Address;
    /// An address nothing listens on.
    fn closed_address(&self) -> Address;
    /// A raw byte stream to `addr`; only byte-stream transports (those that run the suite with
    /// `conformance_tests!(harness, bytes)`) implement it.
    fn raw_connect<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, Box<dyn RawStream>> {
        let _ = addr;
        unimplemented!("this transport carries no byte stream")
    }
}

/// Guard against hangs: every step of the suite must finish within this.
const STEP: Duration = Duration::from_secs(60);

async fn step<F: std::future::Future>(what: &str, f: F) -> F::Output {
    timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: hung for {STEP:?}"))
}

/// A connected pair: (client side, server side).
pub async fn pair<H: Harness>(h: &H) -> (Connection, Connection, crate::Listener) {
    let reg = h.registry();
    let mut listener = step("listen", reg.listen(&h.listen_address()))
        .await
        .expect("listen");
    let addr = listener.local_addr().clone();
    let (client, server) = step("connect+accept", async {
        tokio::join!(reg.connect(&addr), listener.accept())
    })
    .await;
    (client.expect("connect"), server.expect("accept"), listener)
}

fn numbered(i: u64, payload: usize) -> Message {
    let mut frame = vec![(i % 251) as u8; payload];
    if payload >= 8 {
        frame[..8].copy_from_slice(&i.to_le_bytes());
    }
    Message::with_frames(
        Bytes::copy_from_slice(&i.to_le_bytes()),
        vec![Bytes::from(frame)],
    )
}

fn number_of(m: &Message) -> u64 {
    u64::from_le_bytes(m.header[..8].try_into().expect("8-byte header"))
}

/// Messages arrive in order, in both directions, with headers and frames intact.
pub async fn order_preserved<H: Harness>(h: &H) {
    let (mut client, mut server, _l) = pair(h).await;
    let n = 10_000u64;
    let send_c = client.sender.clone();
    let send_s = server.sender.clone();
    let a = tokio::spawn(async move {
        for i in 0..n {
            send_c
                .send(numbered(i, (i % 300) as usize))
                .await
                .expect("client send");
        }
    });
    let b = tokio::spawn(async move {
        for i in 0..n {
            send_s
                .send(numbered(i, (i % 7) as usize))
                .await
                .expect("server send");
        }
    });
    for i in 0..n {
        let m = step("server recv", server.recv_msg())
            .await
            .expect("server recv");
        assert_eq!(number_of(&m), i);
        assert_eq!(m.frames.len(), 1);
        assert_eq!(m.frames[0], numbered(i, (i % 300) as usize).frames[0]);
        let m = step("client recv", client.recv_msg())
            .await
            .expect("client recv");
        assert_eq!(number_of(&m), i);
        assert_eq!(m.frames[0], numbered(i, (i % 7) as usize).frames[0]);
    }
    a.await.unwrap();
    b.await.unwrap();
}

/// Several senders at once on one connection, from tokio tasks and from a plain thread (as the
/// scheduler's core thread sends), while the receiver at first reads nothing so the socket
/// fills: each sender's messages still arrive whole and in its order.
pub async fn senders_interleave<H: Harness>(h: &H) {
    let (client, mut server, _l) = pair(h).await;
    let (senders, per_sender) = (4u64, 2_000u64);
    // Mostly small messages, some large enough to fill the socket buffers (both below and above
    // the size a byte-stream transport writes on the sender's thread).
    let size = |i: u64| match i % 50 {
        7 => 200 << 10,
        3 | 23 | 43 => 48 << 10,
        _ => (i % 64) as usize,
    };
    let tagged = move |s: u64, i: u64| {
        let mut m = numbered(i, size(i));
        m.header = Bytes::copy_from_slice(&[i.to_le_bytes(), s.to_le_bytes()].concat());
        m
    };
    let mut tasks = Vec::new();
    for s in 0..senders - 1 {
        let tx = client.sender.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_sender {
                tx.send(tagged(s, i)).await.expect("send");
                if i % 97 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let tx = client.sender.clone();
    let last = senders - 1;
    let thread = std::thread::spawn(move || {
        for i in 0..per_sender {
            let mut msg = tagged(last, i);
            // Never blocks, like the core thread: retry while the queue is full.
            while let Some(back) = tx.try_send(msg).expect("try_send") {
                msg = back;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = vec![0u64; senders as usize];
    for _ in 0..senders * per_sender {
        let m = step("recv interleaved", server.recv_msg())
            .await
            .expect("recv");
        let i = number_of(&m);
        let s = u64::from_le_bytes(m.header[8..16].try_into().expect("sender tag"));
        assert_eq!(i, next[s as usize], "sender {s}: out of order");
        next[s as usize] += 1;
        assert_eq!(
            m.frames[0],
            numbered(i, size(i)).frames[0],
            "sender {s} message {i}"
        );
    }
    for t in tasks {
        t.await.unwrap();
    }
    thread.join().unwrap();
}

/// Empty headers, no frames, and 0-byte frames all survive.
pub async fn empty_and_zero_byte<H: Harness>(h: &H) {
    let (client, mut server, _l) = pair(h).await;
    let cases = vec![
        Message::default(),
        Message::new(Bytes::from_static(b"h")),
        Message::with_frames(Bytes::new(), vec![Bytes::new()]),
        Message::with_frames(
            Bytes::from_static(b"x"),
            vec![Bytes::new(), Bytes::from_static(b"y"), Bytes::new()],
        ),
    ];
    for m in &cases {
        client.send(m.clone()).await.expect("send");
    }
    for m in &cases {
        assert_eq!(&step("recv", server.recv_msg()).await.expect("recv"), m);
    }
}

/// A 256 MiB payload arrives whole and unchanged.
pub async fn large_payload<H: Harness>(h: &H) {
    let (client, mut server, _l) = pair(h).await;
    let size = 256 << 20;
    let data: Bytes = (0..size)
        .map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    client
        .send(Message::with_frames(
            Bytes::from_static(b"big"),
            vec![data.clone(), Bytes::from_static(b"tail")],
        ))
        .await
        .expect("send");
    let m = step("recv 256 MiB", server.recv_msg()).await.expect("recv");
    assert_eq!(&m.header[..], b"big");
    assert_eq!(m.frames.len(), 2);
    assert_eq!(m.frames[0].len(), size);
    assert!(m.frames[0] == data, "256 MiB payload corrupted");
    assert_eq!(&m.frames[1][..], b"tail");
}

/// 100,000 small messages, all delivered, in order.
pub async fn many_small<H: Harness>(h: &H) {
    let (client, mut server, _l) = pair(h).await;
    let n = 100_000u64;
    let sender = client.sender.clone();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            sender
                .send(Message::new(Bytes::copy_from_slice(&i.to_le_bytes())))
                .await
                .expect("send");
        }
    });
    for i in 0..n {
        let m = step("recv small", server.recv_msg()).await.expect("recv");
        assert_eq!(number_of(&m), i);
    }
    producer.await.unwrap();
}

/// 64 connections to one listener at once, each with its own echo conversation.
pub async fn concurrent_connections<H: Harness>(h: &H) {
    let reg = h.registry();
    let mut listener = reg.listen(&h.listen_address()).await.expect("listen");
    let addr = listener.local_addr().clone();
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let mut conn = listener.accept().await.expect("accept");
            tasks.push(tokio::spawn(async move {
                while let Some(m) = conn.recv().await.expect("server recv") {
                    conn.send(m).await.expect("echo");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let mut clients = Vec::new();
    for c in 0..64u64 {
        let reg = reg.clone();
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let mut conn = reg.connect(&addr).await.expect("connect");
            for i in 0..100u64 {
                conn.send(numbered(c * 1000 + i, 100)).await.expect("send");
                let m = conn.recv_msg().await.expect("echo back");
                assert_eq!(number_of(&m), c * 1000 + i);
            }
        }));
    }
    for c in clients {
        step("client", c).await.unwrap();
    }
    step("server", server).await.unwrap();
}

/// Everything queued before the peer closes arrives, then a clean end of stream; sending to a
/// closed peer fails instead of hanging.
pub async fn peer_close<H: Harness>(h: &H) {
    let (client, mut server, _l) = pair(h).await;
    for i in 0..100 {
        client.send(numbered(i, 1000)).await.expect("send");
    }
    drop(client);
    for i in 0..100 {
        assert_eq!(
            number_of(&step("recv", server.recv_msg()).await.expect("recv")),
            i
        );
    }
    assert!(
        step("eof", server.recv())
            .await
            .expect("clean close")
            .is_none()
    );
    let sender = server.sender.clone();
    let failed = step("send to closed peer", async {
        loop {
            if sender.send(numbered(0, 64 * 1024)).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(failed);
}

/// Connecting where nothing listens fails with an error, not a hang.
pub async fn connect_refused<H: Harness>(h: &H) {
    let reg = h.registry();
    let result = step(
        "connect to closed address",
        reg.connect(&h.closed_address()),
    )
    .await;
    match result {
        Err(TransportError::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
}

/// A message over the limits fails at the sender and the connection stays usable.
pub async fn oversized_send_rejected<H: Harness>(h: &H) {
    let reg = h.registry().with_config(crate::TransportConfig {
        max_header: 1024,
        max_frame: 4096,
        ..Default::default()
    });
    let mut listener = reg.listen(&h.listen_address()).await.expect("listen");
    let addr = listener.local_addr().clone();
    let (client, server) = tokio::join!(reg.connect(&addr), listener.accept());
    let (client, mut server) = (client.unwrap(), server.unwrap());
    let err = client
        .send(Message::new(Bytes::from(vec![0u8; 2048])))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::HeaderTooLarge { .. }),
        "{err}"
    );
    let err = client
        .send(Message::with_frames(
            Bytes::new(),
            vec![Bytes::from(vec![0u8; 5000])],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::FrameTooLarge { .. }), "{err}");
    client
        .send(numbered(7, 100))
        .await
        .expect("connection still usable");
    assert_eq!(
        number_of(&step("recv", server.recv_msg()).await.unwrap()),
        7
    );
}

async fn raw_then_expect_error<H: Harness>(
    h: &H,
    bytes: &[u8],
    check: fn(&TransportError) -> bool,
    abort: bool,
) {
    let reg = h.registry();
    let mut listener = reg.listen(&h.listen_address()).await.expect("listen");
    let addr = listener.local_addr().clone();
    let mut raw = h.raw_connect(&addr).await;
    let mut conn = step("accept raw", listener.accept()).await.expect("accept");
    raw.write_all(bytes).await.expect("raw write");
    raw.flush().await.expect("raw flush");
    if abort {
        raw.abort();
    } else {
        raw.shutdown().await.expect("raw shutdown");
    }
    let err = step("recv bad input", conn.recv())
        .await
        .expect_err("bad input accepted");
    assert!(check(&err), "unexpected error: {err}");
    // Only that connection is closed: the listener serves a well-behaved peer.
    let (good, accepted) = tokio::join!(reg.connect(&addr), listener.accept());
    let (good, mut accepted) = (good.unwrap(), accepted.unwrap());
    good.send(numbered(42, 10)).await.unwrap();
    assert_eq!(
        number_of(
            &step("recv after bad peer", accepted.recv_msg())
                .await
                .unwrap()
        ),
        42
    );
}

/// Garbage bytes (an HTTP request) are rejected as such without a panic.
pub async fn garbage_rejected<H: Harness>(h: &H) {
    raw_then_expect_error(
        h,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        |e| matches!(e, TransportError::BadMagic { .. }),
        false,
    )
    .await;
}

/// A 2^63-byte length prefix is refused before anything is allocated for it.
pub async fn huge_length_rejected<H: Harness>(h: &H) {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&crate::codec::MAGIC.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&(1u64 << 63).to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    raw_then_expect_error(
        h,
        &bytes,
        |e| matches!(e, TransportError::FrameTooLarge { .. }),
        false,
    )
    .await;
}

/// A peer that stops in the middle of a message is a truncation error, not a hang or a message.
pub async fn truncated_rejected<H: Harness>(h: &H) {
    let mut wire = bytes::BytesMut::new();
    crate::codec::encode_into(&numbered(1, 1000), &mut wire);
    let cut = wire.len() / 2;
    raw_then_expect_error(
        h,
        &wire[..cut],
        |e| matches!(e, TransportError::Truncated { .. }),
        false,
    )
    .await;
}

/// A peer that resets the connection mid-message is an error, not a hang.
pub async fn peer_abort<H: Harness>(h: &H) {
    let mut wire = bytes::BytesMut::new();
    crate::codec::encode_into(&numbered(1, 1000), &mut wire);
    let cut = wire.len() / 2;
    raw_then_expect_error(
        h,
        &wire[..cut],
        |e| matches!(e, TransportError::Io(_) | TransportError::Truncated { .. }),
        true,
    )
    .await;
}

/// Expand to one `#[tokio::test]` per conformance case, given an expression building the
/// transport's [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            order_preserved, senders_interleave, empty_and_zero_byte, large_payload, many_small,
            concurrent_connections, peer_close, connect_refused, oversized_send_rejected);
    };
    ($harness:expr, bytes) => {
        $crate::conformance_tests!($harness);
        $crate::conformance_tests!(@cases $harness;
            garbage_rejected, huge_length_rejected, truncated_rejected, peer_abort);
    };
    (@cases $harness:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case(&$harness).await;
            }
        )*
    };
}
