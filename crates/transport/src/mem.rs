//! `inproc://name`: connections inside one process, through channels. Messages move by
//! ownership, so nothing is copied or encoded; limits are still enforced on send.

use crate::address::{Address, Scheme};
use crate::config::TransportConfig;
use crate::connection::{ConnReceiver, ConnSender, Connection, Listener, Outbox, RecvHalf};
use crate::error::TransportError;
use crate::registry::{BoxFuture, Transport};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// The in-memory transport.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemTransport;

fn listeners() -> &'static Mutex<HashMap<String, mpsc::Sender<Connection>>> {
    static LISTENERS: OnceLock<Mutex<HashMap<String, mpsc::Sender<Connection>>>> = OnceLock::new();
    LISTENERS.get_or_init(Default::default)
}

/// A fresh, unused `inproc://` address starting with `prefix`.
pub fn unique_address(prefix: &str) -> Address {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Address::inproc(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

struct MemRecv(Outbox);

impl RecvHalf for MemRecv {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message>, TransportError>> {
        self.0.poll_recv(cx).map(Ok)
    }
}

use crate::connection::Message;

impl Transport for MemTransport {
    fn scheme(&self) -> Scheme {
        Scheme::Inproc
    }

    fn listen<'a>(
        &'a self,
        addr: &'a Address,
        cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Listener, TransportError>> {
        Box::pin(async move {
            let Address::Inproc(name) = addr else {
                return Err(TransportError::WrongAddress(addr.to_string()));
            };
            let addr = if name.is_empty() || name == "0" {
                unique_address("auto")
            } else {
                addr.clone()
            };
            let Address::Inproc(name) = &addr else {
                unreachable!("inproc address")
            };
            let mut map = listeners().lock().expect("inproc listeners");
            if map.get(name).is_some_and(|tx| !tx.is_closed()) {
                return Err(TransportError::Listen {
                    addr: addr.to_string(),
                    reason: "address in use".into(),
                });
            }
            let (tx, rx) = mpsc::channel(cfg.backlog.max(1) as usize);
            map.insert(name.clone(), tx);
            Ok(Listener::new(addr, rx))
        })
    }

    fn connect<'a>(
        &'a self,
        addr: &'a Address,
        cfg: Arc<TransportConfig>,
    ) -> BoxFuture<'a, Result<Connection, TransportError>> {
        Box::pin(async move {
            let Address::Inproc(name) = addr else {
                return Err(TransportError::WrongAddress(addr.to_string()));
            };
            let refused = |reason: &str| TransportError::Connect {
                addr: addr.to_string(),
                reason: reason.into(),
            };
            let accept_queue = {
                let mut map = listeners().lock().expect("inproc listeners");
                match map.get(name) {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    Some(_) => {
                        map.remove(name);
                        return Err(refused("connection refused (listener closed)"));
                    }
                    None => return Err(refused("connection refused (nothing listens there)")),
                }
            };
            let (to_server, server_inbox) = ConnSender::channel(cfg.clone());
            let (to_client, client_inbox) = ConnSender::channel(cfg);
            let client_addr = unique_address("client");
            let server_side = Connection {
                sender: to_client,
                receiver: ConnReceiver::new(Box::new(MemRecv(server_inbox))),
                local: addr.clone(),
                peer: client_addr.clone(),
            };
            match accept_queue.try_send(server_side) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(refused("accept backlog full"));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(refused("connection refused (listener closed)"));
                }
            }
            Ok(Connection {
                sender: to_server,
                receiver: ConnReceiver::new(Box::new(MemRecv(client_inbox))),
                local: client_addr,
                peer: addr.clone(),
            })
        })
    }
}
