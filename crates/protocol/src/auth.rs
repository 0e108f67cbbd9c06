//! Authentication with a shared cluster token, and the handshake state machines that use it.
//!
//! A cluster started with a token (`--auth-token-file FILE`, the HyperQueue way) accepts only
//! peers that hold the same token. The token never crosses the wire; both sides prove they hold
//! it with HMAC-SHA256 over fresh nonces, and each checks the other's proof in constant time:
//!
//! ```text
//! client                                             server
//!   Hello { role, name, nonce = Nc (32 random bytes) }  ->
//!                          <-  Welcome::challenge { nonce = Ns, proof = Ps }
//!   check Ps == HMAC(K, "taskwire/2 server" | role | name | Nc | Ns)
//!   AuthProof { Pc = HMAC(K, "taskwire/2 client" | role | name | Nc | Ns) } ->
//!                          <-  Welcome::accept(name)   (or refuse, then close)
//! ```
//!
//! Both nonces bind each proof to this connection, so a recorded exchange cannot be replayed,
//! and the labels keep a server's proof from being reflected back as a client's. Mutual: a
//! peer that does not hold the token cannot pose as the scheduler or a worker either.
//!
//! Without a token on either side the exchange is the plain Hello / Welcome. A server with a
//! token refuses a Hello without a nonce (one round trip, clear error). A client with a token
//! that is accepted without a challenge refuses to go on ([`HandshakeError::PeerUnauthenticated`]):
//! no silent downgrade.
//!
//! What this does not do: encrypt. An attacker who can read the traffic sees the messages
//! (task arguments, results) and one who can modify it can take over an authenticated
//! connection; that needs TLS.

use crate::handshake::{
    Answer, Challenge, HandshakeError, Hello, Role, Welcome, encode_proof, read_answer, read_hello,
    read_proof,
};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 32;

/// The one line a peer refused for its token reads (never says which of wrong or missing).
pub const AUTH_FAILED: &str = "authentication failed: wrong or missing cluster token";

/// Longest token accepted.
const MAX_SECRET: usize = 64 * 1024;

/// A shared cluster token. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// A cluster token could not be read, made or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The token is empty (after trimming whitespace) or too long.
    #[error("cluster token {0}")]
    Invalid(String),
    /// Reading or writing the token file failed.
    #[error("cluster token file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ClusterSecret {
    /// A token from its bytes; leading and trailing whitespace is dropped (so a file edited by
    /// hand keeps working), and what remains must not be empty.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<ClusterSecret, SecretError> {
        let b = bytes.as_ref().trim_ascii();
        if b.is_empty() {
            return Err(SecretError::Invalid("is empty".into()));
        }
        if b.len() > MAX_SECRET {
            return Err(SecretError::Invalid(format!(
                "is longer than {MAX_SECRET} bytes"
            )));
        }
        Ok(ClusterSecret(b.to_vec()))
    }

    /// A fresh random token: 32 bytes from the operating system, written as 64 hex digits.
    pub fn generate() -> ClusterSecret {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("the operating system's random number generator");
        ClusterSecret(hex(&raw).into_bytes())
    }

    /// The token as text, to be written into a file only its owner can read (the scheduler
    /// file); `None` for a token that is not UTF-8.
    pub fn expose_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Refuse a file that holds a token when others than its owner can read or write it (on
    /// Unix; as ssh does with private keys): `chmod 600 FILE`.
    pub fn check_private(path: &Path) -> Result<(), SecretError> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| SecretError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(SecretError::File {
                    path: path.to_path_buf(),
                    reason: format!(
                        "is accessible by group or others (mode {:o}); run chmod 600 on it",
                        mode & 0o777
                    ),
                });
            }
        }
        #[cfg(not(unix))]
        let _ = path;
        Ok(())
    }

    /// The token's text as stored in a token file (the token and a newline), for handing it
    /// to another host over a channel that is already secure (an ssh session's stdin).
    pub fn file_text(&self) -> Vec<u8> {
        let mut t = self.0.clone();
        t.push(b'\n');
        t
    }

    /// Read a token file. On Unix a file that others than its owner can read or write is
    /// refused (as ssh does with private keys): `chmod 600 FILE`.
    pub fn read_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let err = |reason: String| SecretError::File {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        ClusterSecret::check_private(path)?;
        ClusterSecret::new(bytes).map_err(|e| err(e.to_string()))
    }

    /// Write the token to a new file that only its owner can read (mode 600 on Unix), as a
    /// token file; fails with `AlreadyExists` when the file exists.
    pub fn write_new_file(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(path)?;
        f.write_all(&self.file_text())?;
        f.sync_all()
    }

    /// Read the token file, or when it does not exist create it (mode 0600) with a fresh
    /// [`generate`](ClusterSecret::generate)d token. Returns the token and whether it was made.
    pub fn read_or_create(path: &Path) -> Result<(ClusterSecret, bool), SecretError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Ok((ClusterSecret::read_file(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SecretError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
        let secret = ClusterSecret::generate();
        let written = secret.write_new_file(path);
        match written {
            Ok(()) => Ok((secret, true)),
            // Someone else created it first (two processes started together): use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((ClusterSecret::read_file(path)?, false))
            }
            Err(e) => Err(SecretError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    fn mac(&self, label: &[u8], role: Role, name: &str, cn: &[u8], sn: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        m.update(label);
        m.update(&[role.to_byte()]);
        m.update(&(name.len() as u32).to_le_bytes());
        m.update(name.as_bytes());
        m.update(cn);
        m.update(sn);
        m
    }
}

impl ClusterSecret {
    /// The answer to a line-protocol challenge (a nanny's control port): lowercase hex of
    /// HMAC-SHA256(token, "taskwire/2 nanny-control " + challenge), which a shell can compute
    /// too: `printf 'taskwire/2 nanny-control %s' CHALLENGE | openssl dgst -sha256 -hmac "$(cat FILE)"`.
    pub fn control_response(&self, challenge: &str) -> String {
        hex(&self.control_mac(challenge).finalize().into_bytes())
    }

    /// Whether `response` answers `challenge` (compared in constant time).
    pub fn verify_control_response(&self, challenge: &str, response: &str) -> bool {
        let Some(bytes) = unhex(response.trim()) else {
            return false;
        };
        self.control_mac(challenge).verify_slice(&bytes).is_ok()
    }

    fn control_mac(&self, challenge: &str) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        m.update(CONTROL_LABEL);
        m.update(challenge.as_bytes());
        m
    }
}

impl ClusterSecret {
    /// The credential for a process's HTTP pages (dashboard, JSON API, `/metrics`): lowercase
    /// hex of HMAC-SHA256(token, "taskwire/2 http-credential"). It goes in links and
    /// `Authorization: Bearer` headers instead of the token, which it does not reveal; the same
    /// on every process of the cluster. A shell computes it as
    /// `printf 'taskwire/2 http-credential' | openssl dgst -sha256 -hmac "$(cat FILE)"`.
    pub fn http_credential(&self) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        m.update(HTTP_LABEL);
        hex(&m.finalize().into_bytes())
    }
}

const HTTP_LABEL: &[u8] = b"taskwire/2 http-credential";

/// A fresh challenge for a line protocol: 32 random bytes as 64 hex digits.
pub fn control_challenge() -> String {
    hex(&nonce())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

const CONTROL_LABEL: &[u8] = b"taskwire/2 nanny-control ";
const SERVER_LABEL: &[u8] = b"taskwire/2 server";
const CLIENT_LABEL: &[u8] = b"taskwire/2 client";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the operating system's random number generator");
    n
}

/// The next thing a connecting side does.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Send these bytes (one message) and feed the answer to
    /// [`ClientHandshake::on_message`].
    Send(Bytes),
    /// The handshake is done; the peer's name.
    Accepted(String),
}

#[derive(Debug)]
enum ClientState {
    AwaitAnswer,
    AwaitFinal,
    Done,
}

/// The connecting side of a handshake, without I/O: send [`hello`](ClientHandshake::hello),
/// then feed each message received to [`on_message`](ClientHandshake::on_message) until it
/// says [`ClientStep::Accepted`].
#[derive(Debug)]
pub struct ClientHandshake {
    role: Role,
    name: String,
    secret: Option<ClusterSecret>,
    nonce: [u8; NONCE_LEN],
    state: ClientState,
}

impl ClientHandshake {
    /// A handshake as `role` named `name`, proving `secret` when there is one.
    pub fn new(role: Role, name: impl Into<String>, secret: Option<ClusterSecret>) -> Self {
        ClientHandshake {
            role,
            name: name.into(),
            nonce: if secret.is_some() {
                nonce()
            } else {
                [0; NONCE_LEN]
            },
            secret,
            state: ClientState::AwaitAnswer,
        }
    }

    /// The first message.
    pub fn hello(&self) -> Bytes {
        let mut h = Hello::new(self.role, self.name.clone());
        if self.secret.is_some() {
            h.nonce = self.nonce.to_vec();
        }
        h.encode()
    }

    /// Feed the next message from the peer.
    pub fn on_message(&mut self, bytes: &[u8]) -> Result<ClientStep, HandshakeError> {
        let answer = read_answer(bytes)?;
        match (&self.state, answer, &self.secret) {
            (ClientState::AwaitAnswer, Answer::Welcome(w), None)
            | (ClientState::AwaitFinal, Answer::Welcome(w), Some(_)) => {
                self.state = ClientState::Done;
                Ok(ClientStep::Accepted(w.result.unwrap_or_default()))
            }
            (ClientState::AwaitAnswer, Answer::Welcome(_), Some(_)) => {
                Err(HandshakeError::PeerUnauthenticated)
            }
            (ClientState::AwaitAnswer, Answer::Challenge(_), None) => {
                Err(HandshakeError::TokenRequired)
            }
            (ClientState::AwaitAnswer, Answer::Challenge(c), Some(secret)) => {
                if c.nonce.len() != NONCE_LEN {
                    return Err(HandshakeError::BadPeerProof);
                }
                secret
                    .mac(SERVER_LABEL, self.role, &self.name, &self.nonce, &c.nonce)
                    .verify_slice(&c.proof)
                    .map_err(|_| HandshakeError::BadPeerProof)?;
                let proof = secret
                    .mac(CLIENT_LABEL, self.role, &self.name, &self.nonce, &c.nonce)
                    .finalize()
                    .into_bytes();
                self.state = ClientState::AwaitFinal;
                Ok(ClientStep::Send(encode_proof(&proof)))
            }
            _ => Err(HandshakeError::Unexpected),
        }
    }
}

/// The next thing an accepting side does.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// The peer is in (authenticated when this side has a token): answer with
    /// [`Welcome::accept`], or [`Welcome::refuse`] if its role is not served here.
    Accept(Hello),
    /// Send these bytes and feed the peer's next message to [`ServerHandshake::on_message`].
    Reply(Bytes),
    /// Send `reply` (a refusal the peer shows its user) and close; `reason` is for the log.
    Refuse {
        /// The refusal to send.
        reply: Bytes,
        /// Why, in more detail than the peer is told.
        reason: String,
        /// Whether the peer failed to authenticate (rather than speaking garbage or another
        /// protocol version).
        auth_failure: bool,
    },
}

#[derive(Debug)]
enum ServerState {
    AwaitHello,
    AwaitProof(Box<Hello>, [u8; NONCE_LEN]),
    Done,
}

/// The accepting side of a handshake, without I/O: feed each message received to
/// [`on_message`](ServerHandshake::on_message) and do what it says.
#[derive(Debug)]
pub struct ServerHandshake {
    secret: Option<ClusterSecret>,
    state: ServerState,
}

fn refuse(text: &str, reason: impl Into<String>) -> ServerStep {
    ServerStep::Refuse {
        reply: Welcome::refuse(text).encode(),
        reason: reason.into(),
        auth_failure: text == AUTH_FAILED,
    }
}

impl ServerHandshake {
    /// Accept peers that prove `secret`, or anyone when there is none.
    pub fn new(secret: Option<ClusterSecret>) -> Self {
        ServerHandshake {
            secret,
            state: ServerState::AwaitHello,
        }
    }

    /// Whether a token is required.
    pub fn requires_token(&self) -> bool {
        self.secret.is_some()
    }

    /// Feed the next message from the peer.
    pub fn on_message(&mut self, bytes: &[u8]) -> ServerStep {
        match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::AwaitHello => {
                let hello = match read_hello(bytes) {
                    Ok(h) => h,
                    Err(e) => return refuse(&e.to_string(), e.to_string()),
                };
                let Some(secret) = &self.secret else {
                    return ServerStep::Accept(hello);
                };
                if hello.nonce.is_empty() {
                    return refuse(AUTH_FAILED, "no cluster token");
                }
                if hello.nonce.len() != NONCE_LEN {
                    return refuse(AUTH_FAILED, "malformed handshake nonce");
                }
                let sn = nonce();
                let proof = secret
                    .mac(SERVER_LABEL, hello.role, &hello.name, &hello.nonce, &sn)
                    .finalize()
                    .into_bytes()
                    .to_vec();
                let reply = Challenge {
                    nonce: sn.to_vec(),
                    proof,
                }
                .encode();
                self.state = ServerState::AwaitProof(Box::new(hello), sn);
                ServerStep::Reply(reply)
            }
            ServerState::AwaitProof(hello, sn) => {
                let secret = self.secret.as_ref().expect("only with a token");
                let proof = match read_proof(bytes) {
                    Ok(p) => p,
                    Err(e) => return refuse(AUTH_FAILED, format!("malformed proof: {e}")),
                };
                match secret
                    .mac(CLIENT_LABEL, hello.role, &hello.name, &hello.nonce, &sn)
                    .verify_slice(&proof)
                {
                    Ok(()) => ServerStep::Accept(*hello),
                    Err(_) => refuse(AUTH_FAILED, "wrong cluster token"),
                }
            }
            ServerState::Done => refuse("unexpected handshake message", "message after the end"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Option<ClusterSecret> {
        Some(ClusterSecret::new(s).unwrap())
    }

    /// Run a whole exchange; the client's result and the server's last step.
    fn run(
        client: Option<ClusterSecret>,
        server: Option<ClusterSecret>,
    ) -> (Result<String, HandshakeError>, Option<ServerStep>) {
        let mut c = ClientHandshake::new(Role::Worker, "w-1", client);
        let mut s = ServerHandshake::new(server);
        let mut to_server = c.hello();
        loop {
            let step = s.on_message(&to_server);
            let to_client = match &step {
                ServerStep::Accept(_) => Welcome::accept("sched").encode(),
                ServerStep::Reply(b) => b.clone(),
                ServerStep::Refuse { reply, .. } => reply.clone(),
            };
            let last = !matches!(step, ServerStep::Reply(_));
            match c.on_message(&to_client) {
                Ok(ClientStep::Accepted(name)) => return (Ok(name), Some(step)),
                Ok(ClientStep::Send(b)) if !last => to_server = b,
                Ok(ClientStep::Send(_)) => panic!("client sends after the server finished"),
                Err(e) => return (Err(e), last.then_some(step)),
            }
        }
    }

    #[test]
    fn no_token_either_side_is_todays_handshake() {
        let (r, step) = run(None, None);
        assert_eq!(r.unwrap(), "sched");
        assert!(matches!(step, Some(ServerStep::Accept(h)) if h.nonce.is_empty()));
    }

    #[test]
    fn same_token_is_accepted() {
        let (r, step) = run(secret("s3cret"), secret("s3cret\n"));
        assert_eq!(r.unwrap(), "sched");
        assert!(matches!(step, Some(ServerStep::Accept(h)) if h.name == "w-1"));
    }

    #[test]
    fn wrong_token_fails_on_both_sides() {
        // The client already sees that the server's proof does not match and stops.
        let (r, _) = run(secret("a"), secret("b"));
        assert_eq!(r.unwrap_err(), HandshakeError::BadPeerProof);
        // A client that sends a proof made with another token is refused by the server.
        let mut s = ServerHandshake::new(secret("b"));
        let mut c = ClientHandshake::new(Role::Client, "c", secret("b"));
        let ServerStep::Reply(challenge) = s.on_message(&c.hello()) else {
            panic!("no challenge")
        };
        c.on_message(&challenge).unwrap();
        let forged = encode_proof(&[0u8; 32]);
        match s.on_message(&forged) {
            ServerStep::Refuse {
                reply,
                reason,
                auth_failure,
            } => {
                assert!(auth_failure);
                assert_eq!(reason, "wrong cluster token");
                assert_eq!(
                    read_answer(&reply).unwrap_err(),
                    HandshakeError::Refused(AUTH_FAILED.into())
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_token_is_refused_with_the_clear_line() {
        let (r, step) = run(None, secret("t"));
        let e = r.unwrap_err();
        assert_eq!(e, HandshakeError::Refused(AUTH_FAILED.into()));
        assert!(e.to_string().contains(AUTH_FAILED), "{e}");
        assert!(
            matches!(step, Some(ServerStep::Refuse { reason, .. }) if reason == "no cluster token")
        );
    }

    #[test]
    fn token_here_but_not_there_is_no_silent_downgrade() {
        let (r, _) = run(secret("t"), None);
        assert_eq!(r.unwrap_err(), HandshakeError::PeerUnauthenticated);
    }

    #[test]
    fn a_proof_is_bound_to_its_connection() {
        // Record a good exchange, replay its client proof on a new connection: refused.
        let mut c = ClientHandshake::new(Role::Client, "c", secret("k"));
        let mut s1 = ServerHandshake::new(secret("k"));
        let hello = c.hello();
        let ServerStep::Reply(ch) = s1.on_message(&hello) else {
            panic!()
        };
        let ClientStep::Send(proof) = c.on_message(&ch).unwrap() else {
            panic!()
        };
        assert!(matches!(s1.on_message(&proof), ServerStep::Accept(_)));
        let mut s2 = ServerHandshake::new(secret("k"));
        assert!(matches!(s2.on_message(&hello), ServerStep::Reply(_)));
        assert!(matches!(s2.on_message(&proof), ServerStep::Refuse { .. }));
        // Nor may a server's proof be reflected as a client's (different label).
        let mut s3 = ServerHandshake::new(secret("k"));
        let ServerStep::Reply(ch3) = s3.on_message(&hello) else {
            panic!()
        };
        let Answer::Challenge(c3) = read_answer(&ch3).unwrap() else {
            panic!()
        };
        assert!(matches!(
            s3.on_message(&encode_proof(&c3.proof)),
            ServerStep::Refuse { .. }
        ));
    }

    #[test]
    fn the_token_never_appears_on_the_wire() {
        let token = "a-very-recognisable-token";
        let mut c = ClientHandshake::new(Role::Peer, "p", secret(token));
        let mut s = ServerHandshake::new(secret(token));
        let hello = c.hello();
        let ServerStep::Reply(ch) = s.on_message(&hello) else {
            panic!()
        };
        let ClientStep::Send(proof) = c.on_message(&ch).unwrap() else {
            panic!()
        };
        for wire in [&hello, &ch, &proof] {
            assert!(!wire.windows(token.len()).any(|w| w == token.as_bytes()));
        }
    }

    #[test]
    fn control_responses_verify_only_with_the_token() {
        let k = ClusterSecret::new("k").unwrap();
        let c = control_challenge();
        let r = k.control_response(&c);
        assert_eq!(r.len(), 64);
        assert!(k.verify_control_response(&c, &r));
        assert!(k.verify_control_response(&c, &format!("{r}\r\n")));
        assert!(!k.verify_control_response(&control_challenge(), &r));
        let other = ClusterSecret::new("other").unwrap();
        assert!(!other.verify_control_response(&c, &r));
        for bad in ["", "zz", "abc", "é1"] {
            assert!(!k.verify_control_response(&c, bad));
        }
        // The documented openssl recipe: HMAC-SHA256 over the label and the challenge text.
        assert_eq!(
            ClusterSecret::new("key")
                .unwrap()
                .control_mac("")
                .finalize()
                .into_bytes()
                .len(),
            32
        );
    }

    #[test]
    fn http_credentials_follow_the_documented_openssl_recipe() {
        // printf 'taskwire/2 http-credential' | openssl dgst -sha256 -hmac key
        assert_eq!(
            ClusterSecret::new("key").unwrap().http_credential(),
            "2bdfb7585819d8e41e6e2188916bb7884e7ca539507ac2575da200ce5575291b"
        );
        assert_ne!(
            ClusterSecret::new("other").unwrap().http_credential(),
            ClusterSecret::new("key").unwrap().http_credential()
        );
    }

    #[test]
    fn secrets_trim_and_refuse_empty() {
        assert_eq!(
            ClusterSecret::new(" x \n").unwrap(),
            ClusterSecret::new("x").unwrap()
        );
        assert!(ClusterSecret::new(" \n").is_err());
        let g = ClusterSecret::generate();
        assert_eq!(g.0.len(), 64);
        assert_ne!(g, ClusterSecret::generate());
        assert_eq!(format!("{g:?}"), "ClusterSecret(<redacted>)");
    }

    #[cfg(unix)]
    #[test]
    fn token_files_are_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("taskwire-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let _ = std::fs::remove_file(&path);
        let (made, created) = ClusterSecret::read_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = ClusterSecret::read_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(made, again);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterSecret::read_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
