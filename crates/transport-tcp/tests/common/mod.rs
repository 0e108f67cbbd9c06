//! The raw stream the conformance suite's byte-level cases write to, over TCP or inside a TLS
//! session.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use taskwire_transport::conformance::RawStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A stream `S` whose socket `socket` finds, for [`RawStream::abort`].
pub(crate) struct Raw<S> {
    pub(crate) io: S,
    pub(crate) socket: fn(&S) -> &TcpStream,
}

impl<S: AsyncRead + Unpin> AsyncRead for Raw<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Raw<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> RawStream for Raw<S> {
    fn abort(self: Box<Self>) {
        // SO_LINGER 0 makes close send a reset, as when a peer process is killed mid-write.
        let _ = socket2::SockRef::from((self.socket)(&self.io)).set_linger(Some(Duration::ZERO));
    }
}
