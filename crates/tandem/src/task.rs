//! What travels for one task: the message layouts, the trampoline that runs
//! a task inside a worker, and the decoding of its outcome in the parent.

use std::any::Any;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::codec::{self, Encoded};
use crate::sys::code::{self, Trusted};
use crate::wire::Frame;

/// A task as the worker receives it.
pub(crate) struct Invocation {
    pub func: i64,
    pub payload: Vec<u8>,
    pub arg_at: usize,
    pub fds: Vec<OwnedFd>,
    pub trusted: Trusted,
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

/// The monomorphised entry a worker calls: decode `A`, run `f`, encode `R`.
pub(crate) type Trampoline = fn(Invocation) -> Outcome;

pub(crate) fn trampoline<A: DeserializeOwned + 'static, R: Serialize + 'static>(inv: Invocation) -> Outcome {
    let Some(f) = code::resolve::<fn(A) -> R>(&inv.trusted, inv.func) else {
        return Outcome::Codec("the task's function is not in this executable".into());
    };
    let arg: A = match codec::decode(&inv.payload[inv.arg_at..], inv.fds) {
        Ok(arg) => arg,
        Err(e) => return Outcome::Codec(format!("the argument: {}", e.codec_detail())),
    };
    drop(inv.payload);
    match catch_unwind(AssertUnwindSafe(|| f(arg))) {
        Ok(result) => match codec::encode(&result) {
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

/// The task id a Done frame answers.
pub(crate) fn done_id(frame: &Frame) -> Option<u64> {
    Some(u64::from_le_bytes(frame.payload.get(..8)?.try_into().ok()?))
}

/// Turn a Done frame into the task's result.
pub(crate) fn decode_done<R: DeserializeOwned>(frame: Frame) -> Result<R, Error> {
    let Some(&status) = frame.payload.get(8) else {
        return Err(Error::Codec("the worker sent a result too short to read".into()));
    };
    let body = &frame.payload[9..];
    match status {
        STATUS_VALUE => codec::decode(body, frame.fds),
        STATUS_PANICKED => Err(Error::Panicked { message: String::from_utf8_lossy(body).into_owned() }),
        STATUS_CODEC => Err(Error::Codec(String::from_utf8_lossy(body).into_owned())),
        other => Err(Error::Codec(format!("the worker sent an unknown result status {other}"))),
    }
}

/// What a batch of map items returns: each item's result (a panic as its
/// message) and the nanoseconds the batch took inside its unit, from which
/// `map` sizes the next batches.
pub(crate) type BatchOut<R> = (Vec<Result<R, String>>, u64);

/// Run `f` over every item here, catching each panic on its own.
pub(crate) fn run_batch<A, R>(f: fn(A) -> R, items: Vec<A>) -> Result<BatchOut<R>, Error> {
    let start = std::time::Instant::now();
    let out = items
        .into_iter()
        .map(|item| catch_unwind(AssertUnwindSafe(|| f(item))).map_err(|p| panic_message(p.as_ref())))
        .collect();
    Ok((out, start.elapsed().as_nanos() as u64))
}

/// The worker-side entry of a batch: decode `Vec<A>`, run, encode `BatchOut<R>`.
pub(crate) fn batch_trampoline<A: DeserializeOwned + 'static, R: Serialize + 'static>(
    inv: Invocation,
) -> Outcome {
    let Some(f) = code::resolve::<fn(A) -> R>(&inv.trusted, inv.func) else {
        return Outcome::Codec("the task's function is not in this executable".into());
    };
    let items: Vec<A> = match codec::decode(&inv.payload[inv.arg_at..], inv.fds) {
        Ok(items) => items,
        Err(e) => return Outcome::Codec(format!("the argument: {}", e.codec_detail())),
    };
    drop(inv.payload);
    let out = run_batch(f, items).expect("run_batch does not fail");
    match codec::encode(&out) {
        Ok(encoded) => Outcome::Value(encoded),
        Err(e) => Outcome::Codec(format!("the result: {}", e.codec_detail())),
    }
}

/// The offsets a task frame names: the entry `call` and the user's `f`.
pub(crate) fn header_for(id: u64, call: Trampoline, func: i64) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8..16].copy_from_slice(&code::offset_of(call).to_le_bytes());
    h[16..].copy_from_slice(&func.to_le_bytes());
    h
}

/// The entry that runs a pool's initializer (`fn()`) inside a worker.
pub(crate) fn init_trampoline(inv: Invocation) -> Outcome {
    let Some(f) = code::resolve::<fn()>(&inv.trusted, inv.func) else {
        return Outcome::Codec("the initializer is not in this executable".into());
    };
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => Outcome::Value(codec::encode(&()).expect("() encodes")),
        Err(p) => Outcome::Panicked(panic_message(p.as_ref())),
    }
}
