//! Loading a cluster's certificates into rustls configurations, and the server-certificate
//! check that trusts the cluster CA without matching host names.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS configuration could not be loaded. Each message names the file and the flag that
/// gave it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the TLS {what} {path} ({flag}): {reason}")]
    Read {
        /// Which file ("CA file", "certificate", "key").
        what: &'static str,
        /// The flag that names it.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// A file holds no usable PEM object of the kind expected.
    #[error("the TLS {what} {path} ({flag}) {problem}")]
    Content {
        /// Which file.
        what: &'static str,
        /// The flag that names it.
        flag: &'static str,
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The files do not fit together (key and certificate, certificate and CA).
    #[error("TLS configuration: {0}")]
    Invalid(String),
    /// Only some of the three files were given.
    #[error(
        "TLS needs all three of --tls-ca-file, --tls-cert and --tls-key (missing: {0}); \
         `taskwire security generate DIR` makes them"
    )]
    Incomplete(String),
}

/// The three files of a cluster member's TLS identity, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate: peers must present a certificate it signed.
    pub ca_file: PathBuf,
    /// This process's certificate (chain), signed by the CA.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files from three optional settings: `None` when none is given, an error naming the
    /// missing ones when only some are.
    pub fn from_parts(
        ca_file: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca_file, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca_file), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca_file, cert, key })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    (ca.is_none(), "--tls-ca-file"),
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                ]
                .into_iter()
                .filter_map(|(m, f)| m.then_some(f))
                .collect();
                Err(TlsError::Incomplete(missing.join(", ")))
            }
        }
    }
}

/// A loaded TLS identity: what a process presents and what it trusts, for both sides of a
/// connection. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
    files: TlsFiles,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

const CA: (&str, &str) = ("CA file", "--tls-ca-file");
const CERT: (&str, &str) = ("certificate", "--tls-cert");
const KEY: (&str, &str) = ("key", "--tls-key");

fn read(path: &Path, (what, flag): (&'static str, &'static str)) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        flag,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn content(path: &Path, (what, flag): (&'static str, &'static str), problem: String) -> TlsError {
    TlsError::Content {
        what,
        flag,
        path: path.to_path_buf(),
        problem,
    }
}

fn certificates(
    path: &Path,
    kind: (&'static str, &'static str),
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, kind)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(path, kind, format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(content(
            path,
            kind,
            "holds no certificate (expected a PEM 'BEGIN CERTIFICATE' block)".into(),
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, KEY)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        content(
            path,
            KEY,
            format!("holds no usable private key (expected a PEM 'BEGIN PRIVATE KEY' block): {e}"),
        )
    })
}

/// The one crypto provider Taskwire uses: ring (Rust and assembly, no C build step), with
/// AES-128-GCM first: a listener picks its own preference, and AES-128 costs less CPU per byte
/// than ring's default first choice, AES-256 (both remain allowed).
fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|c| {
        !matches!(
            c.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// TLS 1.3 and 1.2; nothing older (rustls has nothing older).
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

impl TlsConfig {
    /// Load the CA, certificate and key: the server side requires a client certificate signed
    /// by the CA, the client side accepts a server whose certificate the CA signed. Host names
    /// are not checked (see [`crate::tls`]).
    pub fn load(files: &TlsFiles) -> Result<TlsConfig, TlsError> {
        let ca = certificates(&files.ca_file, CA)?;
        let chain = certificates(&files.cert, CERT)?;
        let key = private_key(&files.key)?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| {
                content(
                    &files.ca_file,
                    CA,
                    format!("holds a certificate that cannot be a CA: {e}"),
                )
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        // Our own certificate must chain to the CA we trust, or every peer would refuse it:
        // say so now rather than on each connection.
        let leaf = ParsedCertificate::try_from(&chain[0]).map_err(|e| {
            content(
                &files.cert,
                CERT,
                format!("holds a certificate that cannot be parsed: {e}"),
            )
        })?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            TlsError::Invalid(format!(
                "the certificate {} is not valid under the CA {}: {}",
                files.cert.display(),
                files.ca_file.display(),
                super::describe(&e)
            ))
        })?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Invalid(format!("client certificate check: {e}")))?;
        let mismatch = |e: rustls::Error| {
            TlsError::Invalid(format!(
                "the key {} does not fit the certificate {}: {e}",
                files.key.display(),
                files.cert.display()
            ))
        };
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        server.ignore_client_order = true;
        // No session tickets: connections are long-lived, and a ticket the client never reads
        // (a sender that only sends) would make its close a reset that loses data in flight.
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterCaVerifier { roots, provider }))
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(TlsConfig {
            server: Arc::new(server),
            client: Arc::new(client),
            files: files.clone(),
        })
    }

    /// The rustls configuration for connecting (for tools that drive a TLS stream themselves).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The rustls configuration for accepting.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The files this configuration was loaded from (a nanny passes them to its workers).
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Accepts a server whose certificate chains to the cluster CA and is within its validity
/// period, whatever host names it carries: cluster members run on whatever hosts they were
/// started on, and a certificate per host would make `taskwire security generate` useless for
/// a batch system that picks the hosts. Signatures are checked as usual.
#[derive(Debug)]
struct ClusterCaVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ClusterCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
