//! The handshake that opens every connection.
//!
//! It is a fixed binary layout rather than an rkyv archive so that any two versions of Taskwire
//! can read each other's handshake and name both versions when they refuse to talk:
//!
//! ```text
//! Hello:     "TASKWIRE" | version u32 LE | role u8 | nonce_len u32 LE | nonce | name_len u32 LE | name
//! Welcome:   "TASKWIRE" | version u32 LE | status u8 | text_len u32 LE | text
//!            status 0 accepted (text: the accepting side's name), 1 refused (text: why),
//!            2 challenge, followed by  nonce_len u32 LE | nonce | proof_len u32 LE | proof
//! AuthProof: "TASKWIRE" | version u32 LE | proof_len u32 LE | proof
//! ```
//!
//! Without a cluster token the exchange is Hello then Welcome. With one (see [`crate::auth`])
//! it is Hello (carrying the client's nonce), a challenge Welcome (the server's nonce and its
//! proof), AuthProof (the client's proof), then the final Welcome. The accepting side answers
//! every refusal with a [`Welcome`] whose text says why, then closes the connection. Fields
//! after a Welcome's text are only read by version 2 and later; older readers still find the
//! status and the text where they expect them.

use bytes::{BufMut, Bytes, BytesMut};

/// The first eight bytes of every handshake.
pub const HANDSHAKE_MAGIC: [u8; 8] = *b"TASKWIRE";

/// The protocol version this build speaks. Bump it whenever a message layout changes.
pub const PROTOCOL_VERSION: u32 = 5;

/// Longest token or name accepted in a handshake.
const MAX_FIELD: usize = 64 * 1024;

/// Largest handshake message (a few fields of at most [`MAX_FIELD`] bytes each): until its
/// handshake is done, a connection accepts no larger message and no payload frames.
#[cfg(feature = "connection")]
pub(crate) const MAX_HANDSHAKE_MESSAGE: usize = 4 * MAX_FIELD + 1024;

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A client submitting graphs to the scheduler.
    Client,
    /// A worker registering with the scheduler.
    Worker,
    /// The scheduler (when it connects out, e.g. to a nanny).
    Scheduler,
    /// A worker or client fetching data from a worker.
    Peer,
}

impl Role {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Role::Client => 1,
            Role::Worker => 2,
            Role::Scheduler => 3,
            Role::Peer => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Role> {
        Some(match b {
            1 => Role::Client,
            2 => Role::Worker,
            3 => Role::Scheduler,
            4 => Role::Peer,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
            Role::Peer => "peer",
        })
    }
}

/// A handshake could not be completed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes do not start with [`HANDSHAKE_MAGIC`]: not a Taskwire peer.
    #[error("not a taskwire handshake (bad magic bytes)")]
    BadMagic,
    /// The handshake is shorter than its own lengths say.
    #[error("truncated handshake")]
    Truncated,
    /// Unknown role byte.
    #[error("unknown role {0} in handshake")]
    UnknownRole(u8),
    /// A field is longer than allowed.
    #[error("handshake field too long ({0} bytes)")]
    FieldTooLong(usize),
    /// A name or reason is not UTF-8.
    #[error("handshake text is not valid utf-8")]
    BadText,
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The accepting side refused us.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The peer asks for a cluster token and this side has none.
    #[error(
        "authentication failed: the peer requires a cluster token and none is configured here (--auth-token-file)"
    )]
    TokenRequired,
    /// This side holds a cluster token and the peer accepted without asking for it: refuse to
    /// talk unauthenticated rather than downgrade silently.
    #[error(
        "authentication failed: this side has a cluster token but the peer does not use one (start it with the same --auth-token-file, or drop the token here)"
    )]
    PeerUnauthenticated,
    /// The peer's proof does not match our token: it holds a different token.
    #[error(
        "authentication failed: wrong or missing cluster token (the peer holds a different one)"
    )]
    BadPeerProof,
    /// A message arrived that does not belong at this point of the handshake.
    #[error("unexpected handshake message")]
    Unexpected,
}

/// The connecting side's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender.
    pub version: u32,
    /// What the sender is.
    pub role: Role,
    /// The sender's random nonce when it holds a cluster token, empty when it has none (the
    /// token itself never travels; see [`crate::auth`]).
    pub nonce: Vec<u8>,
    /// Free-form name of the sender (worker name, client name), for logs.
    pub name: String,
}

impl Hello {
    /// A greeting in this build's protocol version.
    pub fn new(role: Role, name: impl Into<String>) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            role,
            nonce: Vec::new(),
            name: name.into(),
        }
    }

    /// Encode for the wire.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(25 + self.nonce.len() + self.name.len());
        b.put_slice(&HANDSHAKE_MAGIC);
        b.put_u32_le(self.version);
        b.put_u8(self.role.to_byte());
        put_field(&mut b, &self.nonce);
        put_field(&mut b, self.name.as_bytes());
        b.freeze()
    }
}

/// The accepting side's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version of the sender.
    pub version: u32,
    /// `Ok(text)` when accepted (text: the accepting side's name), `Err(reason)` when refused.
    pub result: Result<String, String>,
}

impl Welcome {
    /// Accept, naming ourselves.
    pub fn accept(name: impl Into<String>) -> Welcome {
        Welcome {
            version: PROTOCOL_VERSION,
            result: Ok(name.into()),
        }
    }

    /// Refuse with a reason the peer will show its user.
    pub fn refuse(reason: impl Into<String>) -> Welcome {
        Welcome {
            version: PROTOCOL_VERSION,
            result: Err(reason.into()),
        }
    }

    /// Encode for the wire.
    pub fn encode(&self) -> Bytes {
        let (status, text) = match &self.result {
            Ok(t) => (0u8, t),
            Err(t) => (1u8, t),
        };
        let mut b = BytesMut::with_capacity(17 + text.len());
        b.put_slice(&HANDSHAKE_MAGIC);
        b.put_u32_le(self.version);
        b.put_u8(status);
        put_field(&mut b, text.as_bytes());
        b.freeze()
    }
}

/// The server's challenge: its nonce and its proof that it holds the cluster token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) nonce: Vec<u8>,
    pub(crate) proof: Vec<u8>,
}

impl Challenge {
    pub(crate) fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(25 + self.nonce.len() + self.proof.len());
        b.put_slice(&HANDSHAKE_MAGIC);
        b.put_u32_le(PROTOCOL_VERSION);
        b.put_u8(2);
        put_field(&mut b, b"");
        put_field(&mut b, &self.nonce);
        put_field(&mut b, &self.proof);
        b.freeze()
    }
}

/// What the accepting side answered to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Welcome(Welcome),
    Challenge(Challenge),
}

/// Parse the accepting side's answer: a [`Welcome`] or a challenge.
pub(crate) fn read_answer(bytes: &[u8]) -> Result<Answer, HandshakeError> {
    let mut r = Reader(bytes);
    let version = r.preamble()?;
    let status = r.u8()?;
    let text = r.text()?;
    match status {
        0 | 2 if version != PROTOCOL_VERSION => Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        }),
        0 => Ok(Answer::Welcome(Welcome {
            version,
            result: Ok(text),
        })),
        2 => {
            let nonce = r.field()?.to_vec();
            let proof = r.field()?.to_vec();
            Ok(Answer::Challenge(Challenge { nonce, proof }))
        }
        _ => Err(HandshakeError::Refused(text)),
    }
}

/// Encode the client's proof.
pub(crate) fn encode_proof(proof: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + proof.len());
    b.put_slice(&HANDSHAKE_MAGIC);
    b.put_u32_le(PROTOCOL_VERSION);
    put_field(&mut b, proof);
    b.freeze()
}

/// Parse the client's proof.
pub(crate) fn read_proof(bytes: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut r = Reader(bytes);
    let version = r.preamble()?;
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    Ok(r.field()?.to_vec())
}

fn put_field(b: &mut BytesMut, field: &[u8]) {
    b.put_u32_le(field.len() as u32);
    b.put_slice(field);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandshakeError> {
        if self.0.len() < n {
            return Err(HandshakeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, HandshakeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u8(&mut self) -> Result<u8, HandshakeError> {
        Ok(self.take(1)?[0])
    }
    fn field(&mut self) -> Result<&'a [u8], HandshakeError> {
        let n = self.u32()? as usize;
        if n > MAX_FIELD {
            return Err(HandshakeError::FieldTooLong(n));
        }
        self.take(n)
    }
    fn text(&mut self) -> Result<String, HandshakeError> {
        String::from_utf8(self.field()?.to_vec()).map_err(|_| HandshakeError::BadText)
    }
    /// Magic and version; the version is returned, not checked, so callers can name it.
    fn preamble(&mut self) -> Result<u32, HandshakeError> {
        if self.0.len() < HANDSHAKE_MAGIC.len() || self.0[..8] != HANDSHAKE_MAGIC {
            return Err(HandshakeError::BadMagic);
        }
        self.take(8)?;
        self.u32()
    }
}

/// Parse a [`Hello`]. A version other than ours is [`HandshakeError::VersionMismatch`]; the
/// caller answers with [`Welcome::refuse`] carrying that error's text.
pub fn read_hello(bytes: &[u8]) -> Result<Hello, HandshakeError> {
    let mut r = Reader(bytes);
    let version = r.preamble()?;
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let role_byte = r.u8()?;
    let role = Role::from_byte(role_byte).ok_or(HandshakeError::UnknownRole(role_byte))?;
    let nonce = r.field()?.to_vec();
    let name = r.text()?;
    Ok(Hello {
        version,
        role,
        nonce,
        name,
    })
}

/// Parse a [`Welcome`]; a refusal becomes [`HandshakeError::Refused`], a challenge (the peer
/// wants a cluster token) [`HandshakeError::TokenRequired`]. Connecting code uses
/// [`ClientHandshake`](crate::ClientHandshake), which answers challenges.
pub fn read_welcome(bytes: &[u8]) -> Result<Welcome, HandshakeError> {
    match read_answer(bytes)? {
        Answer::Welcome(w) => Ok(w),
        Answer::Challenge(_) => Err(HandshakeError::TokenRequired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let mut h = Hello::new(Role::Worker, "gpu-3");
        h.nonce = vec![7; 32];
        assert_eq!(read_hello(&h.encode()).unwrap(), h);
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let mut h = Hello::new(Role::Client, "c");
        h.version = 99;
        let err = read_hello(&h.encode()).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 99
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("99") && text.contains(&PROTOCOL_VERSION.to_string()),
            "{text}"
        );
    }

    #[test]
    fn refusal_carries_reason() {
        let w = Welcome::refuse("bad token");
        assert_eq!(
            read_welcome(&w.encode()),
            Err(HandshakeError::Refused("bad token".into()))
        );
        assert_eq!(
            read_welcome(&Welcome::accept("sched").encode())
                .unwrap()
                .result
                .unwrap(),
            "sched"
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            read_hello(b"GET / HTTP/1.1\r\n"),
            Err(HandshakeError::BadMagic)
        );
        assert_eq!(read_hello(b""), Err(HandshakeError::BadMagic));
        let h = Hello::new(Role::Peer, "p").encode();
        for cut in 8..h.len() {
            assert!(read_hello(&h[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut bad_role = h.to_vec();
        bad_role[12] = 77;
        assert_eq!(read_hello(&bad_role), Err(HandshakeError::UnknownRole(77)));
        let mut huge = h[..13].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            read_hello(&huge),
            Err(HandshakeError::FieldTooLong(u32::MAX as usize))
        );
    }
}
