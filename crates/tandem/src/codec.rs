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

/// Bytes and descriptors of one encoded value.
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Serialize `value`, collecting the descriptors of any shareables in it.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, Error> {
    let outer = OUTGOING.with(|slot| slot.replace(Some(Vec::new())));
    let bytes = postcard::to_stdvec(value);
    let fds = OUTGOING.with(|slot| slot.replace(outer)).unwrap_or_default();
    let bytes = bytes.map_err(|e| match e {
        // postcard drops the custom message; say at least whose error it is.
        postcard::Error::SerdeSerCustom => {
            Error::Codec("serializing: the value's Serialize implementation returned an error".into())
        }
        e => Error::codec("serializing", e),
    })?;
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

/// Serialize a descriptor inside a tandem message: a duplicate travels with
/// the message and the bytes hold its index.
///
/// For the `Serialize` impls of shareable types.
#[allow(dead_code)] // used by the shareable types (ipc, shm, sync)
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, serializer: S) -> Result<S::Ok, S::Error> {
    let dup = fd
        .try_clone_to_owned()
        .map_err(|e| S::Error::custom(format!("duplicating a descriptor to send: {e}")))?;
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
