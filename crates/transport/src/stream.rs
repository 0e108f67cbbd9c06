//! A connection over any ordered byte stream (TCP, TLS, ...): a writer task that batches queued
//! messages into vectored writes, and a reader that decodes frames out of one growing buffer.
//!
//! A message sent while nothing is queued or being written is written at once on the sender's
//! thread (a non-blocking write; what the socket does not take goes to the writer task), which
//! saves the hand-off to the writer task on a request/response path.

use crate::address::Address;
use crate::codec::{self, Decoder};
use crate::config::TransportConfig;
use crate::connection::{
    ConnReceiver, ConnSender, Connection, InlineWrite, Message, Outbox, RecvHalf,
};
use crate::error::TransportError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Frames up to this size are copied into the write buffer next to their prelude; bigger ones
/// are handed to the kernel where they lie (vectored write, no copy).
const COPY_BELOW: usize = 4096;
/// Most messages coalesced into one write.
const MAX_BATCH: usize = 1024;
/// Stop coalescing once this many bytes are queued for one write.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Slices handed to one vectored write (the kernel takes up to 1024).
const IOV_BATCH: usize = 64;
/// Larger messages are always left to the writer task, so that a sender never spends long
/// copying into the socket.
const INLINE_MAX: usize = 64 * 1024;
/// A message sent this soon after the last write ended is queued even when the writer is idle:
/// the sender is streaming, and the writer task turns a stream into few large writes (a
/// request/response exchange leaves a round trip, several µs, between its sends).
const STREAM_GAP_NS: u64 = 2_000;
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
    let writer = Arc::new(Writer {
        state: Mutex::new(WriteState {
            write,
            // Grows with the first message written (`cut_scratch`): an idle connection holds
            // no write buffer.
            scratch: BytesMut::new(),
            out: VecDeque::new(),
            flush_owed: false,
            failed: false,
        }),
        queued: AtomicIsize::new(0),
        wake: Notify::new(),
        epoch: Instant::now(),
        last_write: AtomicU64::new(0),
    });
    let (sender, outbox) = ConnSender::channel(cfg.clone());
    let sender = sender.with_inline(writer.clone());
    tokio::spawn(write_loop(writer, outbox));
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

/// The write half, shared by the writer task and by senders that write inline.
struct Writer<W> {
    state: Mutex<WriteState<W>>,
    /// Messages counted by senders as queued and not yet encoded into `out` by the writer task.
    queued: AtomicIsize,
    /// Wakes the writer task when an inline write left bytes the socket did not take, or failed.
    wake: Notify,
    /// `last_write` counts nanoseconds from here.
    epoch: Instant,
    /// When the last write (inline or by the writer task) ended.
    last_write: AtomicU64,
}

struct WriteState<W> {
    write: W,
    /// Small messages and preludes are copied here and written from frozen slices of it.
    scratch: BytesMut,
    /// Bytes encoded and not yet written, in order (the front may be partly written).
    out: VecDeque<Bytes>,
    /// Bytes were written since the last flush.
    flush_owed: bool,
    /// A write failed: the writer task ends the connection.
    failed: bool,
}

impl<W> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream::Writer")
    }
}

impl<W> Writer<W> {
    fn nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> MutexGuard<'_, WriteState<W>> {
        // Every update of the state is completed before anything that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> InlineWrite for Writer<W> {
    fn try_write(&self, msg: Message) -> Result<Option<Message>, TransportError> {
        if codec::wire_len(&msg) > INLINE_MAX || self.queued.load(Ordering::Acquire) != 0 {
            return Ok(Some(msg));
        }
        if self
            .nanos()
            .saturating_sub(self.last_write.load(Ordering::Relaxed))
            < STREAM_GAP_NS
        {
            // A stream of messages: one vectored write per batch beats one write per message.
            return Ok(Some(msg));
        }
        // Never wait: the writer task holds the lock only while it polls the socket.
        let Ok(mut st) = self.state.try_lock() else {
            return Ok(Some(msg));
        };
        // Checked again under the lock: the writer task lowers the count under it.
        if st.failed || !st.out.is_empty() || self.queued.load(Ordering::Acquire) != 0 {
            return Ok(Some(msg));
        }
        st.encode(&msg);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let drained = st.poll_drain(&mut cx);
        self.last_write.store(self.nanos(), Ordering::Relaxed);
        match drained {
            Poll::Ready(Ok(())) => Ok(None),
            Poll::Pending => {
                // The socket is full: the writer task writes the rest when it can.
                drop(st);
                self.wake.notify_one();
                Ok(None)
            }
            Poll::Ready(Err(e)) => {
                st.failed = true;
                drop(st);
                self.wake.notify_one();
                Err(TransportError::Io(e))
            }
        }
    }

    fn count_queued(&self, delta: isize) {
        self.queued.fetch_add(delta, Ordering::AcqRel);
    }
}

impl<W: AsyncWrite + Unpin> WriteState<W> {
    /// Append `msg`'s wire bytes to `out`: small parts copied next to the prelude, large frames
    /// by reference.
    fn encode(&mut self, msg: &Message) {
        codec::put_prelude(msg, &mut self.scratch);
        for part in std::iter::once(&msg.header).chain(msg.frames.iter()) {
            if part.len() < COPY_BELOW {
                self.scratch.put_slice(part);
            } else {
                self.cut_scratch();
                self.out.push_back(part.clone());
            }
        }
        self.scratch
            .put_slice(&codec::PADDING[..codec::trailer_len(msg)]);
    }

    /// Move what `scratch` holds to the end of `out`.
    fn cut_scratch(&mut self) {
        if !self.scratch.is_empty() {
            let cut = self.scratch.split().freeze();
            self.out.push_back(cut);
        }
        if self.scratch.capacity() < COPY_BELOW {
            // Reclaims the old buffer when every slice of it has been written.
            self.scratch.reserve(64 * 1024);
        }
    }

    /// Write everything in `out`, then flush.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.cut_scratch();
        loop {
            if self.out.is_empty() {
                if self.flush_owed {
                    ready!(Pin::new(&mut self.write).poll_flush(cx))?;
                    self.flush_owed = false;
                }
                return Poll::Ready(Ok(()));
            }
            let mut iov = [IoSlice::new(&[]); IOV_BATCH];
            let mut n = 0;
            for (slot, part) in iov.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(part);
                n += 1;
            }
            let mut written = ready!(Pin::new(&mut self.write).poll_write_vectored(cx, &iov[..n]))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.flush_owed = true;
            while written > 0 {
                let front = self.out.front_mut().expect("written bytes were queued");
                if written >= front.len() {
                    written -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(writer: Arc<Writer<W>>, mut outbox: Outbox) {
    // Stop as soon as a sender aborts, even in the middle of a write the peer is not reading.
    let aborted = outbox.aborted();
    let failed = tokio::select! {
        biased;
        () = aborted => {
            // No inline write either from now on; senders get the abort as their error.
            writer.lock().failed = true;
            None
        }
        r = write_queued(&writer, &mut outbox) => r.err(),
    };
    if let Some(e) = failed {
        writer.lock().failed = true;
        outbox.fail(&TransportError::Io(e));
    }
}

/// Write what is queued (and what inline writes left behind) until every sender is gone
/// (`Ok`) or a write fails.
async fn write_queued<W: AsyncWrite + Unpin>(
    writer: &Writer<W>,
    outbox: &mut Outbox,
) -> std::io::Result<()> {
    // Grows with the first messages written; an idle connection holds no batch.
    let mut batch: Vec<Message> = Vec::new();
    loop {
        let closed = tokio::select! {
            biased;
            m = outbox.recv() => match m {
                Some(m) => {
                    batch.push(m);
                    false
                }
                // Every sender is gone and the queue is drained.
                None => true,
            },
            // An inline write left bytes behind, or failed.
            () = writer.wake.notified() => false,
        };
        let mut bytes = batch.first().map_or(0, codec::wire_len);
        while !batch.is_empty() && batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match outbox.try_recv() {
                Some(m) => {
                    bytes += codec::wire_len(&m);
                    batch.push(m);
                }
                None => break,
            }
        }
        {
            let mut st = writer.lock();
            if st.failed {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            for m in &batch {
                st.encode(m);
            }
            // Under the lock, with the messages now in `out`: an inline write sees either the
            // count or the bytes, and so never overtakes them.
            writer
                .queued
                .fetch_sub(batch.len() as isize, Ordering::AcqRel);
        }
        batch.clear();
        let drained = poll_fn(|cx| writer.lock().poll_drain(cx)).await;
        writer.last_write.store(writer.nanos(), Ordering::Relaxed);
        drained?;
        if closed {
            // End the stream cleanly.
            let _ = poll_fn(|cx| Pin::new(&mut writer.lock().write).poll_shutdown(cx)).await;
            return Ok(());
        }
    }
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
