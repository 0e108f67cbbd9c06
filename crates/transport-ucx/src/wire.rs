//! How a [`Message`] travels as UCP active messages.
//!
//! Every message is one active message. Its AM header carries a sequence number (the receiver
//! delivers in that order even when a rendezvous transfer finishes after a later eager one) and,
//! when it fits, the codec prelude (magic, frame count, header and frame lengths) so that the
//! receiver checks the limits before it allocates anything. The AM data is the message header
//! followed by the payload frames, sent from where they lie (an IOV datatype) and received into
//! one buffer that is then split into `Bytes` without copying.
//!
//! | AM id | AM header | AM data |
//! |---|---|---|
//! | `HELLO` (client → server) | magic `TWU1`, version u32 = 3, identity, flags u8 | – |
//! | `HELLO_ACK` (server → client) | magic, version, identity, flags | – |
//! | `MSG` | seq u64, prelude | header, frames |
//! | `MSG_LONG` (prelude too big for an AM header) | seq u64 | prelude, header, frames |
//! | `CLOSE` (sender dropped: end of stream) | seq u64 = messages sent | – |
//! | `PULL` (same host, large message) | seq u64, pull id u64 | prelude, regions |
//! | `PULL_DONE` (receiver → sender) | pull id u64, outcome u8 | – |
//!
//! The hello carries the sender's [`Identity`] (pid u32, pid namespace u64 ×2, boot id 16
//! bytes; all zero when unknown) and flags: 1 = it takes `PULL`s (its same-host path is on),
//! 2 = its endpoint has no peer error handling (both ends must agree, see `err_mode`). A `PULL` names where the message's header
//! and frames lie in the sender's memory, as (address u64, length u64) regions in order; the
//! receiver copies them with `process_vm_readv` (see [`crate::same_host`]) and answers
//! `PULL_DONE` with outcome [`PULLED`] (the sender may free them) or [`PULL_REFUSED`] (the
//! kernel refused the read: the sender sends the message again as `MSG`/`MSG_LONG`, with the
//! same sequence number, and stops pulling on this connection).
//!
//! All integers are little-endian; the prelude is [`taskwire_transport::codec`]'s.

use crate::err_mode::ErrMode;
use crate::same_host::{self, Identity};
use bytes::{Bytes, BytesMut};
use taskwire_transport::codec;
use taskwire_transport::{Message, TransportConfig, TransportError};

pub(crate) const AM_HELLO: u32 = 0x5457_0001;
pub(crate) const AM_HELLO_ACK: u32 = 0x5457_0002;
pub(crate) const AM_MSG: u32 = 0x5457_0003;
pub(crate) const AM_MSG_LONG: u32 = 0x5457_0004;
pub(crate) const AM_CLOSE: u32 = 0x5457_0005;
pub(crate) const AM_PULL: u32 = 0x5457_0006;
pub(crate) const AM_PULL_DONE: u32 = 0x5457_0007;

/// `PULL_DONE` outcome: copied, the sender may let go of the memory.
pub(crate) const PULLED: u8 = 0;
/// `PULL_DONE` outcome: not readable from here, send it the ordinary way.
pub(crate) const PULL_REFUSED: u8 = 1;

/// "TWU1" little-endian, then the protocol version.
const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"TWU1");
const VERSION: u32 = 3;

/// Hello flag: the sender takes `PULL`s (its same-host path is on).
const FLAG_TAKES_PULLS: u8 = 1;
/// Hello flag: the sender's endpoint has no peer error handling (`ErrMode::None`).
const FLAG_ERR_NONE: u8 = 2;

/// What a hello (or its ack) says about its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    /// The sender's process identity (`None`: it could not tell).
    pub(crate) identity: Option<Identity>,
    /// Whether the sender accepts `PULL`s.
    pub(crate) takes_pulls: bool,
    /// The error-handling mode of the sender's endpoint.
    pub(crate) err_mode: ErrMode,
}

/// The hello (and its ack) header: magic, version, this process's identity (all zero if
/// unknown), and a flags byte.
pub(crate) fn hello(h: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + same_host::IDENTITY_LEN + 1);
    out.extend_from_slice(&HELLO_MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    match &h.identity {
        Some(id) => id.encode(&mut out),
        None => out.resize(8 + same_host::IDENTITY_LEN, 0),
    }
    let mut flags = 0;
    if h.takes_pulls {
        flags |= FLAG_TAKES_PULLS;
    }
    if h.err_mode == ErrMode::None {
        flags |= FLAG_ERR_NONE;
    }
    out.push(flags);
    out
}

/// Check a peer's hello; returns what it says, or what is wrong.
pub(crate) fn check_hello(h: &[u8]) -> Result<Hello, String> {
    if h.len() < 8 || h[..4] != HELLO_MAGIC.to_le_bytes() {
        return Err("peer is not a Taskwire UCX endpoint (bad hello)".into());
    }
    let v = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    if v != VERSION {
        return Err(format!(
            "peer speaks Taskwire UCX protocol version {v}, this build speaks {VERSION}"
        ));
    }
    let bad_len = || "peer is not a Taskwire UCX endpoint (bad hello length)".to_string();
    if h.len() != 8 + same_host::IDENTITY_LEN + 1 {
        return Err(bad_len());
    }
    let id = Identity::decode(&h[8..8 + same_host::IDENTITY_LEN]).ok_or_else(bad_len)?;
    let flags = h[8 + same_host::IDENTITY_LEN];
    Ok(Hello {
        identity: (id.pid != 0).then_some(id),
        takes_pulls: flags & FLAG_TAKES_PULLS != 0,
        err_mode: if flags & FLAG_ERR_NONE != 0 {
            ErrMode::None
        } else {
            ErrMode::Peer
        },
    })
}

/// A `PULL`'s data: the codec prelude of `msg`, then the regions where its header and frames
/// lie (they must stay there until the receiver answers).
pub(crate) fn pull_descriptor(msg: &Message) -> Vec<u8> {
    let mut prelude = BytesMut::with_capacity(codec::prelude_len(msg.frames.len()));
    codec::put_prelude(msg, &mut prelude);
    let mut d = Vec::with_capacity(prelude.len() + 16 * (1 + msg.frames.len()));
    d.extend_from_slice(&prelude);
    for b in std::iter::once(&msg.header).chain(&msg.frames) {
        if !b.is_empty() {
            d.extend_from_slice(&(b.as_ptr() as u64).to_le_bytes());
            d.extend_from_slice(&(b.len() as u64).to_le_bytes());
        }
    }
    d
}

/// Read a `PULL`'s data against the limits: the message's shape, and regions that add up to
/// exactly its body.
pub(crate) fn parse_pull_descriptor(
    d: &[u8],
    cfg: &TransportConfig,
) -> Result<(Shape, Vec<(u64, u64)>), TransportError> {
    let (shape, plen) = parse_prelude(d, cfg)?;
    let rest = &d[plen..];
    let bad = |why: &str| TransportError::Other(format!("ucx: bad pull descriptor: {why}"));
    if !rest.len().is_multiple_of(16) || rest.len() / 16 > 1 + shape.frame_lens.len() {
        return Err(bad("wrong number of regions"));
    }
    let regions: Vec<(u64, u64)> = rest
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8")),
                u64::from_le_bytes(c[8..].try_into().expect("8")),
            )
        })
        .collect();
    let total = regions
        .iter()
        .try_fold(0u64, |acc, r| acc.checked_add(r.1))
        .ok_or_else(|| bad("lengths overflow"))?;
    if total != shape.body_len() as u64 {
        return Err(bad("regions do not add up to the message"));
    }
    Ok((shape, regions))
}

/// The largest `PULL` descriptor a receiver accepts before reading it.
pub(crate) fn max_pull_descriptor_len(cfg: &TransportConfig) -> usize {
    codec::prelude_len(cfg.max_frames)
        .saturating_add(16usize.saturating_mul(cfg.max_frames.saturating_add(1)))
}

/// The `PULL` AM header: sequence number and pull id.
pub(crate) fn pull_header(seq: u64, pull: u64) -> Vec<u8> {
    let mut h = seq.to_le_bytes().to_vec();
    h.extend_from_slice(&pull.to_le_bytes());
    h
}

/// The `PULL_DONE` AM header.
pub(crate) fn pull_done(pull: u64, outcome: u8) -> Vec<u8> {
    let mut h = pull.to_le_bytes().to_vec();
    h.push(outcome);
    h
}

/// Pull id and outcome of a `PULL_DONE` header.
pub(crate) fn parse_pull_done(h: &[u8]) -> Result<(u64, u8), TransportError> {
    match h {
        [id @ .., outcome] if id.len() == 8 => {
            Ok((u64::from_le_bytes(id.try_into().expect("8")), *outcome))
        }
        _ => Err(TransportError::Other(
            "ucx: bad pull acknowledgement".into(),
        )),
    }
}

/// A message laid out for `ucp_am_send_nbx`: which AM id, the AM header, and the data pieces.
pub(crate) struct Outgoing {
    pub(crate) am_id: u32,
    pub(crate) am_header: Vec<u8>,
    /// For `MSG_LONG`: the prelude, sent as the first data piece.
    pub(crate) data_prelude: Option<Vec<u8>>,
    pub(crate) msg: Message,
}

impl Outgoing {
    /// Lay out `msg` with sequence number `seq`; `max_am_header` is the worker's limit.
    pub(crate) fn new(seq: u64, msg: Message, max_am_header: usize) -> Outgoing {
        let mut prelude = BytesMut::with_capacity(codec::prelude_len(msg.frames.len()));
        codec::put_prelude(&msg, &mut prelude);
        let mut am_header = Vec::with_capacity(8 + prelude.len());
        am_header.extend_from_slice(&seq.to_le_bytes());
        if 8 + prelude.len() <= max_am_header {
            am_header.extend_from_slice(&prelude);
            Outgoing {
                am_id: AM_MSG,
                am_header,
                data_prelude: None,
                msg,
            }
        } else {
            Outgoing {
                am_id: AM_MSG_LONG,
                am_header,
                data_prelude: Some(prelude.to_vec()),
                msg,
            }
        }
    }

    /// The non-empty data pieces, in order, as (pointer, length).
    pub(crate) fn pieces(&self) -> Vec<(*const u8, usize)> {
        let mut v = Vec::with_capacity(2 + self.msg.frames.len());
        if let Some(p) = &self.data_prelude {
            v.push((p.as_ptr(), p.len()));
        }
        for b in std::iter::once(&self.msg.header).chain(&self.msg.frames) {
            if !b.is_empty() {
                v.push((b.as_ptr(), b.len()));
            }
        }
        v
    }

    /// Bytes of data (what the receiver allocates).
    pub(crate) fn data_len(&self) -> usize {
        self.data_prelude.as_ref().map_or(0, Vec::len) + self.msg.len()
    }
}

/// The shape of an incoming message, read from its prelude.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) header_len: usize,
    pub(crate) frame_lens: Vec<usize>,
}

impl Shape {
    pub(crate) fn body_len(&self) -> usize {
        self.header_len + self.frame_lens.iter().sum::<usize>()
    }
}

/// Sequence number of a `MSG`, `MSG_LONG` or `CLOSE` header.
pub(crate) fn seq_of(am_header: &[u8]) -> Result<u64, TransportError> {
    am_header
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| TransportError::Other("ucx: active message header too short".into()))
}

/// Parse and check a prelude against the limits. Returns the shape and the prelude's length.
pub(crate) fn parse_prelude(
    p: &[u8],
    cfg: &TransportConfig,
) -> Result<(Shape, usize), TransportError> {
    let short = || TransportError::Other("ucx: message prelude truncated".into());
    let u32_at = |at: usize| -> Result<u32, TransportError> {
        Ok(u32::from_le_bytes(
            p.get(at..at + 4).ok_or_else(short)?.try_into().expect("4"),
        ))
    };
    let u64_at = |at: usize| -> Result<u64, TransportError> {
        Ok(u64::from_le_bytes(
            p.get(at..at + 8).ok_or_else(short)?.try_into().expect("8"),
        ))
    };
    let magic = u32_at(0)?;
    if magic != codec::MAGIC {
        return Err(TransportError::BadMagic { found: magic });
    }
    let nframes = u32_at(4)? as u64;
    if nframes > cfg.max_frames as u64 {
        return Err(TransportError::TooManyFrames {
            count: nframes,
            max: cfg.max_frames,
        });
    }
    let header_len = u64_at(8)?;
    if header_len > cfg.max_header as u64 {
        return Err(TransportError::HeaderTooLarge {
            len: header_len,
            max: cfg.max_header,
        });
    }
    let mut frame_lens = Vec::with_capacity(nframes as usize);
    for i in 0..nframes as usize {
        let len = u64_at(16 + 8 * i)?;
        if len > cfg.max_frame {
            return Err(TransportError::FrameTooLarge {
                len,
                max: cfg.max_frame,
            });
        }
        frame_lens.push(len as usize);
    }
    let plen = codec::prelude_len(nframes as usize);
    if p.len() < plen {
        return Err(short());
    }
    Ok((
        Shape {
            header_len: header_len as usize,
            frame_lens,
        },
        plen,
    ))
}

/// Split a received body (header then frames, starting at `offset`) into a message; slices
/// share `body`, nothing is copied.
pub(crate) fn split(body: Bytes, offset: usize, shape: &Shape) -> Result<Message, TransportError> {
    if body.len() != offset + shape.body_len() {
        return Err(TransportError::Truncated {
            have: body.len().saturating_sub(offset),
            need: shape.body_len(),
        });
    }
    let mut at = offset;
    let header = body.slice(at..at + shape.header_len);
    at += shape.header_len;
    let mut frames = Vec::with_capacity(shape.frame_lens.len());
    for &len in &shape.frame_lens {
        frames.push(body.slice(at..at + len));
        at += len;
    }
    Ok(Message { header, frames })
}

/// The largest `MSG_LONG` body a receiver accepts before reading its prelude.
pub(crate) fn max_long_len(cfg: &TransportConfig) -> usize {
    let frames = (cfg.max_frames as u64).saturating_mul(cfg.max_frame);
    (codec::prelude_len(cfg.max_frames) as u64)
        .saturating_add(cfg.max_header as u64)
        .saturating_add(frames)
        .min(usize::MAX as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(o: &Outgoing) -> Vec<u8> {
        let mut v = Vec::new();
        for (p, n) in o.pieces() {
            // SAFETY: the pieces point into `o`, which is alive and unchanged here.
            v.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        }
        v
    }

    fn sample(nframes: usize) -> Message {
        Message::with_frames(
            Bytes::from_static(b"header!"),
            (0..nframes)
                .map(|i| Bytes::from(vec![i as u8; i % 5]))
                .collect(),
        )
    }

    #[test]
    fn short_prelude_rides_in_the_am_header() {
        let cfg = TransportConfig::default();
        let msg = sample(3);
        let o = Outgoing::new(7, msg.clone(), 8000);
        assert_eq!(o.am_id, AM_MSG);
        assert_eq!(seq_of(&o.am_header).unwrap(), 7);
        let (shape, _) = parse_prelude(&o.am_header[8..], &cfg).unwrap();
        let data = gather(&o);
        assert_eq!(data.len(), o.data_len());
        assert_eq!(split(Bytes::from(data), 0, &shape).unwrap(), msg);
    }

    #[test]
    fn long_prelude_rides_in_the_data() {
        let cfg = TransportConfig::default();
        let msg = sample(2000);
        let o = Outgoing::new(1, msg.clone(), 8000);
        assert_eq!(o.am_id, AM_MSG_LONG);
        assert_eq!(o.am_header.len(), 8);
        let data = Bytes::from(gather(&o));
        let (shape, plen) = parse_prelude(&data, &cfg).unwrap();
        assert_eq!(split(data, plen, &shape).unwrap(), msg);
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let cfg = TransportConfig {
            max_header: 4,
            ..Default::default()
        };
        let o = Outgoing::new(0, sample(1), 8000);
        assert!(matches!(
            parse_prelude(&o.am_header[8..], &cfg),
            Err(TransportError::HeaderTooLarge { len: 7, max: 4 })
        ));
        assert!(matches!(
            parse_prelude(b"GET / HTTP/1.1\r\n", &cfg),
            Err(TransportError::BadMagic { .. })
        ));
        assert!(parse_prelude(&o.am_header[8..20], &cfg).is_err());
        let (shape, _) = parse_prelude(&o.am_header[8..], &TransportConfig::default()).unwrap();
        assert!(matches!(
            split(Bytes::from_static(b"short"), 0, &shape),
            Err(TransportError::Truncated { .. })
        ));
    }

    #[test]
    fn hello_is_checked() {
        let none = Hello {
            identity: None,
            takes_pulls: false,
            err_mode: ErrMode::Peer,
        };
        assert_eq!(check_hello(&hello(&none)), Ok(none));
        let me = Hello {
            identity: Some(Identity::local().unwrap()),
            takes_pulls: true,
            err_mode: ErrMode::None,
        };
        assert_eq!(check_hello(&hello(&me)), Ok(me));
        assert!(
            check_hello(b"TWU1\x02\0\0\0")
                .unwrap_err()
                .contains("version 2")
        );
        assert!(check_hello(&hello(&none)[..20]).is_err());
        assert!(check_hello(&hello(&none)[..44]).is_err());
        assert!(check_hello(b"nope").is_err());
    }

    #[test]
    fn pull_descriptors_name_the_pieces_and_are_checked() {
        let cfg = TransportConfig::default();
        let msg = sample(4);
        let d = pull_descriptor(&msg);
        let (shape, regions) = parse_pull_descriptor(&d, &cfg).unwrap();
        assert_eq!(shape.body_len(), msg.len());
        assert_eq!(regions[0], (msg.header.as_ptr() as u64, 7));
        assert_eq!(regions.iter().map(|r| r.1).sum::<u64>(), msg.len() as u64);
        // A region list that does not match the prelude is refused before any read.
        let mut short = d.clone();
        short.truncate(d.len() - 16);
        assert!(parse_pull_descriptor(&short, &cfg).is_err());
        let mut lying = d.clone();
        let at = d.len() - 8;
        lying[at..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_pull_descriptor(&lying, &cfg).is_err());
        assert_eq!(
            parse_pull_done(&pull_done(9, PULL_REFUSED)).unwrap(),
            (9, 1)
        );
        assert!(parse_pull_done(b"x").is_err());
    }
}
