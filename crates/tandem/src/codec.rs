//! Serialization of task arguments and results (postcard), with descriptors
//! carried beside the bytes.
//!
//! A shareable object (a channel end, a shared slice, a lock) serializes its
//! descriptor by handing a duplicate to the message being built and writing
//! down only its index; the receiver takes the descriptor with that index
//! from the frame. Outside of a tandem message there is nowhere to put a
//! descriptor, so serializing such an object elsewhere is an error.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::ser::{Error as _, Serializer};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::sys::shm::{BulkWriter, SealedBytes};

pub(crate) mod arena;
pub(crate) mod fixed;
pub(crate) mod lend;

/// Bytes and descriptors of one encoded value.
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// The arena holding a big message's bytes, kept as they are while
    /// this is (see [`arena`]); its descriptor is not in `fds` but goes
    /// last with them ([`descriptors`]).
    pub pin: Option<arena::Pin>,
}

impl Encoded {
    /// The descriptors to send with the bytes (see [`descriptors`]).
    pub(crate) fn descriptors(&self) -> Vec<BorrowedFd<'_>> {
        descriptors(&self.fds, self.pin.as_ref())
    }
}

/// A message's descriptors as they travel: the shareables' (`fds`), then
/// its arena's, which the pin lends rather than a duplicate held as long
/// as the message (a queued task holds one descriptor for it, not two).
pub(crate) fn descriptors<'a>(fds: &'a [OwnedFd], pin: Option<&'a arena::Pin>) -> Vec<BorrowedFd<'a>> {
    fds.iter().map(AsFd::as_fd).chain(pin.map(arena::Pin::fd)).collect()
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
    Ok(Encoded { bytes, fds, pin: None })
}

/// Deserialize a `T` from `bytes`, handing it the descriptors that came with them.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, Error> {
    let outer = INCOMING.with(|slot| slot.replace(Some(fds.into_iter().map(Some).collect())));
    let value = postcard::from_bytes(bytes);
    INCOMING.with(|slot| slot.replace(outer));
    value.map_err(|e| Error::codec("deserializing", e))
}

/// Above this many serialized bytes a task's argument or result travels in
/// shared memory (an arena or a sealed memfd) instead of the socket. Set
/// when each such message was a new memfd; arenas now win from 16 KiB up
/// (BENCHMARKS.md, "Where the threshold sits with arenas"), but a queued
/// message in shared memory holds a descriptor and at least 64 KiB until
/// its task ends, so lowering it waits for arenas that hold many messages
/// each.
pub(crate) const BULK_THRESHOLD: usize = 256 << 10;

/// The threshold in force in this process (a knob for the benchmarks, see
/// `__fuzz::set_bulk_threshold`).
static THRESHOLD: AtomicUsize = AtomicUsize::new(BULK_THRESHOLD);

/// Set this process's bulk threshold (benchmarks only).
#[cfg(feature = "fuzzing")]
pub(crate) fn set_bulk_threshold(bytes: usize) {
    THRESHOLD.store(bytes, Ordering::Relaxed);
}

/// The message's bytes follow the tag.
const TAG_INLINE: u8 = 0;
/// The message's bytes are in its last descriptor, a sealed memfd whose
/// length (8 bytes, little endian) follows the tag.
const TAG_BULK: u8 = 1;
/// The message's bytes are in its last descriptor, its sender's arena
/// ([`arena`]): their length and the message's number (8 bytes each,
/// little endian) follow the tag.
const TAG_ARENA: u8 = 2;
/// As [`TAG_ARENA`], the bytes still coming in when the message is read
/// (`arena::Stream`): only from a writer trusted to finish, a worker's
/// parent.
const TAG_STREAM: u8 = 3;
/// A worker's result left in its own memory for the parent to read out
/// ([`lend`]): its length, address and release flag's address (8 bytes
/// each, little endian) follow the tag. Only a reader that knows the
/// worker reads it ([`lent_reference`]); [`decode_message`] refuses it.
const TAG_LENT: u8 = 4;
/// Bytes of a lent result's message.
const LENT_MESSAGE: usize = 25;

/// Where a big message's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bulk {
    /// An arena this process keeps and writes again once the reader is
    /// done: for a reader trusted with what this process sends later (one
    /// that kept the descriptor could read it), every peer but a sandboxed
    /// worker.
    Arena,
    /// A new memfd, sealed against writing, for each message: nothing a
    /// reader keeps shows it anything else (a sandboxed worker's argument).
    Sealed,
}

/// Where the big arguments of a worker go: a sandboxed one gets a sealed
/// memfd per message (see [`Bulk::Sealed`]).
pub(crate) fn bulk_for(sandboxed: bool) -> Bulk {
    if sandboxed { Bulk::Sealed } else { Bulk::Arena }
}

/// Encode a task's argument or result as a message of at most `max` bytes
/// (see the module's docs): inline up to the bulk threshold, in a sealed
/// memfd above it. A value over `max` is refused here, before anything of
/// its size is allocated (its size is counted first). A top-level
/// `Vec<u8>` or `ByteBuf` is written as the bytes it is (one copy), the
/// same bytes postcard would write element by element. A big message goes
/// where `how` says.
pub(crate) fn encode_message<T: Serialize + 'static>(
    value: &T,
    max: u64,
    how: Bulk,
) -> Result<Encoded, Error> {
    let threshold = THRESHOLD.load(Ordering::Relaxed);
    let outer = OUTGOING.with(|slot| slot.replace(Some(Vec::new())));
    let encoded = match raw_bytes(value) {
        Some(raw) => encode_raw(raw, max, threshold, how),
        None => encode_in_scope(value, max, threshold, how),
    };
    let mut fds = OUTGOING.with(|slot| slot.replace(outer)).unwrap_or_default();
    let Big { bytes, fd: bulk, pin } = encoded?;
    let big = usize::from(bulk.is_some() || pin.is_some());
    if fds.len() + big > crate::wire::MAX_FDS {
        return Err(Error::Codec(format!(
            "the value holds {} shareable objects; one message can carry at most {}",
            fds.len(),
            crate::wire::MAX_FDS - big
        )));
    }
    fds.extend(bulk);
    Ok(Encoded { bytes, fds, pin })
}

/// A task's result, encoded as [`encode_message`] does into the worker's
/// arena, except that a big `Vec<u8>` or `ByteBuf` result is lent to the
/// parent where it asked ([`lend`]): kept here, only its place sent.
pub(crate) fn encode_result<T: Serialize + 'static>(value: T, max: u64) -> Result<Encoded, Error> {
    let threshold = THRESHOLD.load(Ordering::Relaxed);
    let big = raw_bytes(&value).is_some_and(|raw| raw.len() > threshold && raw.len() as u64 <= max);
    if !big || !lend::enabled() {
        return encode_message(&value, max, Bulk::Arena);
    }
    let boxed: Box<dyn Any> = Box::new(value);
    let buf = match boxed.downcast::<Vec<u8>>() {
        Ok(vec) => *vec,
        Err(other) => {
            other.downcast::<serde_bytes::ByteBuf>().expect("raw bytes are one of the two").into_vec()
        }
    };
    let len = buf.len() as u64;
    match lend::lend(buf) {
        Ok((addr, flag)) => Ok(Encoded { bytes: lent_message(len, addr, flag), fds: Vec::new(), pin: None }),
        // Too much waits for the parent already: the arena, as before.
        Err(buf) => encode_message(&buf, max, Bulk::Arena),
    }
}

/// A lent result's message: `len` bytes at `addr`, release flag at `flag`.
pub(crate) fn lent_message(len: u64, addr: u64, flag: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(LENT_MESSAGE);
    bytes.push(TAG_LENT);
    for word in [len, addr, flag] {
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// Where a lent result is in its worker: length, address, release flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LentReference {
    pub len: usize,
    pub addr: u64,
    pub flag: u64,
}

/// The reference in `message` if it is a lent result (`None` if it is
/// another kind); a length over `max` or a short reference is an error.
pub(crate) fn lent_reference(message: &[u8], max: u64) -> Option<Result<LentReference, Error>> {
    let (&TAG_LENT, rest) = message.split_first()? else { return None };
    let words: Result<[u8; 24], _> = rest.try_into();
    let Ok(words) = words else {
        return Some(Err(Error::Codec(format!("a lent result's reference is {} bytes, not 24", rest.len()))));
    };
    let [len, addr, flag] =
        [0, 8, 16].map(|at| u64::from_le_bytes(words[at..at + 8].try_into().expect("8 bytes")));
    Some(claimed_len(len, max).map(|len| LentReference { len, addr, flag }))
}

/// The value of a lent result whose bytes the reader has read out.
pub(crate) fn decode_lent<T: DeserializeOwned + 'static>(bytes: Vec<u8>) -> Result<T, Error> {
    if !is_raw::<T>() {
        return Err(Error::Codec("a lent result for a value that is not bytes".into()));
    }
    Ok(from_raw(bytes))
}

/// Raw bytes (a `Vec<u8>` or `ByteBuf`'s) as an inline message: what
/// postcard would write for them, after the tag. A lent result's bytes go
/// this way to a cluster's broker.
pub(crate) fn inline_raw(raw: &[u8]) -> Vec<u8> {
    let mut prefix = [0u8; 10];
    let n = varint(raw.len() as u64, &mut prefix);
    let mut out = Vec::with_capacity(1 + n + raw.len());
    out.push(TAG_INLINE);
    out.extend_from_slice(&prefix[..n]);
    out.extend_from_slice(raw);
    out
}

/// A task's argument, encoded as [`encode_message`] does; a big `Vec<u8>`
/// or `ByteBuf` going to its arena is only given a place there (a
/// [`TAG_STREAM`] message), and its bytes are written once the message has
/// been handed on, with [`Deferred::finish`], while the worker already
/// copies them out: the two copies overlap instead of following each
/// other.
pub(crate) fn encode_argument<T: Serialize + 'static>(
    value: &T,
    max: u64,
    how: Bulk,
) -> Result<(Encoded, Option<Deferred>), Error> {
    let threshold = THRESHOLD.load(Ordering::Relaxed);
    let Some(raw) = raw_bytes(value).filter(|_| how == Bulk::Arena) else {
        return Ok((encode_message(value, max, how)?, None));
    };
    let mut prefix = [0u8; 10];
    let n = varint(raw.len() as u64, &mut prefix);
    let size = n + raw.len();
    if size <= threshold {
        return Ok((encode_message(value, max, how)?, None));
    }
    over_limit(size as u64, max)?;
    let (number, pin, stream) = arena::KEPT.reserve(size)?;
    let encoded =
        Encoded { bytes: arena_ref(TAG_STREAM, size as u64, number), fds: Vec::new(), pin: Some(pin) };
    Ok((encoded, Some(Deferred { stream, prefix, prefix_len: n })))
}

/// The bytes of an argument that [`encode_argument`] has yet to write.
pub(crate) struct Deferred {
    stream: arena::Stream,
    prefix: [u8; 10],
    prefix_len: usize,
}

impl Deferred {
    /// Write them: `value` is the argument given to `encode_argument`.
    pub(crate) fn finish<T: 'static>(self, value: &T) {
        let raw = raw_bytes(value).expect("a deferred argument is raw bytes");
        self.stream.write(&[&self.prefix[..self.prefix_len], raw]);
    }
}

/// The bytes of a top-level `Vec<u8>` or `ByteBuf`.
fn raw_bytes<T: 'static>(value: &T) -> Option<&[u8]> {
    let value = value as &dyn Any;
    value
        .downcast_ref::<Vec<u8>>()
        .map(Vec::as_slice)
        .or_else(|| value.downcast_ref::<serde_bytes::ByteBuf>().map(|b| b.as_slice()))
}

/// A message's bytes, and where its big part went.
struct Big {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
    pin: Option<arena::Pin>,
}

impl Big {
    fn inline(bytes: Vec<u8>) -> Big {
        Big { bytes, fd: None, pin: None }
    }
}

/// A message of `size` bytes is refused over `max`.
fn over_limit(size: impl Into<u64>, max: u64) -> Result<(), Error> {
    let size = size.into();
    if size > max {
        return Err(Error::Codec(format!(
            "a message of {size} bytes is over the limit of {max} bytes (raise max_message_size if it is real)"
        )));
    }
    Ok(())
}

/// A length a peer claims for a message, as this process can hold it: at
/// most `max`, and within its address space.
fn claimed_len(len: u64, max: u64) -> Result<usize, Error> {
    over_limit(len, max)?;
    usize::try_from(len)
        .map_err(|_| Error::Codec(format!("a message of {len} bytes does not fit this address space")))
}

/// The length a sealed bulk message's reference (`rest`, after its tag)
/// claims, at most `max`.
fn bulk_len(rest: &[u8], max: u64) -> Result<u64, Error> {
    let len: [u8; 8] = rest
        .try_into()
        .map_err(|_| Error::Codec(format!("a big message's reference is {} bytes, not 8", rest.len())))?;
    let len = u64::from_le_bytes(len);
    over_limit(len, max)?;
    Ok(len)
}

/// Forget the descriptors a pass that was given up collected (duplicates:
/// dropping them closes them).
fn clear_outgoing() {
    OUTGOING.with(|slot| {
        if let Some(fds) = slot.borrow_mut().as_mut() {
            fds.clear();
        }
    });
}

fn encode_in_scope<T: Serialize>(value: &T, max: u64, threshold: usize, how: Bulk) -> Result<Big, Error> {
    // Most messages are small: one pass into a buffer that gives up past
    // the threshold (having written at most that much).
    let cap = threshold.min(usize::try_from(max).unwrap_or(usize::MAX)).saturating_add(1);
    let capped = Capped { buf: vec![TAG_INLINE], cap };
    match postcard::serialize_with_flavor(value, capped) {
        Ok(bytes) => {
            over_limit((bytes.len() - 1) as u64, max)?;
            return Ok(Big::inline(bytes));
        }
        Err(postcard::Error::SerializeBufferFull) => {}
        Err(e) => return Err(ser_error(e)),
    }
    clear_outgoing();
    let size =
        postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default()).map_err(ser_error)?;
    clear_outgoing();
    over_limit(size as u64, max)?;
    write_big(size, how, |out| {
        let written = match postcard::to_slice(value, out) {
            Ok(out) => out.len(),
            Err(postcard::Error::SerializeBufferFull) => usize::MAX,
            Err(e) => return Err(ser_error(e)),
        };
        if written != size {
            return Err(Error::Codec(format!(
                "serializing: the value's Serialize implementation wrote {size} bytes when counted and a different number when written"
            )));
        }
        Ok(())
    })
}

/// A `Vec<u8>` as postcard writes it (its length as a varint, then the
/// bytes), with one copy.
fn encode_raw(raw: &[u8], max: u64, threshold: usize, how: Bulk) -> Result<Big, Error> {
    let mut prefix = [0u8; 10];
    let n = varint(raw.len() as u64, &mut prefix);
    let size = n + raw.len();
    over_limit(size as u64, max)?;
    if size <= threshold {
        return Ok(Big::inline(inline_raw(raw)));
    }
    write_big(size, how, |out| {
        out[..n].copy_from_slice(&prefix[..n]);
        out[n..].copy_from_slice(raw);
        Ok(())
    })
}

/// A big message of `size` bytes, written by `fill` where `how` says.
fn write_big(
    size: usize,
    how: Bulk,
    fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
) -> Result<Big, Error> {
    match how {
        Bulk::Sealed => {
            let mut writer =
                BulkWriter::create(size).map_err(|e| Error::os("making a memfd for a big message", e))?;
            fill(writer.bytes_mut())?;
            let fd = writer.seal().map_err(|e| Error::os("sealing a big message's memfd", e))?;
            let mut bytes = vec![TAG_BULK];
            bytes.extend_from_slice(&(size as u64).to_le_bytes());
            Ok(Big { bytes, fd: Some(fd), pin: None })
        }
        Bulk::Arena => {
            let (number, pin) = arena::KEPT.write(size, fill)?;
            Ok(Big { bytes: arena_ref(TAG_ARENA, size as u64, number), fd: None, pin: Some(pin) })
        }
    }
}

/// The bytes of a bulk message's reference to a memfd of `len` bytes (for
/// `chaos`, which forges them).
#[cfg(feature = "chaos")]
pub(crate) fn bulk_reference(len: u64) -> Vec<u8> {
    let mut bytes = vec![TAG_BULK];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// The bytes of an arena message's reference (for `chaos`).
#[cfg(feature = "chaos")]
pub(crate) fn arena_reference(len: u64, number: u64) -> Vec<u8> {
    arena_ref(TAG_ARENA, len, number)
}

/// An arena message (`tag`: [`TAG_ARENA`] or [`TAG_STREAM`]) of `len`
/// bytes, message `number` of its arena.
fn arena_ref(tag: u8, len: u64, number: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(17);
    bytes.push(tag);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&number.to_le_bytes());
    bytes
}

/// Write `value` as a LEB128 varint (postcard's length prefix); its length.
fn varint(mut value: u64, out: &mut [u8; 10]) -> usize {
    let mut n = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[n] = byte;
            return n + 1;
        }
        out[n] = byte | 0x80;
        n += 1;
    }
}

/// Read postcard's length prefix of a `Vec<u8>`: (length, bytes it took).
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Decode a message made by [`encode_message`] with the descriptors of its
/// frame, accepting at most `max` bytes. A bulk message's memfd is
/// checked before it is mapped (`SealedBytes::open`: a memfd, sealed
/// against writing, shrinking and growing, exactly the size claimed, no
/// holes), as is an arena (`Region::open_first`: a memfd sealed against
/// shrinking and growing, not against writing, at least the size claimed,
/// no holes), and its size against `max`; anything else is `Error::Codec`.
/// An arena's bytes are copied out, never borrowed (see [`arena`]).
/// This is the one decoder of every task result (a pool's handle, a
/// one-off unit's join) and, through [`decode_argument`], argument.
pub(crate) fn decode_message<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    max: u64,
) -> Result<T, Error> {
    decode_from(bytes, fds, max, false)
}

/// [`decode_message`] for a worker decoding its task's argument: a
/// streamed message (from [`encode_argument`]) is accepted too, its bytes
/// waited for as they come (the parent writes them; if it dies, so does
/// the worker).
pub(crate) fn decode_argument<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    max: u64,
) -> Result<T, Error> {
    decode_from(bytes, fds, max, true)
}

fn decode_from<T: DeserializeOwned + 'static>(
    bytes: &[u8],
    mut fds: Vec<OwnedFd>,
    max: u64,
    from_parent: bool,
) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&TAG_INLINE, rest)) => decode_value(rest, fds),
        Some((&TAG_BULK, rest)) => {
            let len = bulk_len(rest, max)?;
            let fd = fds.pop().ok_or_else(|| Error::Codec("a big message came without its memfd".into()))?;
            let memory = SealedBytes::open(fd, len)
                .map_err(|e| Error::Codec(format!("refused a big message: {e}")))?;
            decode_value(memory.bytes(), fds)
        }
        Some((&TAG_ARENA, rest)) => {
            let view = open_arena(rest, &mut fds, max, false)?;
            decode_view(view, fds)
        }
        Some((&TAG_STREAM, rest)) if from_parent => {
            let view = open_arena(rest, &mut fds, max, true)?;
            decode_view(view, fds)
        }
        Some((&TAG_STREAM, _)) => {
            Err(Error::Codec("a streamed message from a peer that is not this worker's parent".into()))
        }
        Some((&TAG_LENT, _)) => {
            Err(Error::Codec("a lent result reached a reader that did not read it out".into()))
        }
        Some((tag, _)) => Err(Error::Codec(format!("a message with the unknown tag {tag}"))),
        None => Err(Error::Codec("an empty message".into())),
    }
}

/// The same message with its bytes inline and no descriptors, for a
/// machine that cannot receive descriptors (a cluster pool's broker): a
/// bulk message is read out of its memfd (checked as `decode_message`
/// checks it); a value holding shareable objects cannot cross machines.
#[cfg(feature = "cluster")]
pub(crate) fn inline_message(bytes: Vec<u8>, mut fds: Vec<OwnedFd>, max: u64) -> Result<Vec<u8>, Error> {
    const ACROSS: &str = "a value holding shared-memory objects (ipc, shm, sync) cannot cross machines: pass plain data to a cluster pool's tasks";
    match bytes.first() {
        Some(&TAG_INLINE) if fds.is_empty() => Ok(bytes),
        Some(&TAG_BULK) if fds.len() == 1 => {
            let len = bulk_len(&bytes[1..], max)?;
            let fd = fds.pop().expect("one descriptor");
            let memory = SealedBytes::open(fd, len)
                .map_err(|e| Error::Codec(format!("refused a big message: {e}")))?;
            let mut out = Vec::with_capacity(1 + memory.bytes().len());
            out.push(TAG_INLINE);
            out.extend_from_slice(memory.bytes());
            Ok(out)
        }
        Some(&TAG_ARENA) if fds.len() == 1 => {
            let view = open_arena(&bytes[1..], &mut fds, max, false)?;
            let mut out = vec![0u8; 1 + view.len()];
            out[0] = TAG_INLINE;
            view.copy_into(0, &mut out[1..])?;
            Ok(out)
        }
        Some(&TAG_INLINE) | Some(&TAG_BULK) | Some(&TAG_ARENA) => Err(Error::Codec(ACROSS.into())),
        Some(tag) => Err(Error::Codec(format!("a message with the unknown tag {tag}"))),
        None => Err(Error::Codec("an empty message".into())),
    }
}

/// The arena an arena message (`rest`, after its tag) names, checked and
/// mapped: its descriptor is the frame's last.
fn open_arena(rest: &[u8], fds: &mut Vec<OwnedFd>, max: u64, streamed: bool) -> Result<arena::View, Error> {
    let reference: [u8; 16] = rest.try_into().map_err(|_| {
        Error::Codec(format!("a big message's arena reference is {} bytes, not 16", rest.len()))
    })?;
    let [len, number] =
        [&reference[..8], &reference[8..]].map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
    let len = claimed_len(len, max)?;
    // Only here, not for every message: small ones never take the lock.
    arena::MAPPED.sweep();
    let fd = fds.pop().ok_or_else(|| Error::Codec("a big message came without its memfd".into()))?;
    let view =
        if streamed { arena::View::open_stream(fd, len, number) } else { arena::View::open(fd, len, number) };
    view.map_err(|e| Error::Codec(format!("refused a big message: {e}")))
}

/// Decode a message in a peer's arena: the bytes copied out first (into
/// the value's own buffer for a `Vec<u8>` or `ByteBuf`), then the arena
/// released.
fn decode_view<T: DeserializeOwned + 'static>(view: arena::View, fds: Vec<OwnedFd>) -> Result<T, Error> {
    let len = view.len();
    if is_raw::<T>() {
        let mut head = [0u8; 10];
        let n = head.len().min(len);
        let value = view.copy_into(0, &mut head[..n]).and_then(|()| {
            let (at, count) = raw_span(&head[..n], len)?;
            Ok(from_raw(view.copy(at, count)?))
        });
        if value.is_err() {
            view.discard();
        }
        return value;
    }
    let value = view.copy(0, len).and_then(|bytes| decode_value(&bytes, fds));
    if value.is_err() {
        view.discard();
    }
    value
}

/// Whether `T` is decoded as raw bytes (a `Vec<u8>` or `ByteBuf`).
fn is_raw<T: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<Vec<u8>>() || TypeId::of::<T>() == TypeId::of::<serde_bytes::ByteBuf>()
}

/// Where the bytes of a raw value are in a message of `len` bytes that
/// starts with `head`: (offset, count).
fn raw_span(head: &[u8], len: usize) -> Result<(usize, usize), Error> {
    read_varint(head)
        .and_then(|(count, at)| {
            let count = usize::try_from(count).ok()?;
            (at.checked_add(count)? <= len).then_some((at, count))
        })
        .ok_or_else(|| Error::Codec("deserializing: the bytes end before the Vec<u8> they announce".into()))
}

/// A raw value (see [`is_raw`]) from its bytes.
fn from_raw<T: 'static>(bytes: Vec<u8>) -> T {
    let boxed: Box<dyn Any> = if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        Box::new(bytes)
    } else {
        Box::new(serde_bytes::ByteBuf::from(bytes))
    };
    *boxed.downcast::<T>().expect("T is Vec<u8> or ByteBuf")
}

fn decode_value<T: DeserializeOwned + 'static>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, Error> {
    if !is_raw::<T>() {
        return decode(bytes, fds);
    }
    // Raw bytes: one copy instead of a deserialize call per byte.
    let (at, count) = raw_span(bytes, bytes.len())?;
    Ok(from_raw(bytes[at..at + count].to_vec()))
}

/// A postcard output that gives up (`SerializeBufferFull`) past `cap` bytes.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl postcard::ser_flavors::Flavor for Capped {
    type Output = Vec<u8>;

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.buf.len() >= self.cap {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() > self.cap - self.buf.len() {
            return Err(postcard::Error::SerializeBufferFull);
        }
        // As in `Owned`: a byte loop beats a call into memcpy for a varint
        // or a short string.
        if data.len() <= 16 {
            self.buf.reserve(data.len());
            for &b in data {
                self.buf.push(b);
            }
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.buf)
    }
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

    /// The descriptors of `e` as its receiver gets them (duplicates).
    fn received(e: &Encoded) -> Vec<OwnedFd> {
        e.descriptors().iter().map(|fd| fd.try_clone_to_owned().unwrap()).collect()
    }

    /// Whether `e` is a big message (in a sealed memfd or an arena),
    /// checking its shape either way.
    fn is_bulk(e: &Encoded) -> bool {
        let seals = || rustix::fs::fcntl_get_seals(e.descriptors().last().unwrap()).unwrap();
        use rustix::fs::SealFlags;
        match e.bytes[0] {
            TAG_INLINE => false,
            TAG_BULK => {
                assert_eq!(e.bytes.len(), 9, "only the length travels inline");
                assert!(seals().contains(SealFlags::WRITE | SealFlags::SHRINK));
                true
            }
            TAG_ARENA => {
                assert_eq!(e.bytes.len(), 17, "only the length and number travel inline");
                assert!(seals().contains(SealFlags::SHRINK | SealFlags::GROW));
                assert!(!seals().contains(SealFlags::WRITE));
                assert!(e.pin.is_some());
                true
            }
            other => panic!("tag {other}"),
        }
    }

    #[test]
    fn messages_go_inline_up_to_the_threshold_and_in_a_memfd_above_it() {
        // A Vec<u8> of n bytes serializes to n + 3 bytes at this size (its
        // length as a varint): through the raw path alone, as a ByteBuf,
        // and through serde inside a tuple.
        for how in [Bulk::Sealed, Bulk::Arena] {
            for (n, bulk) in [(BULK_THRESHOLD - 3, false), (BULK_THRESHOLD - 2, true)] {
                let raw: Vec<u8> = (0..n).map(|i| i as u8).collect();
                let e = encode_message(&raw, u64::MAX, how).unwrap();
                assert_eq!(
                    (is_bulk(&e), e.descriptors().len()),
                    (bulk, usize::from(bulk)),
                    "{n} bytes, raw, {how:?}"
                );
                let back: Vec<u8> = decode_message(&e.bytes, received(&e), u64::MAX).unwrap();
                assert_eq!(back, raw);
                let buf = serde_bytes::ByteBuf::from(raw.clone());
                let e = encode_message(&buf, u64::MAX, how).unwrap();
                assert_eq!(is_bulk(&e), bulk, "{n} bytes, ByteBuf, {how:?}");
                let back: serde_bytes::ByteBuf = decode_message(&e.bytes, received(&e), u64::MAX).unwrap();
                assert_eq!(back, buf);
                let nested = (raw.clone(),);
                let e = encode_message(&nested, u64::MAX, how).unwrap();
                assert_eq!(
                    (is_bulk(&e), e.descriptors().len()),
                    (bulk, usize::from(bulk)),
                    "{n} bytes, nested, {how:?}"
                );
                let back: (Vec<u8>,) = decode_message(&e.bytes, received(&e), u64::MAX).unwrap();
                assert_eq!(back, nested);
            }
        }
    }

    #[test]
    fn an_arena_message_is_decoded_from_a_copy_and_lies_about_it_are_refused() {
        let raw: Vec<u8> = (0..BULK_THRESHOLD * 2).map(|i| (i * 3) as u8).collect();
        let e = encode_message(&raw, u64::MAX, Bulk::Arena).unwrap();
        // Over the reader's limit: refused before mapping.
        let dup = || received(&e);
        let r: Result<Vec<u8>, _> = decode_message(&e.bytes, dup(), 1000);
        assert!(matches!(&r, Err(Error::Codec(m)) if m.contains("over the limit")), "{r:?}");
        // A length past the memfd's end.
        let mut lie = e.bytes.clone();
        lie[1..9].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let r: Result<Vec<u8>, _> = decode_message(&lie, dup(), u64::MAX);
        assert!(matches!(&r, Err(Error::Codec(m)) if m.contains("fewer than")), "{r:?}");
        // A reference cut short, and one without its descriptor.
        let r: Result<Vec<u8>, _> = decode_message(&e.bytes[..12], dup(), u64::MAX);
        assert!(matches!(&r, Err(Error::Codec(m)) if m.contains("not 16")), "{r:?}");
        let r: Result<Vec<u8>, _> = decode_message(&e.bytes, Vec::new(), u64::MAX);
        assert!(matches!(&r, Err(Error::Codec(m)) if m.contains("without its memfd")), "{r:?}");
        // The honest one, as a nested value too (a copy, then serde).
        let back: Vec<u8> = decode_message(&e.bytes, dup(), u64::MAX).unwrap();
        assert_eq!(back, raw);
        let nested: (Vec<u8>,) = decode_message(&e.bytes, dup(), u64::MAX).unwrap();
        assert_eq!(nested.0, raw);
    }

    #[test]
    fn a_streamed_argument_is_read_by_a_worker_as_it_is_written_and_refused_as_a_result() {
        let raw: Vec<u8> = (0..BULK_THRESHOLD * 8).map(|i| (i * 5) as u8).collect();
        let (e, deferred) = encode_argument(&raw, u64::MAX, Bulk::Arena).unwrap();
        assert_eq!(e.bytes[0], TAG_STREAM);
        let dup = || received(&e);
        // As a result (from a worker, not trusted to finish): refused at once.
        let r: Result<Vec<u8>, _> = decode_message(&e.bytes, dup(), u64::MAX);
        assert!(matches!(&r, Err(Error::Codec(m)) if m.contains("streamed")), "{r:?}");
        // As an argument: read while the bytes are written.
        std::thread::scope(|s| {
            let reader = s.spawn(|| decode_argument::<Vec<u8>>(&e.bytes, dup(), u64::MAX).unwrap());
            deferred.expect("raw bytes above the threshold are streamed").finish(&raw);
            assert!(reader.join().unwrap() == raw);
        });
        // Small, sealed, or not raw bytes: written at once.
        for (small, how) in [(true, Bulk::Arena), (false, Bulk::Sealed)] {
            let value = if small { vec![1u8; 100] } else { raw.clone() };
            let (_, deferred) = encode_argument(&value, u64::MAX, how).unwrap();
            assert!(deferred.is_none(), "small {small}, {how:?}");
        }
        let (_, deferred) = encode_argument(&(raw.clone(),), u64::MAX, Bulk::Arena).unwrap();
        assert!(deferred.is_none(), "a nested Vec<u8>");
    }

    #[test]
    fn the_raw_path_writes_what_postcard_writes() {
        for n in [0usize, 1, 127, 128, 300, 70_000] {
            let raw: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let e = encode_message(&raw, u64::MAX, Bulk::Arena).unwrap();
            assert_eq!(e.bytes[1..], postcard::to_stdvec(&raw).unwrap()[..], "{n}");
            let nested: (Vec<u8>,) = decode_message(&e.bytes, Vec::new(), u64::MAX).unwrap();
            assert_eq!(nested.0, raw);
        }
    }

    #[test]
    fn bad_bytes_are_a_codec_error() {
        let r: Result<String, _> = decode(&[0xff, 0xff, 0xff], Vec::new());
        assert!(matches!(r, Err(Error::Codec(_))));
    }
}
