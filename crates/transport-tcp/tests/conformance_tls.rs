//! The conformance suite on TLS over 127.0.0.1 (raw-byte cases inside a TLS session), and what
//! TLS adds: mutual authentication against the cluster CA, and clear errors for a plain peer,
//! a certificate from another CA, and missing files.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
mod common;

use common::Raw;
use taskwire_transport::conformance::{Harness, RawStream};
use taskwire_transport::{Address, BoxFuture, Message, Registry, Scheme, TransportConfig};
use taskwire_transport_tcp::tls::{self, GenerateOptions};
use taskwire_transport_tcp::{Security, TlsConfig, TlsError, TlsFiles, standard_registry};
use tokio::net::TcpStream;

/// A fresh directory under the system's temp dir, removed by the caller's process exit at
/// the latest (each test binary run makes its own).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskwire-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A cluster identity generated as `taskwire security generate` does, once per test binary.
fn cluster(name: &str) -> TlsFiles {
    let g = tls::generate(&scratch(name), &GenerateOptions::default()).expect("generate");
    TlsFiles {
        ca_file: g.ca_file,
        cert: g.cluster.cert,
        key: g.cluster.key,
    }
}

fn ours() -> &'static TlsConfig {
    static C: OnceLock<TlsConfig> = OnceLock::new();
    C.get_or_init(|| TlsConfig::load(&cluster("ours")).expect("load"))
}

fn theirs() -> &'static TlsConfig {
    static C: OnceLock<TlsConfig> = OnceLock::new();
    C.get_or_init(|| TlsConfig::load(&cluster("theirs")).expect("load"))
}

fn registry(tls: &TlsConfig) -> Registry {
    Security::new()
        .tls(tls.clone())
        .registry(TransportConfig::default())
}

struct Tls;

impl Harness for Tls {
    fn registry(&self) -> Registry {
        registry(ours())
    }
    fn listen_address(&self) -> Address {
        "tls://127.0.0.1:0".parse().unwrap()
    }
    fn closed_address(&self) -> Address {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("tls://127.0.0.1:{port}").parse().unwrap()
    }
    fn raw_connect<'a>(&'a self, addr: &'a Address) -> BoxFuture<'a, Box<dyn RawStream>> {
        Box::pin(async move {
            let s = TcpStream::connect(addr.socket_str().unwrap())
                .await
                .expect("raw connect");
            let connector = tokio_rustls::TlsConnector::from(ours().client_config());
            let name = rustls::pki_types::ServerName::try_from("taskwire").unwrap();
            let tls = connector.connect(name, s).await.expect("raw TLS handshake");
            Box::new(Raw {
                io: tls,
                socket: |t| t.get_ref().0,
            }) as Box<dyn RawStream>
        })
    }
}

taskwire_transport::conformance_tests!(Tls, bytes);

/// Listen on tls://127.0.0.1 with our cluster identity; the listener and its address.
async fn tls_listener() -> (taskwire_transport::Listener, Address) {
    let l = registry(ours())
        .listen(&"tls://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let a = l.local_addr().clone();
    assert_eq!(a.scheme(), Scheme::Tls);
    (l, a)
}

/// A client without TLS (someone who forgot the flags, or a scanner) reaching a TLS listener
/// hears that the peer speaks TLS, and the listener goes on serving members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_peer_hears_the_listener_speaks_tls() {
    let (mut l, addr) = tls_listener().await;
    let plain = Address::tcp("127.0.0.1", addr.port().unwrap());
    let mut conn = standard_registry(TransportConfig::default())
        .connect(&plain)
        .await
        .expect("TCP connects");
    conn.send(Message::new(bytes::Bytes::from_static(b"hello")))
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), conn.recv())
        .await
        .expect("no hang")
        .expect_err("a plain peer gets no message");
    let text = err.to_string();
    assert!(
        text.contains("speaks TLS") && text.contains("tls://"),
        "{text}"
    );
    // The listener still serves a member.
    let member = registry(ours());
    let (c, s) = tokio::join!(member.connect(&addr), l.accept());
    let (c, mut s) = (c.unwrap(), s.unwrap());
    c.send(Message::new(bytes::Bytes::from_static(b"member")))
        .await
        .unwrap();
    assert_eq!(&s.recv_msg().await.unwrap().header[..], b"member");
}

/// A member of another cluster (another CA) cannot connect, and is told why in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused_both_ways() {
    let (mut l, addr) = tls_listener().await;
    // Their client refuses our server: our certificate is not signed by their CA.
    let err = registry(theirs()).connect(&addr).await.unwrap_err();
    assert!(
        err.to_string().contains("not signed by the cluster CA"),
        "{err}"
    );
    // A client that trusts our CA but presents a certificate from another: our server refuses
    // it (under TLS 1.3 the client hears so on its first read).
    let mixed_dir = scratch("mixed");
    std::fs::create_dir_all(&mixed_dir).unwrap();
    let mixed = TlsConfig::load(&TlsFiles {
        ca_file: ours().files().ca_file.clone(),
        ..theirs().files().clone()
    });
    // Loading itself says the pair does not fit together.
    let e = mixed.unwrap_err();
    assert!(
        matches!(e, TlsError::Invalid(_)) && e.to_string().contains("not valid under the CA"),
        "{e}"
    );
    // Forge the mix past the load check: trust their CA and ours, present theirs.
    let both = mixed_dir.join("both-ca.pem");
    let mut pem = std::fs::read(&ours().files().ca_file).unwrap();
    pem.extend(std::fs::read(&theirs().files().ca_file).unwrap());
    std::fs::write(&both, pem).unwrap();
    let forged = TlsConfig::load(&TlsFiles {
        ca_file: both,
        ..theirs().files().clone()
    })
    .unwrap();
    let outcome = async {
        let mut c = registry(&forged).connect(&addr).await?;
        c.send(Message::new(bytes::Bytes::from_static(b"let me in")))
            .await?;
        c.recv_msg().await.map(|_| ())
    };
    let err = tokio::time::timeout(Duration::from_secs(20), outcome)
        .await
        .expect("no hang")
        .expect_err("a foreign certificate is refused");
    assert!(err.to_string().contains("refused our certificate"), "{err}");
    // The listener still serves a member.
    let member = registry(ours());
    let (c, s) = tokio::join!(member.connect(&addr), l.accept());
    let (c, mut s) = (c.unwrap(), s.unwrap());
    c.send(Message::new(bytes::Bytes::from_static(b"member")))
        .await
        .unwrap();
    assert_eq!(&s.recv_msg().await.unwrap().header[..], b"member");
}

/// A TLS client at a plain TCP listener fails its handshake with a hint, within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_at_a_plain_listener_fails_clearly() {
    let plain = standard_registry(TransportConfig::default());
    let mut l = plain.listen(&Address::tcp("127.0.0.1", 0)).await.unwrap();
    let port = l.local_addr().port().unwrap();
    let server = tokio::spawn(async move {
        let mut c = l.accept().await.unwrap();
        c.recv().await.unwrap_err().to_string()
    });
    let addr: Address = format!("tls://127.0.0.1:{port}").parse().unwrap();
    let err = registry(ours()).connect(&addr).await.unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    let seen = server.await.unwrap();
    assert!(seen.contains("speaks TLS"), "{seen}");
}

#[test]
fn missing_and_bad_files_are_named() {
    let files = ours().files().clone();
    let missing_key = TlsFiles {
        key: PathBuf::from("/nonexistent/cluster-key.pem"),
        ..files.clone()
    };
    let e = TlsConfig::load(&missing_key).unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent/cluster-key.pem") && e.contains("--tls-key"),
        "{e}"
    );
    // A certificate given where the key belongs.
    let swapped = TlsFiles {
        key: files.cert.clone(),
        ..files.clone()
    };
    let e = TlsConfig::load(&swapped).unwrap_err().to_string();
    assert!(e.contains("no usable private key"), "{e}");
    let e = TlsFiles::from_parts(Some(files.ca_file.clone()), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tls-cert, --tls-key"), "{e}");
}

#[test]
fn generated_keys_are_private_and_files_are_not_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("roles");
    let g = tls::generate(
        &dir,
        &GenerateOptions {
            per_role: true,
            ..GenerateOptions::default()
        },
    )
    .unwrap();
    assert_eq!(g.roles.len(), 3);
    for f in std::iter::once(&g.cluster).chain(&g.roles) {
        let mode = std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.key.display());
        // Each role's certificate is a valid member of the cluster.
        TlsConfig::load(&TlsFiles {
            ca_file: g.ca_file.clone(),
            cert: f.cert.clone(),
            key: f.key.clone(),
        })
        .unwrap();
    }
    let again = tls::generate(&dir, &GenerateOptions::default()).unwrap_err();
    assert!(again.to_string().contains("already exists"), "{again}");
}

/// Under `require_encryption`, plain TCP is refused on both ends with the reason.
#[tokio::test]
async fn require_encryption_refuses_plain_tcp() {
    let reg = Security::new()
        .tls(ours().clone())
        .require_encryption(true)
        .registry(TransportConfig::default());
    let e = reg
        .listen(&Address::tcp("127.0.0.1", 0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--require-encryption") && e.contains("tls://"),
        "{e}"
    );
    let e = reg
        .connect(&Address::tcp("127.0.0.1", 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("requires encryption"), "{e}");
    // TLS itself works.
    let mut l = reg
        .listen(&"tls://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = l.local_addr().clone();
    let (c, s) = tokio::join!(reg.connect(&addr), l.accept());
    c.unwrap();
    s.unwrap();
}

/// A peer that connects to a TLS port and says nothing (a port scanner, a stuck client) holds
/// up no one, and is dropped once the connect timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_and_blocks_no_one() {
    use tokio::io::AsyncReadExt;
    let cfg = TransportConfig {
        connect_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    };
    let reg = Security::new().tls(ours().clone()).registry(cfg);
    let mut l = reg
        .listen(&"tls://127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = l.local_addr().clone();
    let mut silent = TcpStream::connect(addr.socket_str().unwrap())
        .await
        .unwrap();
    // A member gets in while the silent peer waits.
    let (c, s) = tokio::join!(reg.connect(&addr), l.accept());
    c.unwrap();
    s.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
        .await
        .expect("the listener drops a silent peer");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}
