//! A connection over any ordered byte stream (TCP, TLS, ...): a writer task that batches queued
//! messages into vectored writes, and a reader that decodes frames out of one growing buffer.

use crate::address::Address;
use crate::codec::{self, Decoder};
use crate::config::TransportConfig;
use crate::connection::{ConnReceiver, ConnSender, Connection, Message, Outbox, RecvHalf};
use crate::error::TransportError;
use bytes::{BufMut, BytesMut};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Frames up to this size are copied into the write buffer next to their prelude; bigger ones
/// are handed to the kernel where they lie (vectored write, no copy).
const COPY_BELOW: usize = 4096;
/// Most messages coalesced into one write.
const MAX_BATCH: usize = 1024;
/// Stop coalescing once this many bytes are queued for one write.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// The kernel's limit on iovecs per call.
const IOV_MAX: usize = 1024;
/// Minimum free space before a read.
const READ_CHUNK: usize = 64 * 1024;
/// The first read buffer of a connection: enough for a handshake or a small message. A
/// connection that has sent nothing yet holds no more than this (10,000 idle connections
/// held 1 GiB of a scheduler's memory with 64 KiB read and write buffers from the start).
const FIRST_READ: usize = 4 * 1024;

/// Build a connection over a split byte stream; spawns the writer on the current tokio runtime.
pub fn connection<R, W>(
    read: R,
    write: W,
    cfg: Arc<TransportConfig>,
    local: Address,
    peer: Address,
) -> Connection
where
    R: AsyncRead + Unpin + Send + Sync + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (sender, outbox) = ConnSender::channel(cfg.clone());
    tokio::spawn(write_loop(write, outbox));
    let reader = StreamReader {
        read,
        buf: BytesMut::new(),
        decoder: Decoder::new((*cfg).clone()),
        state: ReadState::Open,
    };
    Connection {
        sender,
        receiver: ConnReceiver::new(Box::new(reader)),
        local,
        peer,
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(write: W, mut outbox: Outbox) {
    // Stop as soon as a sender aborts, even in the middle of a write the peer is not reading.
    let aborted = outbox.aborted();
    let failed = tokio::select! {
        _ = aborted => None,
        r = write_all_queued(write, &mut outbox) => r.err(),
    };
    if let Some(e) = failed {
        outbox.fail(&TransportError::Io(e));
    }
}

/// Write what is queued until every sender is gone (`Ok`) or a write fails.
async fn write_all_queued<W: AsyncWrite + Unpin>(
    mut write: W,
    outbox: &mut Outbox,
) -> std::io::Result<()> {
    // Both grow with the first messages written; an idle connection holds neither.
    let mut batch: Vec<Message> = Vec::new();
    let mut scratch = BytesMut::new();
    loop {
        let Some(first) = outbox.recv().await else {
            // Every sender is gone and the queue is drained: end the stream cleanly.
            let _ = write.shutdown().await;
            return Ok(());
        };
        let mut bytes = codec::wire_len(&first);
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match outbox.try_recv() {
                Some(m) => {
                    bytes += codec::wire_len(&m);
                    batch.push(m);
                }
                None => break,
            }
        }
        write_batch(&mut write, &batch, &mut scratch).await?;
        batch.clear();
    }
}

enum Segment<'a> {
    Scratch(usize, usize),
    Slice(&'a [u8]),
}

async fn write_batch<W: AsyncWrite + Unpin>(
    write: &mut W,
    batch: &[Message],
    scratch: &mut BytesMut,
) -> std::io::Result<()> {
    scratch.clear();
    let mut segments: Vec<Segment<'_>> = Vec::with_capacity(8);
    let mut start = 0;
    let emit_slice = |segments: &mut Vec<Segment<'_>>, scratch: &BytesMut, start: &mut usize| {
        if scratch.len() > *start {
            segments.push(Segment::Scratch(*start, scratch.len()));
        }
        *start = scratch.len();
    };
    for msg in batch {
        codec::put_prelude(msg, scratch);
        for part in std::iter::once(&msg.header).chain(msg.frames.iter()) {
            if part.len() < COPY_BELOW {
                scratch.put_slice(part);
            } else {
                emit_slice(&mut segments, scratch, &mut start);
                segments.push(Segment::Slice(part));
            }
        }
        scratch.put_slice(&codec::PADDING[..codec::trailer_len(msg)]);
    }
    emit_slice(&mut segments, scratch, &mut start);
    let mut slices: Vec<IoSlice<'_>> = segments
        .iter()
        .map(|s| match s {
            Segment::Scratch(a, b) => IoSlice::new(&scratch[*a..*b]),
            Segment::Slice(s) => IoSlice::new(s),
        })
        .collect();
    let mut view: &mut [IoSlice<'_>] = &mut slices;
    while !view.is_empty() {
        let n = view.len().min(IOV_MAX);
        let written = write.write_vectored(&view[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut view, written);
    }
    write.flush().await
}

#[derive(PartialEq, Eq)]
enum ReadState {
    Open,
    Eof,
    Failed,
}

struct StreamReader<R> {
    read: R,
    buf: BytesMut,
    decoder: Decoder,
    state: ReadState,
}

impl<R: AsyncRead + Unpin + Send + Sync + 'static> RecvHalf for StreamReader<R> {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, TransportError>> {
        loop {
            match self.state {
                ReadState::Failed => return Poll::Ready(Err(TransportError::Closed)),
                ReadState::Eof => return Poll::Ready(Ok(None)),
                ReadState::Open => {}
            }
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(msg)) => return Poll::Ready(Ok(Some(msg))),
                Ok(None) => {}
                Err(e) => {
                    self.state = ReadState::Failed;
                    return Poll::Ready(Err(e));
                }
            }
            // Size the buffer for the whole message once its length is known, so a 1 GiB
            // payload is read into one allocation and handed out without a copy.
            let want = self
                .decoder
                .needed()
                .map_or(0, |total| total.saturating_sub(self.buf.len()));
            if self.buf.capacity() - self.buf.len() < want.max(1024) {
                let chunk = if self.buf.capacity() == 0 {
                    FIRST_READ
                } else {
                    READ_CHUNK
                };
                self.buf.reserve(want.max(chunk));
            }
            let n = match ready!(poll_read_buf(Pin::new(&mut self.read), cx, &mut self.buf)) {
                Ok(n) => n,
                Err(e) => {
                    self.state = ReadState::Failed;
                    return Poll::Ready(Err(TransportError::Io(e)));
                }
            };
            if n == 0 {
                return Poll::Ready(match self.decoder.finish(&self.buf) {
                    Ok(()) => {
                        self.state = ReadState::Eof;
                        Ok(None)
                    }
                    Err(e) => {
                        self.state = ReadState::Failed;
                        Err(e)
                    }
                });
            }
        }
    }

    fn mid_message(&self) -> bool {
        self.state == ReadState::Open && self.decoder.in_message(&self.buf)
    }

    fn cap_message(&mut self, cap: Option<usize>) {
        self.decoder.cap_message(cap);
    }
}

fn poll_read_buf<R: AsyncRead>(
    read: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    let dst = buf.chunk_mut();
    // SAFETY: `UninitSlice` is a view of the buffer's spare capacity; ReadBuf only ever writes
    // initialised bytes into it and reports how many.
    let dst = unsafe { &mut *(dst as *mut bytes::buf::UninitSlice as *mut [MaybeUninit<u8>]) };
    let mut rb = ReadBuf::uninit(dst);
    let ptr = rb.filled().as_ptr();
    ready!(read.poll_read(cx, &mut rb))?;
    assert_eq!(ptr, rb.filled().as_ptr(), "reader swapped the buffer");
    let n = rb.filled().len();
    // SAFETY: the reader initialised `n` bytes at the start of the spare capacity.
    unsafe { buf.advance_mut(n) };
    Poll::Ready(Ok(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn pair() -> (Connection, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (r, w) = tokio::io::split(ours);
        let addr: Address = "tcp://127.0.0.1:1".parse().expect("address");
        let conn = connection(
            r,
            w,
            Arc::new(TransportConfig::default()),
            addr.clone(),
            addr,
        );
        (conn, theirs)
    }

    fn wire(msg: &Message) -> BytesMut {
        let mut b = BytesMut::new();
        codec::encode_into(msg, &mut b);
        b
    }

    /// A peer that sends the start of a message and then one byte now and then (holding the
    /// connection at almost no cost to itself) is cut off after the limit.
    #[tokio::test]
    async fn a_trickled_message_fails_after_the_limit() {
        let (mut conn, mut peer) = pair();
        let bytes = wire(&Message::new(Bytes::from(vec![7u8; 64])));
        let trickle = tokio::spawn(async move {
            for b in bytes.iter() {
                if peer.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Keep the stream open.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let started = std::time::Instant::now();
        let r = conn
            .receiver
            .recv_finishing_within(Duration::from_millis(300))
            .await;
        assert!(matches!(r, Err(TransportError::SlowMessage(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        trickle.abort();
    }

    /// Between messages a connection may stay silent for as long as it likes; a message that
    /// arrives in pieces within the limit is fine.
    #[tokio::test]
    async fn idle_time_and_a_quick_message_are_fine() {
        let (mut conn, mut peer) = pair();
        let msg = Message::new(Bytes::from(vec![1u8; 1000]));
        let bytes = wire(&msg);
        let send = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let (a, b) = bytes.split_at(10);
            peer.write_all(a).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            peer.write_all(b).await.expect("write");
            peer
        });
        let got = conn
            .receiver
            .recv_finishing_within(Duration::from_millis(300))
            .await
            .expect("message")
            .expect("not closed");
        assert_eq!(got, msg);
        drop(send.await);
    }

    /// A peer that never reads: the writer is stuck on a full pipe, and `abort` still closes
    /// the connection at once and fails later sends.
    #[tokio::test]
    async fn abort_closes_a_connection_whose_peer_does_not_read() {
        let (conn, mut peer) = pair();
        let big = Message::new(Bytes::from(vec![0u8; 1 << 20]));
        // The pipe holds 64 KiB: the writer blocks inside the first message.
        conn.sender.send(big.clone()).await.expect("queued");
        conn.sender.send(big.clone()).await.expect("queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.sender.abort();
        tokio::time::timeout(Duration::from_secs(5), conn.sender.closed())
            .await
            .expect("the writer stopped");
        assert!(conn.sender.send(big).await.is_err());
        // Once the reading side is dropped too, the peer sees the stream end after what was
        // written before the abort.
        drop(conn);
        let mut sink = Vec::new();
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut sink),
        )
        .await
        .expect("stream ended")
        .expect("read");
        assert!(n < 2 << 20, "{n} bytes");
    }
}
