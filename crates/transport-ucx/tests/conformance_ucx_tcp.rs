//! The conformance suite over UCX with `UCX_TLS=tcp` (set through `UcxConfig`, which wins over
//! the environment), on 127.0.0.1.

use std::sync::Arc;
use taskwire_transport::conformance::Harness;
use taskwire_transport::{Address, Registry, Scheme, TransportConfig};
use taskwire_transport_ucx::{UcxConfig, UcxTransport};

struct Ucx;

fn ucx_address(port: u16) -> Address {
    Address::Net {
        scheme: Scheme::Ucx,
        host: "127.0.0.1".into(),
        port,
    }
}

impl Harness for Ucx {
    fn registry(&self) -> Registry {
        Registry::new(TransportConfig::default())
            .register(Arc::new(UcxTransport::new(UcxConfig::new().tls("tcp"))))
    }
    fn listen_address(&self) -> Address {
        ucx_address(0)
    }
    fn closed_address(&self) -> Address {
        // Bind a port, then free it: nothing listens there now.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        ucx_address(port)
    }
}

taskwire_transport::conformance_tests!(Ucx);
