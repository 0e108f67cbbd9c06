//! rkyv encoding and validated decoding of message headers.

use bytes::Bytes;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// rkyv needs the archive to start at this alignment; the transport's codec pads headers to it.
const HEADER_ALIGN: usize = 16;

/// A header could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("invalid message header ({len} bytes): {reason}")]
pub struct DecodeError {
    /// Length of the rejected header.
    pub len: usize,
    /// What validation said.
    pub reason: String,
}

/// Archive `msg` into a header ready for the transport.
pub fn encode<T>(msg: &T) -> Bytes
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    // Serializing plain owned data into a growable buffer cannot fail.
    let vec = rkyv::to_bytes::<rancor::Error>(msg).expect("rkyv serialization of a message");
    Bytes::from_owner(vec)
}

/// Archive `msg` into a buffer reserved for `capacity` bytes up front. For large messages
/// (a graph of a million tasks) a good estimate saves the buffer's repeated doubling: each
/// doubling copies everything so far into fresh memory the kernel must first zero.
pub fn encode_with_capacity<T>(msg: &T, capacity: usize) -> Bytes
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let vec =
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(msg, AlignedVec::with_capacity(capacity))
            .expect("rkyv serialization of a message");
    Bytes::from_owner(vec)
}

/// A validated, archived message that borrows nothing: it keeps its (aligned) bytes alive.
pub struct Archived<T: Archive> {
    bytes: Bytes,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T> Archived<T>
where
    T: Archive,
    T::Archived: rkyv::Portable,
{
    /// The archived value; validated when this was built.
    pub fn get(&self) -> &T::Archived {
        // SAFETY: `access` validated these exact bytes (aligned, immutable behind `Bytes`)
        // as a `T::Archived` before constructing `self`.
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.bytes) }
    }

    /// The header bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// An owned copy of the message (what [`decode`] returns), without validating again.
    pub fn deserialize(&self) -> Result<T, DecodeError>
    where
        T::Archived: Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        rkyv::deserialize::<T, rancor::Error>(self.get()).map_err(|e| DecodeError {
            len: self.bytes.len(),
            reason: e.to_string(),
        })
    }
}

impl<T: Archive> Clone for Archived<T> {
    fn clone(&self) -> Self {
        Archived {
            bytes: self.bytes.clone(),
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T: Archive> std::fmt::Debug for Archived<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Archived<{}>({} bytes)",
            std::any::type_name::<T>(),
            self.bytes.len()
        )
    }
}

/// Two archives are equal when their bytes are.
impl<T: Archive> PartialEq for Archived<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

fn aligned(header: &Bytes) -> Bytes {
    if (header.as_ptr() as usize).is_multiple_of(HEADER_ALIGN) {
        header.clone()
    } else {
        // Only happens when a transport hands us an unaligned slice (or in tests that do so on
        // purpose): copy into an aligned buffer rather than reading misaligned archives.
        let mut v = AlignedVec::<HEADER_ALIGN>::with_capacity(header.len());
        v.extend_from_slice(header);
        Bytes::from_owner(v)
    }
}

/// Validate `header` as an archived `T` without deserializing it (zero copy when aligned).
pub fn access<T>(header: &Bytes) -> Result<Archived<T>, DecodeError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let bytes = aligned(header);
    match rkyv::access::<T::Archived, rancor::Error>(&bytes) {
        Ok(_) => Ok(Archived {
            bytes,
            _marker: std::marker::PhantomData,
        }),
        Err(e) => Err(DecodeError {
            len: header.len(),
            reason: e.to_string(),
        }),
    }
}

/// Validate and deserialize `header` into an owned `T`.
pub fn decode<T>(header: &Bytes) -> Result<T, DecodeError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let bytes = aligned(header);
    let archived = rkyv::access::<T::Archived, rancor::Error>(&bytes).map_err(|e| DecodeError {
        len: header.len(),
        reason: e.to_string(),
    })?;
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| DecodeError {
        len: header.len(),
        reason: e.to_string(),
    })
}
