//! The conformance suite on the in-memory transport.

use taskwire_transport::conformance::Harness;
use taskwire_transport::{Address, Registry, mem};

struct Mem;

impl Harness for Mem {
    fn registry(&self) -> Registry {
        Registry::default()
    }
    fn listen_address(&self) -> Address {
        mem::unique_address("conformance")
    }
    fn closed_address(&self) -> Address {
        mem::unique_address("nobody-listens")
    }
}

taskwire_transport::conformance_tests!(Mem);
