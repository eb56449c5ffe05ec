//! What travels for one task: the message layouts, the trampoline that runs
//! a task inside a worker, and the decoding of its outcome in the parent.

use std::any::Any;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, Encoded, fixed};
use crate::sys::code::{self, Trusted};
use crate::usage::{USAGE_LEN, Usage};
use crate::wire::Frame;
use crate::{Error, batch};

/// A task as the worker receives it.
pub(crate) struct Invocation {
    pub func: i64,
    pub payload: Vec<u8>,
    pub arg_at: usize,
    pub fds: Vec<OwnedFd>,
    pub trusted: Trusted,
    /// The largest argument or result accepted (the pool's or unit's
    /// `max_message_size`).
    pub max: u64,
}

/// How a task ended inside its unit.
pub(crate) enum Outcome {
    Value(Encoded),
    Panicked(String),
    Codec(String),
}

const STATUS_VALUE: u8 = 0;
const STATUS_PANICKED: u8 = 1;
const STATUS_CODEC: u8 = 2;
/// Set in a Done frame's status byte when the task's [`Usage`] (16 bytes)
/// follows the header, before the body (a pool with reports on).
const WITH_USAGE: u8 = 0x80;
/// Set when the task's captured output follows (after the usage, if any):
/// its stdout's length and its stderr's (u32 each), then their bytes.
const WITH_OUTPUT: u8 = 0x40;

/// The monomorphised entry a worker calls: decode `A`, run `f`, encode `R`.
pub(crate) type Trampoline = fn(Invocation) -> Outcome;

pub(crate) fn trampoline<A: DeserializeOwned + 'static, R: Serialize + 'static>(inv: Invocation) -> Outcome {
    let Some(f) = code::resolve::<fn(A) -> R>(&inv.trusted, inv.func) else {
        return Outcome::Codec("the task's function is not in this executable".into());
    };
    let arg: A = match codec::decode_argument(&inv.payload[inv.arg_at..], inv.fds, inv.max) {
        Ok(arg) => arg,
        Err(e) => return Outcome::Codec(format!("the argument: {}", e.codec_detail())),
    };
    drop(inv.payload);
    match catch_unwind(AssertUnwindSafe(|| f(arg))) {
        // A worker's result goes in its arena whatever the pool (the
        // parent copies it out, so nothing it keeps shows it anything
        // else), or stays here for the parent to read (`codec::lend`).
        Ok(result) => match codec::encode_result(result, inv.max) {
            Ok(encoded) => Outcome::Value(encoded),
            Err(e) => Outcome::Codec(format!("the result: {}", e.codec_detail())),
        },
        Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
    }
}

/// Run `f(arg)` here, turning a panic into `Error::Panicked` (thread mode).
pub(crate) fn run_here<A, R>(f: fn(A) -> R, arg: A) -> Result<R, Error> {
    catch_unwind(AssertUnwindSafe(|| f(arg)))
        .map_err(|payload| Error::Panicked { message: panic_message(payload.as_ref()) })
}

/// Run `f(arg)` here, a panic as its message (a map item on a pool thread:
/// smaller than an `Error`, which matters at millions of items).
pub(crate) fn run_caught<A, R>(f: fn(A) -> R, arg: A) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(|| f(arg))).map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic whose payload is not a string".into()
    }
}

/// Header of a Task frame: id, trampoline offset, function offset.
pub(crate) fn task_header<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    id: u64,
    f: fn(A) -> R,
) -> [u8; 24] {
    header_for(id, trampoline::<A, R>, code::offset_of(f))
}

/// Split a Task payload into (id, trampoline offset, function offset).
pub(crate) fn parse_task(payload: &[u8]) -> Option<(u64, i64, i64)> {
    let id = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let call = i64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    let func = i64::from_le_bytes(payload.get(16..24)?.try_into().ok()?);
    Some((id, call, func))
}

pub(crate) const TASK_HEADER_LEN: usize = 24;

/// Header and body of a Done frame for `outcome`.
pub(crate) fn done_parts(id: u64, outcome: &Outcome) -> ([u8; 9], &[u8]) {
    let (status, body): (u8, &[u8]) = match outcome {
        Outcome::Value(e) => (STATUS_VALUE, &e.bytes),
        Outcome::Panicked(m) => (STATUS_PANICKED, m.as_bytes()),
        Outcome::Codec(m) => (STATUS_CODEC, m.as_bytes()),
    };
    let mut h = [0u8; 9];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8] = status;
    (h, body)
}

/// Mark a Done header from [`done_parts`] as followed by `usage`; the
/// bytes to send between the header and the body.
pub(crate) fn with_usage(header: &mut [u8; 9], usage: Usage) -> [u8; USAGE_LEN] {
    header[8] |= WITH_USAGE;
    usage.to_bytes()
}

/// Mark a Done header as followed by captured output; the lengths to send
/// before the bytes of `out` and `err`.
pub(crate) fn with_output(header: &mut [u8; 9], out: &[u8], err: &[u8]) -> [u8; 8] {
    header[8] |= WITH_OUTPUT;
    let mut lengths = [0u8; 8];
    lengths[..4].copy_from_slice(&(out.len() as u32).to_le_bytes());
    lengths[4..].copy_from_slice(&(err.len() as u32).to_le_bytes());
    lengths
}

/// Where a Done frame's parts are: its status without the flags, its
/// usage, its output's two ranges, and where its body starts. `None` if
/// the frame is shorter than its flags say (every length checked against
/// the bytes that came).
#[allow(clippy::type_complexity)]
fn done_layout(
    payload: &[u8],
) -> Option<(u8, Option<Usage>, Option<(std::ops::Range<usize>, std::ops::Range<usize>)>, usize)> {
    let status = *payload.get(8)?;
    let mut at = 9;
    let usage = if status & WITH_USAGE != 0 {
        at += USAGE_LEN;
        Some(Usage::from_bytes(payload.get(9..at)?)?)
    } else {
        None
    };
    let output = if status & WITH_OUTPUT != 0 {
        let lengths = payload.get(at..at + 8)?;
        let out_len = u32::from_le_bytes(lengths[..4].try_into().ok()?) as usize;
        let err_len = u32::from_le_bytes(lengths[4..].try_into().ok()?) as usize;
        let out = at + 8..(at + 8).checked_add(out_len)?;
        let err = out.end..out.end.checked_add(err_len)?;
        if err.end > payload.len() {
            return None;
        }
        at = err.end;
        Some((out, err))
    } else {
        None
    };
    Some((status & !(WITH_USAGE | WITH_OUTPUT), usage, output, at))
}

/// What the task cost, if its Done frame says.
pub(crate) fn done_usage(frame: &Frame) -> Option<Usage> {
    done_layout(&frame.payload)?.1
}

/// What the task wrote to stdout and stderr, if its Done frame carries it.
pub(crate) fn done_output(frame: &Frame) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, _, output, _) = done_layout(&frame.payload)?;
    let (out, err) = output?;
    Some((frame.payload[out].to_vec(), frame.payload[err].to_vec()))
}

/// The task id a Done frame answers.
pub(crate) fn done_id(frame: &Frame) -> Option<u64> {
    Some(u64::from_le_bytes(frame.payload.get(..8)?.try_into().ok()?))
}

/// [`decode_done_within`] the default limit (1 GiB): for an answer known to
/// be small (an initializer's `()`).
pub(crate) fn decode_done<R: DeserializeOwned + 'static>(frame: Frame) -> Result<R, Error> {
    decode_done_within(frame, crate::wire::DEFAULT_MAX_MESSAGE)
}

/// Turn a Done frame into the task's result, accepting a result of at most
/// `max` bytes (see [`codec::decode_message`], which reads a big result
/// from the memfd the frame carries). Every reader of a task's Done frame
/// ends here: a pool's handle, a one-off unit's join.
pub(crate) fn decode_done_within<R: DeserializeOwned + 'static>(frame: Frame, max: u64) -> Result<R, Error> {
    let Some((status, _, _, at)) = done_layout(&frame.payload) else {
        return Err(Error::Codec("the worker sent a result too short to read".into()));
    };
    let body = &frame.payload[at..];
    match status {
        STATUS_VALUE if frame.lent.is_some() => codec::decode_lent(frame.lent.expect("just seen")),
        STATUS_VALUE => codec::decode_message(body, frame.fds, max),
        STATUS_PANICKED => Err(Error::Panicked { message: String::from_utf8_lossy(body).into_owned() }),
        STATUS_CODEC => Err(Error::Codec(String::from_utf8_lossy(body).into_owned())),
        other => Err(Error::Codec(format!("the worker sent an unknown result status {other}"))),
    }
}

/// Where a Done frame's lent result is (`codec::lend`), if it has one.
pub(crate) fn done_lent(frame: &Frame, max: u64) -> Option<Result<codec::LentReference, Error>> {
    let (status, _, _, at) = done_layout(&frame.payload)?;
    if status != STATUS_VALUE || frame.lent.is_some() {
        return None;
    }
    codec::lent_reference(&frame.payload[at..], max)
}

/// A Done frame's payload with its result inline (`codec::inline_message`),
/// for a machine that cannot receive its descriptors.
#[cfg(feature = "cluster")]
pub(crate) fn done_inline(frame: Frame, max: u64) -> Result<Vec<u8>, Error> {
    if let Some(lent) = &frame.lent {
        let Some((STATUS_VALUE, _, _, at)) = done_layout(&frame.payload) else {
            return Err(Error::Codec("a lent result that is not a value".into()));
        };
        let mut payload = frame.payload;
        payload.truncate(at);
        payload.extend_from_slice(&codec::inline_raw(lent));
        return Ok(payload);
    }
    if frame.fds.is_empty() {
        return Ok(frame.payload);
    }
    let Some((STATUS_VALUE, _, _, at)) = done_layout(&frame.payload) else {
        return Err(Error::Codec("the worker sent descriptors with a result that is not a value".into()));
    };
    let mut payload = frame.payload;
    let body = payload.split_off(at);
    payload.extend_from_slice(&codec::inline_message(body, frame.fds, max)?);
    Ok(payload)
}

/// What a worker hands a map batch's entry: the task as received, its id,
/// and where each item's result goes.
pub(crate) struct BatchCall {
    pub inv: Invocation,
    pub id: u64,
    pub sink: batch::Sink,
}

/// The monomorphised entry of a map batch inside a worker.
pub(crate) type BatchEntry = fn(BatchCall) -> Outcome;

/// Run a batch's items one by one, publishing each outcome (see
/// [`crate::batch`]) before the next item starts; stop early if the parent
/// asks. The Done answer says how long it ran and how many items it did.
pub(crate) fn batch_entry<A: DeserializeOwned + 'static, R: Serialize + 'static>(call: BatchCall) -> Outcome {
    let BatchCall { inv, id, sink } = call;
    let Some(f) = code::resolve::<fn(A) -> R>(&inv.trusted, inv.func) else {
        return Outcome::Codec("the task's function is not in this executable".into());
    };
    let body = &inv.payload[inv.arg_at..];
    let Some((flags, count)) = batch::parse_prefix(body) else {
        return Outcome::Codec("a map batch too short to read".into());
    };
    let bytes = &body[batch::PREFIX_LEN..];
    let fixed_items = match batch::fixed_items(flags) {
        Ok(Some(kind)) if bytes.len() != count as usize * kind.width() => {
            return Outcome::Codec(format!(
                "a map batch of {count} {kind:?} items holds {} bytes",
                bytes.len()
            ));
        }
        Ok(kind) => kind,
        Err(why) => return Outcome::Codec(why),
    };
    let mut items = codec::ItemReader::new(bytes);
    // Results go out in the fixed-width encoding while they have one.
    let mut results_fixed = Fixed { on: true, kind: None };
    let start = std::time::Instant::now();
    let scope = codec::IncomingScope::enter(inv.fds);
    let mut results = codec::OutgoingScope::enter(Vec::with_capacity(64));
    let mut writer = batch::Writer::begin(&sink, id, flags & batch::TIMED != 0);
    let mut broken: Option<String> = None;
    let mut stopped = false;
    // Descriptors of the running item's value: rare, so kept out of the
    // hot path's return values.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for index in 0..count {
        if writer.stop_requested() {
            stopped = true;
            break;
        }
        writer.start(index);
        let status = match &broken {
            // Once one argument cannot be read, neither can those after it.
            Some(why) => {
                batch::begin_record(results.buf());
                results.buf().extend_from_slice(why.as_bytes());
                batch::STATUS_CODEC
            }
            None => match fixed_items {
                // Fixed-width items stand alone: one that does not decode
                // fails by itself.
                Some(kind) => {
                    let at = index as usize * kind.width();
                    match bytes.get(at..at + kind.width()).map(|b| fixed::decode::<A>(kind, b)) {
                        Some(Ok(arg)) => match catch_unwind(AssertUnwindSafe(|| f(arg))) {
                            Ok(value) => {
                                // The hot path: a primitive in, a primitive
                                // out, one store on the board.
                                if let Some((kind, bits)) = results_fixed.take(&value) {
                                    if writer.push_fixed(kind, bits).is_err() {
                                        break;
                                    }
                                    continue;
                                }
                                batch::begin_record(results.buf());
                                encode_result(value, &mut results, &mut fds, &mut results_fixed)
                            }
                            Err(payload) => {
                                batch::begin_record(results.buf());
                                results.buf().extend_from_slice(panic_message(payload.as_ref()).as_bytes());
                                batch::STATUS_PANICKED
                            }
                        },
                        _ => {
                            let why = format!("the argument: not a {kind:?} this task takes");
                            batch::begin_record(results.buf());
                            results.buf().extend_from_slice(why.as_bytes());
                            batch::STATUS_CODEC
                        }
                    }
                }
                None => {
                    batch::begin_record(results.buf());
                    match items.next::<A>() {
                        Err(e) => {
                            let why = format!("the argument: {}", e.codec_detail());
                            results.buf().extend_from_slice(why.as_bytes());
                            broken = Some(why);
                            batch::STATUS_CODEC
                        }
                        Ok(arg) => run_item(f, arg, &mut results, &mut fds, &mut results_fixed),
                    }
                }
            },
        };
        if writer.push(status, results.buf(), &fds).is_err() {
            // The parent is gone; the worker ends when its Done cannot be sent.
            break;
        }
        fds.clear();
    }
    drop(results);
    drop(scope);
    // If this fails the parent is gone, and so will the Done frame be.
    let _ = writer.finish();
    let body = batch::done_body(start.elapsed().as_nanos() as u64, writer.done(), stopped);
    Outcome::Value(Encoded { bytes: body, fds: Vec::new(), pin: None })
}

/// Run one item, appending its record body to the scope's bytes (the
/// encoded value, the panic message, or why the value could not be
/// encoded) and the descriptors of a value that holds shareables to `fds`;
/// its status.
#[inline]
fn run_item<A, R: Serialize>(
    f: fn(A) -> R,
    arg: A,
    scope: &mut codec::OutgoingScope,
    fds: &mut Vec<OwnedFd>,
    fixed: &mut Fixed,
) -> u8 {
    match catch_unwind(AssertUnwindSafe(|| f(arg))) {
        Err(payload) => {
            scope.buf().extend_from_slice(panic_message(payload.as_ref()).as_bytes());
            batch::STATUS_PANICKED
        }
        Ok(value) => encode_result(value, scope, fds, fixed),
    }
}

/// Append an item's value to its record (see [`run_item`]); its status.
#[inline]
fn encode_result<R: Serialize>(
    value: R,
    scope: &mut codec::OutgoingScope,
    fds: &mut Vec<OwnedFd>,
    fixed: &mut Fixed,
) -> u8 {
    let mark = scope.buf().len();
    if fixed.on {
        // A single primitive: its bytes, no serializer state, and never a
        // descriptor (a shareable is a tuple, which this refuses).
        match batch::append_fixed(&value, fixed.kind, scope.buf()) {
            Some(kind) => {
                fixed.kind = Some(kind);
                return batch::STATUS_FIXED;
            }
            None => fixed.on = false,
        }
    }
    let fd_mark = scope.fd_mark();
    let why = match scope.append(&value) {
        Ok(()) if scope.buf().len() - mark > batch::MAX_RECORD => {
            "the result is over 1 GiB, the most one map item can return".to_string()
        }
        // Descriptors are rare: look for them only if there are some.
        Ok(()) if !scope.added_fds_since(fd_mark) => return batch::STATUS_VALUE,
        Ok(()) if scope.fd_count() <= crate::wire::MAX_FDS => {
            fds.append(&mut scope.take_fds());
            return batch::STATUS_VALUE;
        }
        Ok(()) => format!(
            "the result holds more shareable objects than one message can carry ({})",
            crate::wire::MAX_FDS
        ),
        Err(e) => format!("the result: {}", e.codec_detail()),
    };
    drop(scope.take_fds());
    scope.buf().truncate(mark);
    scope.buf().extend_from_slice(why.as_bytes());
    batch::STATUS_CODEC
}

/// Whether a batch's results still go out in the fixed-width encoding,
/// and of which kind (the first one's).
struct Fixed {
    on: bool,
    kind: Option<fixed::Kind>,
}

impl Fixed {
    /// `value`'s kind and bits if results still go out fixed-width and it
    /// has that encoding; otherwise they no longer do.
    #[inline]
    fn take<R: Serialize>(&mut self, value: &R) -> Option<(fixed::Kind, u64)> {
        if !self.on {
            return None;
        }
        match fixed::encode(value, self.kind) {
            Ok((kind, bits)) => {
                self.kind = Some(kind);
                Some((kind, bits))
            }
            Err(_) => {
                self.on = false;
                None
            }
        }
    }
}

/// Header of a map batch's frame: id, entry offset, function offset.
pub(crate) fn batch_header(id: u64, entry: BatchEntry, func: i64) -> [u8; 24] {
    header(id, code::offset_of(entry), func)
}

/// The offsets a task frame names: the entry `call` and the user's `f`.
pub(crate) fn header_for(id: u64, call: Trampoline, func: i64) -> [u8; 24] {
    header(id, code::offset_of(call), func)
}

fn header(id: u64, call: i64, func: i64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8..16].copy_from_slice(&call.to_le_bytes());
    h[16..].copy_from_slice(&func.to_le_bytes());
    h
}

/// The entry that runs a pool's initializer (`fn()`) inside a worker.
pub(crate) fn init_trampoline(inv: Invocation) -> Outcome {
    let Some(f) = code::resolve::<fn()>(&inv.trusted, inv.func) else {
        return Outcome::Codec("the initializer is not in this executable".into());
    };
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => {
            Outcome::Value(codec::encode_message(&(), inv.max, codec::Bulk::Arena).expect("() encodes"))
        }
        Err(p) => Outcome::Panicked(panic_message(p.as_ref())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Kind;

    fn frame(payload: Vec<u8>) -> Frame {
        Frame { kind: Kind::Done, payload, fds: Vec::new(), lent: None }
    }

    #[test]
    fn a_done_frame_with_usage_and_output_reads_back_and_lies_are_refused() {
        let outcome = Outcome::Value(codec::encode_message(&42u32, 1 << 20, codec::Bulk::Arena).unwrap());
        let (mut header, body) = done_parts(7, &outcome);
        let usage = with_usage(&mut header, Usage { cpu_nanos: 5, peak_bytes: 6 });
        let lengths = with_output(&mut header, b"out", b"errs");
        let payload = [&header[..], &usage, &lengths, b"out", b"errs", body].concat();
        let f = frame(payload.clone());
        assert_eq!(done_usage(&f), Some(Usage { cpu_nanos: 5, peak_bytes: 6 }));
        assert_eq!(done_output(&f), Some((b"out".to_vec(), b"errs".to_vec())));
        assert_eq!(decode_done::<u32>(f).unwrap(), 42);
        // An output longer than the frame, or a frame cut inside its usage.
        let mut lying = payload.clone();
        lying[9 + USAGE_LEN + 4..9 + USAGE_LEN + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(done_output(&frame(lying.clone())), None);
        assert!(matches!(decode_done::<u32>(frame(lying)), Err(Error::Codec(_))));
        assert!(matches!(decode_done::<u32>(frame(payload[..12].to_vec())), Err(Error::Codec(_))));
    }
}
