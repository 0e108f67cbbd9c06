//! `taskwire security generate`: a fresh cluster CA and the certificates signed by it (the idea
//! of Dask's `Security.temporary()`, written to files so separate processes can share them).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The roles `generate` can make separate certificates for.
pub const ROLES: [&str; 3] = ["scheduler", "worker", "client"];

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A file or the directory could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// Which path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// Options for [`generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// How long the certificates are valid, in days from now.
    pub days: u32,
    /// Also make one certificate per role ([`ROLES`]), besides the shared one.
    pub per_role: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            days: 365,
            per_role: false,
        }
    }
}

/// A certificate and its key, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The role (`cluster` for the shared one).
    pub role: String,
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 600).
    pub key: PathBuf,
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The CA certificate every member trusts (`--tls-ca-file`).
    pub ca_file: PathBuf,
    /// The certificate every member can use (`cluster.pem`, `cluster-key.pem`).
    pub cluster: CertFiles,
    /// Per-role certificates, when asked for.
    pub roles: Vec<CertFiles>,
}

/// Create `dir` (mode 700) if needed and write a new CA certificate (`ca.pem`), one certificate
/// with its key that the scheduler, the workers and the clients can all use (`cluster.pem`,
/// `cluster-key.pem`) and, with `per_role`, one per role (`scheduler.pem`, ...). Keys are
/// written with mode 600. The CA's own key is never written: nobody can sign more certificates
/// for this cluster afterwards (run it again for a new cluster identity). Existing files are
/// not overwritten.
pub fn generate(dir: &Path, opts: &GenerateOptions) -> Result<Generated, GenerateError> {
    let write_err = |path: &Path, e: std::io::Error| GenerateError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| write_err(dir, e))?;
    let mut roles: Vec<&str> = vec!["cluster"];
    if opts.per_role {
        roles.extend(ROLES);
    }
    let ca_file = dir.join("ca.pem");
    let mut planned = vec![ca_file.clone()];
    for r in &roles {
        planned.push(dir.join(format!("{r}.pem")));
        planned.push(dir.join(format!("{r}-key.pem")));
    }
    // Refuse before writing anything, so a second run cannot leave a mix of two identities.
    if let Some(existing) = planned.iter().find(|p| p.exists()) {
        return Err(write_err(
            existing,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "it already exists (remove the old files or choose another directory)",
            ),
        ));
    }

    let (not_before, not_after) = validity(opts.days);
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own per CA: certificate chains are built by issuer name, and two
    // clusters' CAs with one name would read as a bad signature instead of an unknown CA.
    let tag: String = ca_key.public_key_raw()[1..9]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ca.distinguished_name
        .push(DnType::CommonName, format!("Taskwire cluster CA {tag}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    write_file(&ca_file, ca_cert.pem().as_bytes(), 0o644)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut written = Vec::new();
    for role in roles {
        let key = KeyPair::generate()?;
        // The names are informative only: peers check the chain, not the host name.
        let mut p = CertificateParams::new(vec!["taskwire".to_string(), "localhost".to_string()])?;
        p.distinguished_name
            .push(DnType::CommonName, format!("taskwire {role}"));
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every member is a TLS server (its listener) and a TLS client (its connections).
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.not_before = not_before;
        p.not_after = not_after;
        let cert = p.signed_by(&key, &issuer)?;
        let files = CertFiles {
            role: role.to_string(),
            cert: dir.join(format!("{role}.pem")),
            key: dir.join(format!("{role}-key.pem")),
        };
        write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
        written.push(files);
    }
    let cluster = written.remove(0);
    Ok(Generated {
        ca_file,
        cluster,
        roles: written,
    })
}

/// From an hour ago (clocks of cluster hosts differ a little) to `days` from now.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let at = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t).expect("a time within the years 1970-9999")
    };
    (at(now - 3600), at(now + i64::from(days.max(1)) * 86_400))
}

fn write_file(path: &Path, body: &[u8], mode: u32) -> Result<(), GenerateError> {
    let err = |e: std::io::Error| GenerateError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(body).map_err(err)?;
    f.sync_all().map_err(err)
}
