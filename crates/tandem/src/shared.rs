//! How a shareable object travels: the descriptor of its shared-memory
//! region plus a few fields, written once for every shareable type.
//!
//! Serializing hands a duplicate of the region's memfd (and of any other
//! descriptor in the fields, as [`SendFd`](crate::codec::SendFd)) to the
//! message being built; deserializing takes the descriptor from the frame,
//! maps the region and checks that it is big enough for what the fields
//! claim, before any of it is touched.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::codec::{RecvFd, SendFd};
use crate::sys::shm::Region;

/// A new zero-filled region for a shared `what` (`"mutex"`, `"queue"`...),
/// its errors worded for the user.
pub(crate) fn make_region(len: usize, what: &str) -> Result<Region, Error> {
    Region::create(len).map_err(|e| Error::os(&format!("making a shared {what} (memfd + mmap)"), e))
}

/// Serialize `region`'s descriptor followed by `fields`.
pub(crate) fn serialize<S: Serializer>(
    region: &Region,
    fields: impl Serialize,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    (SendFd(region.fd()), fields).serialize(serializer)
}

/// The counterpart of [`serialize`]: map the region that arrived and read
/// the fields `F`; `fits` then says whether the region can hold what the
/// fields describe (`Err(why)` refuses it). `what` names the object in
/// errors.
pub(crate) fn deserialize<'de, D: Deserializer<'de>, F: Deserialize<'de>>(
    deserializer: D,
    what: &str,
    fits: impl FnOnce(&Region, &F) -> Result<(), String>,
) -> Result<(Region, F), D::Error> {
    let (RecvFd(fd), fields) = <(RecvFd, F)>::deserialize(deserializer)?;
    let region = Region::open(fd).map_err(|e| D::Error::custom(format!("mapping a shared {what}: {e}")))?;
    fits(&region, &fields).map_err(D::Error::custom)?;
    Ok((region, fields))
}

/// A `fits` check for [`deserialize`]: the region holds at least `min_len`
/// bytes.
pub(crate) fn at_least<F>(min_len: usize, what: &str) -> impl FnOnce(&Region, &F) -> Result<(), String> + '_ {
    move |region, _| {
        if region.len() < min_len {
            Err(format!("a shared {what} arrived with too little memory"))
        } else {
            Ok(())
        }
    }
}
