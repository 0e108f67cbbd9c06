//! The UCX transport next to TCP, in one process over loopback: 8-byte round trips and the
//! one-way bandwidth of 1 MiB payload frames (each acknowledged, 64 in flight, as
//! `taskwire bench transport` does).
//!
//! Run with `UCX_TLS=sm,tcp cargo bench -p taskwire-transport-ucx` (UCX reads its environment;
//! without `UCX_TLS` it picks its transports itself). Client and server are two UCX contexts
//! with an engine thread each, as two processes would have; `taskwire bench transport
//! --two-process` measures two real processes, and BENCHMARKS.md has both next to
//! `ucx_perftest`.

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskwire_transport::{Address, ConnReceiver, ConnSender, Message, Registry, TransportConfig};
use taskwire_transport_ucx::UcxTransport;

/// The `taskwire` binary's allocator, so allocation costs match what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BW_SIZE: usize = 1 << 20;
const BW_WINDOW: usize = 64;

/// A connected client, and an echo server running on `rt`.
struct Pair {
    tx: ConnSender,
    rx: ConnReceiver,
    // Kept so that the server's transport (and its engine) lives as long as the pair.
    _server: Registry,
    _client: Registry,
}

fn registry(ucx: bool) -> Registry {
    let cfg = TransportConfig::default();
    if ucx {
        Registry::new(cfg).register(Arc::new(UcxTransport::default()))
    } else {
        taskwire_transport_tcp::standard_registry(cfg)
    }
}

/// Echo every message whose header is not empty; answer a payload message with a 1-byte ack.
async fn echo(tx: ConnSender, mut rx: ConnReceiver) {
    let ack = Message::new(Bytes::from_static(b"K"));
    while let Ok(Some(m)) = rx.recv().await {
        let reply = if m.frames.is_empty() { m } else { ack.clone() };
        if tx.send(reply).await.is_err() {
            return;
        }
    }
}

fn pair(rt: &tokio::runtime::Runtime, ucx: bool) -> Pair {
    rt.block_on(async {
        let server = registry(ucx);
        let client = registry(ucx);
        let addr: Address = if ucx {
            "ucx://127.0.0.1:0"
        } else {
            "tcp://127.0.0.1:0"
        }
        .parse()
        .expect("address");
        let mut listener = server.listen(&addr).await.expect("listen");
        let addr = listener.local_addr().clone();
        tokio::spawn(async move {
            while let Ok(conn) = listener.accept().await {
                let (tx, rx) = conn.split();
                tokio::spawn(echo(tx, rx));
            }
        });
        let conn = client.connect(&addr).await.expect("connect");
        let (tx, rx) = conn.split();
        Pair {
            tx,
            rx,
            _server: server,
            _client: client,
        }
    })
}

async fn round_trips(p: &mut Pair, n: u64) -> Duration {
    let ping = Message::new(Bytes::from_static(b"pingpong"));
    let start = Instant::now();
    for _ in 0..n {
        p.tx.send(ping.clone()).await.expect("send");
        p.rx.recv().await.expect("recv").expect("echo");
    }
    start.elapsed()
}

async fn bandwidth(p: &mut Pair, payload: &Bytes, n: u64) -> Duration {
    let header = Bytes::from_static(b"D");
    let start = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    while sent < n {
        if sent - acked >= BW_WINDOW as u64 {
            p.rx.recv().await.expect("recv").expect("ack");
            acked += 1;
        }
        let m = Message::with_frames(header.clone(), vec![payload.clone()]);
        p.tx.send(m).await.expect("send");
        sent += 1;
    }
    while acked < sent {
        p.rx.recv().await.expect("recv").expect("ack");
        acked += 1;
    }
    start.elapsed()
}

fn transports(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let payload = Bytes::from(vec![0x5Au8; BW_SIZE]);
    for (name, ucx) in [("ucx", true), ("tcp", false)] {
        let mut p = pair(&rt, ucx);
        let mut g = c.benchmark_group(format!("transport/{name}"));
        g.throughput(Throughput::Elements(1));
        g.bench_function("pingpong_8B", |b| {
            b.iter_custom(|n| rt.block_on(round_trips(&mut p, n)))
        });
        g.throughput(Throughput::Bytes(BW_SIZE as u64));
        g.bench_function("bandwidth_1MiB", |b| {
            b.iter_custom(|n| rt.block_on(bandwidth(&mut p, &payload, n)))
        });
        g.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    transports(&mut c);
    c.final_summary();
}
