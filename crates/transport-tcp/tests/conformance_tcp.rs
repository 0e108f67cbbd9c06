//! The conformance suite on TCP over 127.0.0.1, including the raw-byte cases.

use std::time::Duration;
use taskwire_transport::conformance::{Harness, RawStream};
use taskwire_transport::{Address, BoxFuture, Registry, TransportConfig};
use taskwire_transport_tcp::standard_registry;
use tokio::net::TcpStream;

struct Tcp;

struct Raw(TcpStream);

impl tokio::io::AsyncRead for Raw {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Raw {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl RawStream for Raw {
    fn abort(self: Box<Self>) {
        // SO_LINGER 0 makes close send a reset, as when a peer process is killed mid-write.
        let _ = socket2::SockRef::from(&self.0).set_linger(Some(Duration::ZERO));
    }
}

impl Harness for Tcp {
    fn registry(&self) -> Registry {
        standard_registry(TransportConfig::default())
    }
    fn listen_address(&self) -> Address {
        Address::tcp("127.0.0.1", 0)
    }
    fn closed_address(&self) -> Address {
        // Bind a port, then free it: nothing listens there now.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        Address::tcp("127.0.0.1", port)
    }
    fn raw_connect<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, Box<dyn RawStream>> {
        Box::pin(async move {
            let s = TcpStream::connect(addr.socket_str().unwrap())
                .await
                .expect("raw connect");
            Box::new(Raw(s)) as Box<dyn RawStream>
        })
    }
}

taskwire_transport::conformance_tests!(Tcp, bytes);
