//! The conformance suite on TCP over 127.0.0.1, including the raw-byte cases.

mod common;

use common::Raw;
use taskwire_transport::conformance::{Harness, RawStream};
use taskwire_transport::{Address, BoxFuture, Registry, TransportConfig};
use taskwire_transport_tcp::standard_registry;
use tokio::net::TcpStream;

struct Tcp;

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
            Box::new(Raw {
                io: s,
                socket: |s| s,
            }) as Box<dyn RawStream>
        })
    }
}

taskwire_transport::conformance_tests!(Tcp, bytes);
