//! The conformance suite over UCX on 127.0.0.1, twice: with `UCX_TLS=tcp`, and with
//! `UCX_TLS=sm,tcp` (shared memory for data; tcp for connection set-up). The transports are set
//! through `UcxConfig`, which wins over the environment; each has its own UCX context.

use std::sync::Arc;
use taskwire_transport::conformance::Harness;
use taskwire_transport::{Address, Registry, Scheme, TransportConfig};
use taskwire_transport_ucx::{UcxConfig, UcxTransport};

/// UCX with the given `UCX_TLS`.
struct Ucx(&'static str);

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
            .register(Arc::new(UcxTransport::new(UcxConfig::new().tls(self.0))))
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

mod tcp {
    use super::Ucx;
    taskwire_transport::conformance_tests!(Ucx("tcp"));
}

mod shared_memory {
    use super::Ucx;
    taskwire_transport::conformance_tests!(Ucx("sm,tcp"));
}
