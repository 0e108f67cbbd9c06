//! Framing codec micro-benchmarks: `encode_into` and `Decoder::decode` for small (64 B) messages
//! and for a message with one 1 MiB payload frame.
//!
//! Run with `cargo bench -p taskwire-transport --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};
use std::hint::black_box;
use taskwire_transport::codec::{Decoder, encode_into, put_prelude, wire_len};
use taskwire_transport::{Message, TransportConfig};

/// The `taskwire` binary's allocator, so allocation costs match what users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Small messages are measured in batches, the way a busy connection sees them.
const SMALL_BATCH: usize = 1000;

fn small_message() -> Message {
    Message::new(Bytes::from(vec![7u8; 64]))
}

fn big_message() -> Message {
    Message::with_frames(
        Bytes::from_static(b"header"),
        vec![Bytes::from(vec![9u8; 1 << 20])],
    )
}

fn encoded(msgs: &[Message]) -> BytesMut {
    let mut wire = BytesMut::new();
    for m in msgs {
        encode_into(m, &mut wire);
    }
    wire
}

fn small(c: &mut Criterion) {
    let msgs: Vec<Message> = (0..SMALL_BATCH).map(|_| small_message()).collect();
    let wire = encoded(&msgs);
    let mut g = c.benchmark_group("codec/small_64B");
    g.throughput(Throughput::Elements(SMALL_BATCH as u64));
    let mut out = BytesMut::with_capacity(wire.len());
    g.bench_function("encode_into", |b| {
        b.iter(|| {
            out.clear();
            for m in &msgs {
                encode_into(black_box(m), &mut out);
            }
            black_box(out.len())
        })
    });
    g.bench_function("decode", |b| {
        b.iter_batched_ref(
            || {
                (
                    Decoder::new(TransportConfig::default()),
                    BytesMut::from(&wire[..]),
                )
            },
            |(dec, buf)| {
                let mut n = 0;
                while let Some(m) = dec.decode(buf).expect("valid wire") {
                    n += m.header.len();
                }
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn big(c: &mut Criterion) {
    let msg = big_message();
    let wire = encoded(std::slice::from_ref(&msg));
    let mut g = c.benchmark_group("codec/frame_1MiB");
    g.throughput(Throughput::Bytes(wire_len(&msg) as u64));
    let mut out = BytesMut::with_capacity(wire.len());
    g.bench_function("encode_into", |b| {
        b.iter(|| {
            out.clear();
            encode_into(black_box(&msg), &mut out);
            black_box(out.len())
        })
    });
    // What the stream writer does for a large frame: only the prelude is built, the frame is
    // handed to the kernel where it lies.
    g.bench_function("put_prelude", |b| {
        b.iter(|| {
            out.clear();
            put_prelude(black_box(&msg), &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("decode", |b| {
        b.iter_batched_ref(
            || {
                (
                    Decoder::new(TransportConfig::default()),
                    BytesMut::from(&wire[..]),
                )
            },
            |(dec, buf)| {
                let m = dec.decode(buf).expect("valid wire").expect("whole message");
                black_box(m.frames[0].len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    small(&mut c);
    big(&mut c);
    c.final_summary();
}
