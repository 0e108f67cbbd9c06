//! Messages, connections and listeners: the concrete types every transport hands out.

use crate::address::Address;
use crate::codec;
use crate::config::TransportConfig;
use crate::error::TransportError;
use bytes::Bytes;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One message: an opaque header plus payload frames that are never copied into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The header (an rkyv archive from `taskwire-protocol`, opaque here).
    pub header: Bytes,
    /// Payload frames.
    pub frames: Vec<Bytes>,
}

impl Message {
    /// A message with no payload frames.
    pub fn new(header: Bytes) -> Message {
        Message {
            header,
            frames: Vec::new(),
        }
    }

    /// A message with payload frames.
    pub fn with_frames(header: Bytes, frames: Vec<Bytes>) -> Message {
        Message { header, frames }
    }

    /// Header plus payload bytes.
    pub fn len(&self) -> usize {
        self.header.len() + self.frames.iter().map(Bytes::len).sum::<usize>()
    }

    /// True when there is neither header nor payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
struct SendShared {
    error: Mutex<Option<String>>,
    /// Set by [`ConnSender::abort`]: the writer stops at once, dropping what is queued.
    abort: watch::Sender<bool>,
}

/// A transport's writer that can take a message on the sender's own thread.
///
/// A message written where it is sent skips the hand-off to the writer task, which on an idle
/// machine costs a thread wake-up (tens of µs on a virtual machine) per message. Order is kept
/// by counting the messages queued: a message is written inline only when none is queued or
/// being written ahead of it.
pub(crate) trait InlineWrite: Send + Sync + std::fmt::Debug {
    /// Write `msg` now, if nothing is queued or being written; `Ok(Some(msg))` hands it back
    /// to be queued. Whatever the socket does not take at once is left to the writer task.
    fn try_write(&self, msg: Message) -> Result<Option<Message>, TransportError>;
    /// A message is about to be queued (`-1`: it was not queued after all).
    fn count_queued(&self, delta: isize);
}

/// The sending half of a connection. Cheap to clone; messages are queued (bounded, so a slow
/// peer pushes back) and written by the transport in batches, or written at once by the
/// sender's thread when the transport supports it and nothing is queued ahead.
#[derive(Clone, Debug)]
pub struct ConnSender {
    tx: mpsc::Sender<Message>,
    shared: Arc<SendShared>,
    cfg: Arc<TransportConfig>,
    inline: Option<Arc<dyn InlineWrite>>,
}

/// Counts a message as queued until it is (the count goes back if the send is abandoned).
struct QueuedGuard<'a>(Option<&'a dyn InlineWrite>);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.0 {
            w.count_queued(-1);
        }
    }
}

/// The transport's end of a [`ConnSender`]: the queue its writer drains.
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::Receiver<Message>,
    shared: Arc<SendShared>,
}

impl ConnSender {
    /// A sender and the outbox a transport drains.
    pub fn channel(cfg: Arc<TransportConfig>) -> (ConnSender, Outbox) {
        let (tx, rx) = mpsc::channel(cfg.send_queue.max(1));
        let shared = Arc::new(SendShared {
            error: Mutex::new(None),
            abort: watch::Sender::new(false),
        });
        (
            ConnSender {
                tx,
                shared: shared.clone(),
                cfg,
                inline: None,
            },
            Outbox { rx, shared },
        )
    }

    /// Let `writer` take messages on the sender's thread when nothing is queued.
    pub(crate) fn with_inline(mut self, writer: Arc<dyn InlineWrite>) -> ConnSender {
        self.inline = Some(writer);
        self
    }

    /// Write `msg` inline if the transport can; `Ok(Some(msg))` when it must be queued, with
    /// the queue count already raised (the guard lowers it unless the message is queued).
    fn write_inline(
        &self,
        msg: Message,
    ) -> Result<(Option<Message>, QueuedGuard<'_>), TransportError> {
        match &self.inline {
            None => Ok((Some(msg), QueuedGuard(None))),
            Some(w) => match w.try_write(msg)? {
                None => Ok((None, QueuedGuard(None))),
                Some(msg) => {
                    w.count_queued(1);
                    Ok((Some(msg), QueuedGuard(Some(&**w))))
                }
            },
        }
    }

    fn closed_error(&self) -> TransportError {
        match self.shared.error.lock().expect("send state").clone() {
            Some(reason) => TransportError::Other(format!("connection failed: {reason}")),
            None => TransportError::Closed,
        }
    }

    /// Queue a message, waiting while the queue is full. An error means the connection is gone
    /// (or the message breaks a limit; then the connection stays usable).
    pub async fn send(&self, msg: Message) -> Result<(), TransportError> {
        codec::check_outgoing(&msg, &self.cfg)?;
        let (Some(msg), mut guard) = self.write_inline(msg)? else {
            return Ok(());
        };
        self.tx.send(msg).await.map_err(|_| self.closed_error())?;
        // Queued: the writer lowers the count once it has taken the message.
        guard.0 = None;
        Ok(())
    }

    /// Queue a message without waiting. `Ok(None)` when queued; `Ok(Some(msg))` hands the
    /// message back because the queue is full (the caller decides whether to wait or drop).
    pub fn try_send(&self, msg: Message) -> Result<Option<Message>, TransportError> {
        codec::check_outgoing(&msg, &self.cfg)?;
        let (Some(msg), mut guard) = self.write_inline(msg)? else {
            return Ok(None);
        };
        match self.tx.try_send(msg) {
            Ok(()) => {
                guard.0 = None;
                Ok(None)
            }
            Err(mpsc::error::TrySendError::Full(msg)) => Ok(Some(msg)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.closed_error()),
        }
    }

    /// True once the connection can no longer send.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the connection can no longer send.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Close the connection now, without writing what is queued: for a peer that does not
    /// read what it is sent (a plain close would wait for it to take the queue first). The
    /// queue is dropped and every sender fails from then on. Stream transports honour it.
    pub fn abort(&self) {
        *self.shared.error.lock().expect("send state") = Some("aborted by this side".into());
        self.shared.abort.send_replace(true);
    }
}

impl Outbox {
    /// Next queued message; `None` once every sender is dropped and the queue is empty.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Poll for the next queued message.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }

    /// A queued message if one is ready.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Resolves once a sender has called [`ConnSender::abort`]: the transport then stops
    /// writing and drops the outbox.
    pub fn aborted(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.abort.subscribe();
        async move {
            let _ = rx.wait_for(|a| *a).await;
        }
    }

    /// Record why the connection failed; senders report it from then on.
    pub fn fail(mut self, reason: &TransportError) {
        *self.shared.error.lock().expect("send state") = Some(reason.to_string());
        self.rx.close();
    }
}

/// The receiving half a transport implements. Poll-based so that receiving a message costs no
/// allocation.
pub trait RecvHalf: Send + Sync + 'static {
    /// `Ok(Some(msg))` for a message, `Ok(None)` when the peer closed cleanly between messages,
    /// `Err` when the stream broke (then every later call returns an error too).
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, TransportError>>;

    /// True while part of a message has arrived and the rest has not (what
    /// [`ConnReceiver::recv_finishing_within`] times). Transports that hand over whole
    /// messages keep the default.
    fn mid_message(&self) -> bool {
        false
    }

    /// Limit the next messages to `Some(max_header)` header bytes and no payload frames (for
    /// a handshake), or back to the configured limits (`None`); see
    /// [`Decoder::cap_message`](crate::codec::Decoder::cap_message). Transports that do not
    /// decode a byte stream keep the default (their messages are bounded otherwise).
    fn cap_message(&mut self, _cap: Option<usize>) {}
}

/// The receiving half of a connection.
pub struct ConnReceiver {
    inner: Box<dyn RecvHalf>,
}

impl std::fmt::Debug for ConnReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnReceiver")
    }
}

impl ConnReceiver {
    /// Wrap a transport's receiving half.
    pub fn new(inner: Box<dyn RecvHalf>) -> ConnReceiver {
        ConnReceiver { inner }
    }

    /// Next message; `Ok(None)` when the peer closed cleanly.
    pub async fn recv(&mut self) -> Result<Option<Message>, TransportError> {
        poll_fn(|cx| self.inner.poll_recv(cx)).await
    }

    /// See [`RecvHalf::cap_message`].
    pub fn cap_message(&mut self, cap: Option<usize>) {
        self.inner.cap_message(cap);
    }

    /// Next message, like [`recv`](Self::recv), but once part of a message has arrived the
    /// rest must arrive within `limit`, or this fails with [`TransportError::SlowMessage`]
    /// (and the connection should be dropped: the stream is mid-message). Waiting between
    /// messages is not limited.
    pub async fn recv_finishing_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<Message>, TransportError> {
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        poll_fn(|cx| {
            if let Poll::Ready(r) = self.inner.poll_recv(cx) {
                return Poll::Ready(r);
            }
            if self.inner.mid_message() {
                let d = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if d.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(TransportError::SlowMessage(limit)));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Poll for the next message.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Message>, TransportError>> {
        self.inner.poll_recv(cx)
    }
}

/// An open connection: a sender, a receiver, and the addresses of both ends.
#[derive(Debug)]
pub struct Connection {
    /// Sending half.
    pub sender: ConnSender,
    /// Receiving half.
    pub receiver: ConnReceiver,
    /// Our end.
    pub local: Address,
    /// The peer's end, as seen from here.
    pub peer: Address,
}

impl Connection {
    /// Send a message (see [`ConnSender::send`]).
    pub async fn send(&self, msg: Message) -> Result<(), TransportError> {
        self.sender.send(msg).await
    }

    /// Receive a message (see [`ConnReceiver::recv`]).
    pub async fn recv(&mut self) -> Result<Option<Message>, TransportError> {
        self.receiver.recv().await
    }

    /// Receive a message, treating a clean close as [`TransportError::Closed`].
    pub async fn recv_msg(&mut self) -> Result<Message, TransportError> {
        self.receiver.recv().await?.ok_or(TransportError::Closed)
    }

    /// Split into halves that can live in different tasks.
    pub fn split(self) -> (ConnSender, ConnReceiver) {
        (self.sender, self.receiver)
    }
}

/// A listening endpoint. Dropping it stops listening.
#[derive(Debug)]
pub struct Listener {
    local: Address,
    incoming: mpsc::Receiver<Connection>,
}

impl Listener {
    /// Built by transports: `incoming` is fed by the transport's accept loop, which stops when
    /// the listener is dropped.
    pub fn new(local: Address, incoming: mpsc::Receiver<Connection>) -> Listener {
        Listener { local, incoming }
    }

    /// The address peers connect to (with the real port when listening on port 0).
    pub fn local_addr(&self) -> &Address {
        &self.local
    }

    /// The next incoming connection.
    pub async fn accept(&mut self) -> Result<Connection, TransportError> {
        self.incoming.recv().await.ok_or(TransportError::Closed)
    }
}
