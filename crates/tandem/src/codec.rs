//! Serialization of task arguments and results (postcard), with descriptors
//! carried beside the bytes.
//!
//! A shareable object (a channel end, a shared slice, a lock) serializes its
//! descriptor by handing a duplicate to the message being built and writing
//! down only its index; the receiver takes the descriptor with that index
//! from the frame. Outside of a tandem message there is nowhere to put a
//! descriptor, so serializing such an object elsewhere is an error.

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};

use crate::Error;

pub(crate) mod fixed;

/// Bytes and descriptors of one encoded value.
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    /// Descriptors ever serialized on this thread: a cheap way to see that
    /// a value had none (the common case) without looking into `OUTGOING`.
    static SERIALIZED_FDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Serialize `value`, collecting the descriptors of any shareables in it.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, Error> {
    let outer = OUTGOING.with(|slot| slot.replace(Some(Vec::new())));
    let bytes = postcard::to_stdvec(value);
    let fds = OUTGOING.with(|slot| slot.replace(outer)).unwrap_or_default();
    let bytes = bytes.map_err(ser_error)?;
    if fds.len() > crate::wire::MAX_FDS {
        return Err(Error::Codec(format!(
            "the value holds {} shareable objects; one message can carry at most {}",
            fds.len(),
            crate::wire::MAX_FDS
        )));
    }
    Ok(Encoded { bytes, fds })
}

/// Deserialize a `T` from `bytes`, handing it the descriptors that came with them.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, Error> {
    let outer = INCOMING.with(|slot| slot.replace(Some(fds.into_iter().map(Some).collect())));
    let value = postcard::from_bytes(bytes);
    INCOMING.with(|slot| slot.replace(outer));
    value.map_err(|e| Error::codec("deserializing", e))
}

/// A postcard output that appends to a buffer it owns.
pub(crate) struct Owned(Vec<u8>);

impl postcard::ser_flavors::Flavor for Owned {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most pieces are a varint or a short string: a byte loop beats a
        // call into memcpy at that size, and map items are millions of them.
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn ser_error(e: postcard::Error) -> Error {
    match e {
        // postcard drops the custom message; say at least whose error it is.
        postcard::Error::SerdeSerCustom => {
            Error::Codec("serializing: the value's Serialize implementation returned an error".into())
        }
        e => Error::codec("serializing", e),
    }
}

/// Many values serialized one after another into one message, sharing one
/// list of descriptors (a map batch's items). Indices of descriptors count
/// across all of them, so any run of the values decodes with the whole list.
pub(crate) struct OutgoingScope {
    outer: Option<Option<Vec<OwnedFd>>>,
    /// One serializer for all the values, writing into its own buffer.
    ser: postcard::Serializer<Owned>,
}

impl OutgoingScope {
    /// Start a message whose bytes begin with `buf`.
    pub(crate) fn enter(buf: Vec<u8>) -> OutgoingScope {
        OutgoingScope {
            outer: Some(OUTGOING.with(|slot| slot.replace(Some(Vec::new())))),
            ser: postcard::Serializer { output: Owned(buf) },
        }
    }

    /// The message's bytes so far.
    #[inline]
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.ser.output.0
    }

    /// Append `value` to the bytes; on an error they are as they were (its
    /// descriptors are not: see [`OutgoingScope::truncate_fds`]).
    #[inline]
    pub(crate) fn append<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let before = self.ser.output.0.len();
        value.serialize(&mut self.ser).map_err(|e| {
            self.ser.output.0.truncate(before);
            ser_error(e)
        })
    }

    /// A mark to pass to [`OutgoingScope::added_fds_since`].
    #[inline]
    pub(crate) fn fd_mark(&self) -> u64 {
        SERIALIZED_FDS.with(|n| n.get())
    }

    /// Whether any descriptor was serialized since `mark`.
    #[inline]
    pub(crate) fn added_fds_since(&self, mark: u64) -> bool {
        SERIALIZED_FDS.with(|n| n.get()) != mark
    }

    /// Descriptors collected so far.
    #[inline]
    pub(crate) fn fd_count(&self) -> usize {
        OUTGOING.with(|slot| slot.borrow().as_ref().map_or(0, Vec::len))
    }

    /// Forget descriptors collected after the first `n` (a value that was
    /// taken back out of the message).
    pub(crate) fn truncate_fds(&mut self, n: usize) {
        OUTGOING.with(|slot| {
            if let Some(fds) = slot.borrow_mut().as_mut() {
                fds.truncate(n);
            }
        });
    }

    /// Take the descriptors collected so far (the next value's indices
    /// then start at 0 again).
    pub(crate) fn take_fds(&mut self) -> Vec<OwnedFd> {
        OUTGOING.with(|slot| slot.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default())
    }

    /// Leave the scope, with the bytes and the descriptors collected.
    pub(crate) fn finish(mut self) -> (Vec<u8>, Vec<OwnedFd>) {
        let outer = self.outer.take().flatten();
        let fds = OUTGOING.with(|slot| slot.replace(outer)).unwrap_or_default();
        (std::mem::take(&mut self.ser.output.0), fds)
    }
}

impl Drop for OutgoingScope {
    fn drop(&mut self) {
        if let Some(outer) = self.outer.take() {
            OUTGOING.with(|slot| slot.replace(outer));
        }
    }
}

/// The receiving side of [`OutgoingScope`]: values taken one by one from
/// the front of the bytes, with the message's descriptors in reach.
pub(crate) struct IncomingScope {
    outer: Option<Option<Vec<Option<OwnedFd>>>>,
}

impl IncomingScope {
    pub(crate) fn enter(fds: Vec<OwnedFd>) -> IncomingScope {
        let mine = Some(fds.into_iter().map(Some).collect());
        IncomingScope { outer: Some(INCOMING.with(|slot| slot.replace(mine))) }
    }
}

/// Values read one after another from the bytes of one message (a map
/// batch's items), inside an [`IncomingScope`] when they carry descriptors.
pub(crate) struct ItemReader<'a> {
    de: postcard::Deserializer<'a, postcard::de_flavors::Slice<'a>>,
}

impl<'a> ItemReader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> ItemReader<'a> {
        ItemReader { de: postcard::Deserializer::from_bytes(bytes) }
    }

    /// Decode the next `T`.
    #[inline]
    pub(crate) fn next<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        T::deserialize(&mut self.de).map_err(|e| Error::codec("deserializing", e))
    }
}

impl Drop for IncomingScope {
    fn drop(&mut self) {
        if let Some(outer) = self.outer.take() {
            INCOMING.with(|slot| slot.replace(outer));
        }
    }
}

/// Whether a message is being decoded on this thread (its descriptors in
/// reach of a shareable being deserialized).
#[inline]
pub(crate) fn decoding_elsewhere() -> bool {
    INCOMING.with(|slot| slot.borrow().is_some())
}

/// Deserialize bytes that came without descriptors, when
/// [`decoding_elsewhere`] is false: a shareable in them fails, as it must.
#[inline]
pub(crate) fn decode_plain<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::codec("deserializing", e))
}

/// Serialize a descriptor inside a tandem message: a duplicate travels with
/// the message and the bytes hold its index.
///
/// For the `Serialize` impls of shareable types.
#[allow(dead_code)] // used by the shareable types (ipc, shm, sync)
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, serializer: S) -> Result<S::Ok, S::Error> {
    let dup = fd
        .try_clone_to_owned()
        .map_err(|e| S::Error::custom(format!("duplicating a descriptor to send: {e}")))?;
    SERIALIZED_FDS.with(|n| n.set(n.get() + 1));
    let index = OUTGOING.with(|slot| match slot.borrow_mut().as_mut() {
        Some(fds) => {
            fds.push(dup);
            Ok(fds.len() - 1)
        }
        None => Err(S::Error::custom(
            "a shareable tandem object can only be serialized as part of a task's argument or result",
        )),
    })?;
    (index as u32).serialize(serializer)
}

/// The counterpart of [`serialize_fd`].
#[allow(dead_code)] // used by the shareable types (ipc, shm, sync)
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(deserializer)? as usize;
    INCOMING.with(|slot| {
        let mut slot = slot.borrow_mut();
        let fds = slot
            .as_mut()
            .ok_or_else(|| D::Error::custom("a shareable tandem object outside a tandem message"))?;
        fds.get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| D::Error::custom(format!("descriptor {index} is missing from the message")))
    })
}

/// A descriptor to write into a message (see [`serialize_fd`]).
pub(crate) struct SendFd<'a>(pub BorrowedFd<'a>);

impl Serialize for SendFd<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, serializer)
    }
}

/// A descriptor read from a message (see [`deserialize_fd`]).
pub(crate) struct RecvFd(pub OwnedFd);

impl<'de> Deserialize<'de> for RecvFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RecvFd, D::Error> {
        deserialize_fd(deserializer).map(RecvFd)
    }
}

/// Borrow the descriptors of an encoded value for sending.
pub(crate) fn borrowed(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|fd| fd.as_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let e = encode(&(1u64, String::from("two"), vec![3u8; 10])).unwrap();
        assert!(e.fds.is_empty());
        let back: (u64, String, Vec<u8>) = decode(&e.bytes, e.fds).unwrap();
        assert_eq!(back, (1, "two".into(), vec![3; 10]));
    }

    #[test]
    fn bad_bytes_are_a_codec_error() {
        let r: Result<String, _> = decode(&[0xff, 0xff, 0xff], Vec::new());
        assert!(matches!(r, Err(Error::Codec(_))));
    }
}
