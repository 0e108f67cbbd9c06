//! What every message-decoder fuzz target checks, for one message enum at a time.

use bytes::Bytes;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use taskwire_protocol::{access, decode, encode};

/// Attacker bytes as the header of a `T` message, the way a receiver sees them: validation may
/// refuse them, never panic; zero-copy access and decoding agree on whether they are a `T`;
/// and a message they decode to re-encodes to a header that decodes and re-encodes to the
/// same bytes (compared as bytes: a resource amount may be NaN, which is not equal to itself).
///
/// The first input byte picks where the header starts in its buffer (0..16), since the
/// transport may hand out headers at any address and `decode` must copy unaligned ones.
pub fn message_round_trip<T>(data: &[u8])
where
    T: Archive + std::fmt::Debug,
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let Some((&shift, rest)) = data.split_first() else {
        return;
    };
    let shift = usize::from(shift % 16);
    let mut buf = AlignedVec::<16>::with_capacity(rest.len() + shift);
    buf.extend_from_slice(&[0u8; 16][..shift]);
    buf.extend_from_slice(rest);
    let header = Bytes::from_owner(buf).slice(shift..);

    let decoded = decode::<T>(&header);
    let accessed = access::<T>(&header);
    assert_eq!(
        decoded.is_ok(),
        accessed.is_ok(),
        "decode and access disagree on {} bytes",
        header.len()
    );
    let Ok(msg) = decoded else {
        return;
    };
    let again = encode(&msg);
    let back =
        decode::<T>(&again).unwrap_or_else(|e| panic!("{msg:?} re-encoded does not decode: {e}"));
    assert_eq!(encode(&back), again, "{msg:?} changed on a round trip");
}
