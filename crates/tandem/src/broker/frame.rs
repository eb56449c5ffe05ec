//! What crosses the broker: a task frame (driver to agents, in the task
//! stream) and an answer frame (an agent to one driver, in its answer list),
//! each a fixed little-endian layout behind an HMAC-SHA256 tag over the
//! rest, keyed with the cluster's shared key.
//!
//! Task frame: `tag[32] | version u8 | build[32] | driver[16] | task u64 |
//! attempt u32 | lease_ms u32 | timeout_ms u64 | items u32 | header[24] |
//! payload`. `items` is 0 for a submitted task, else the item count of a map
//! batch; `header` and `payload` are the frame a local worker gets
//! (`task::header_for` / `batch_header`, then the encoded argument).
//!
//! Answer frame: `tag[32] | version u8 | driver[16] | task u64 | attempt u32
//! | kind u8 | node_len u8 | node | rest`, where rest is a worker's Done
//! frame payload (`DONE`), a postcard [`WireBatch`] (`BATCH`), a postcard
//! [`WireError`] (`FAILED` or `REFUSED`). A refusal of a frame whose tag did
//! not verify cannot be signed with the driver's key: it goes out with a
//! zero tag, and a driver accepts an unsigned answer only as a refusal (it
//! can fail a task, never give it a value).

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};

use crate::{Error, MemoryLimitBy};

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
const TASK_FIXED: usize = 1 + 32 + 16 + 8 + 4 + 4 + 8 + 4 + 24;
const ANSWER_FIXED: usize = 1 + 16 + 8 + 4 + 1 + 1;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The cluster's shared key.
#[derive(Clone)]
pub(crate) struct Key(Vec<u8>);

impl Key {
    pub(crate) fn new(bytes: &[u8]) -> Key {
        Key(bytes.to_vec())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is `body`'s (in constant time).
    fn verifies(&self, tag: &[u8], body: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(tag).is_ok()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// Which task (and which try of it) a frame is about: readable before the
/// tag is checked, to address a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Address {
    pub driver: u128,
    pub task: u64,
    pub attempt: u32,
}

/// A task as an agent receives it.
#[derive(Debug)]
pub(crate) struct TaskFrame {
    pub build: [u8; 32],
    pub to: Address,
    /// How long the driver lets a silent node keep the task.
    pub lease_ms: u32,
    /// The task's (or each item's) time limit, 0 for none.
    pub timeout_ms: u64,
    /// 0: one task; n: a map batch of n items.
    pub items: u32,
    pub header: [u8; 24],
    pub payload: Vec<u8>,
}

impl TaskFrame {
    pub(crate) fn encode(&self, key: &Key) -> Vec<u8> {
        let mut out = Vec::with_capacity(TAG_LEN + TASK_FIXED + self.payload.len());
        out.extend_from_slice(&[0; TAG_LEN]);
        out.push(VERSION);
        out.extend_from_slice(&self.build);
        out.extend_from_slice(&self.to.driver.to_le_bytes());
        out.extend_from_slice(&self.to.task.to_le_bytes());
        out.extend_from_slice(&self.to.attempt.to_le_bytes());
        out.extend_from_slice(&self.lease_ms.to_le_bytes());
        out.extend_from_slice(&self.timeout_ms.to_le_bytes());
        out.extend_from_slice(&self.items.to_le_bytes());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.payload);
        let tag = key.tag(&out[TAG_LEN..]);
        out[..TAG_LEN].copy_from_slice(&tag);
        out
    }

    /// The driver a task frame names, unverified (to clear the entries of a
    /// driver that is gone).
    pub(crate) fn driver_of(bytes: &[u8]) -> Option<u128> {
        let at = TAG_LEN + 1 + 32;
        Some(u128::from_le_bytes(bytes.get(at..at + 16)?.try_into().ok()?))
    }

    /// Read a task frame. `Err` says why it is refused, with its address
    /// when the frame is long enough to have one.
    pub(crate) fn decode(bytes: &[u8], key: &Key) -> Result<TaskFrame, (Option<Address>, String)> {
        if bytes.len() < TAG_LEN + TASK_FIXED {
            return Err((None, format!("a task frame of {} bytes is too short", bytes.len())));
        }
        let (tag, body) = bytes.split_at(TAG_LEN);
        let mut r = Reader(body);
        let version = r.u8();
        let build: [u8; 32] = r.array();
        let to = Address { driver: u128::from_le_bytes(r.array()), task: r.u64(), attempt: r.u32() };
        if !key.verifies(tag, body) {
            return Err((Some(to), "the task's tag does not verify with this agent's key".into()));
        }
        if version != VERSION {
            return Err((Some(to), format!("task frame version {version}; this agent reads {VERSION}")));
        }
        let lease_ms = r.u32();
        let timeout_ms = r.u64();
        let items = r.u32();
        let header = r.array();
        Ok(TaskFrame { build, to, lease_ms, timeout_ms, items, header, payload: r.0.to_vec() })
    }
}

/// What an agent answers.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A local worker's Done frame payload (its header, then the result).
    Done(Vec<u8>),
    /// A map batch's outcome.
    Batch(WireBatch),
    /// The task failed on the agent.
    Failed(WireError),
    /// The agent would not run it.
    Refused(String),
}

const DONE: u8 = 0;
const BATCH: u8 = 1;
const FAILED: u8 = 2;
const REFUSED: u8 = 3;

/// An answer as a driver receives it.
#[derive(Debug)]
pub(crate) struct AnswerFrame {
    pub to: Address,
    /// The agent that answered.
    pub node: String,
    pub reply: Reply,
}

impl AnswerFrame {
    /// Encode, signed with `key`, or unsigned (`None`: only a refusal of a
    /// frame that did not verify).
    pub(crate) fn encode(&self, key: Option<&Key>) -> Result<Vec<u8>, Error> {
        let node = &self.node.as_bytes()[..self.node.len().min(255)];
        let (kind, rest) = match &self.reply {
            Reply::Done(_) => (DONE, None),
            Reply::Batch(batch) => (BATCH, Some(postcard::to_allocvec(batch))),
            Reply::Failed(err) => (FAILED, Some(postcard::to_allocvec(err))),
            Reply::Refused(why) => (REFUSED, Some(postcard::to_allocvec(&WireError::Refused(why.clone())))),
        };
        let rest = rest.transpose().map_err(|e| Error::codec("encoding an answer for the broker", e))?;
        let mut out =
            Vec::with_capacity(TAG_LEN + ANSWER_FIXED + node.len() + rest.as_ref().map_or(0, Vec::len));
        out.extend_from_slice(&[0; TAG_LEN]);
        out.push(VERSION);
        out.extend_from_slice(&self.to.driver.to_le_bytes());
        out.extend_from_slice(&self.to.task.to_le_bytes());
        out.extend_from_slice(&self.to.attempt.to_le_bytes());
        out.push(kind);
        out.push(node.len() as u8);
        out.extend_from_slice(node);
        match (&self.reply, rest) {
            (Reply::Done(payload), _) => out.extend_from_slice(payload),
            (_, Some(rest)) => out.extend_from_slice(&rest),
            (_, None) => {}
        }
        if let Some(key) = key {
            let tag = key.tag(&out[TAG_LEN..]);
            out[..TAG_LEN].copy_from_slice(&tag);
        }
        Ok(out)
    }

    /// Read an answer: signed with `key`, or an unsigned refusal.
    pub(crate) fn decode(bytes: &[u8], key: &Key) -> Result<AnswerFrame, String> {
        if bytes.len() < TAG_LEN + ANSWER_FIXED {
            return Err(format!("an answer of {} bytes is too short", bytes.len()));
        }
        let (tag, body) = bytes.split_at(TAG_LEN);
        let mut r = Reader(body);
        let version = r.u8();
        let to = Address { driver: u128::from_le_bytes(r.array()), task: r.u64(), attempt: r.u32() };
        let kind = r.u8();
        let node_len = r.u8() as usize;
        let signed = key.verifies(tag, body);
        if !signed && (kind != REFUSED || tag.iter().any(|&b| b != 0)) {
            return Err("an answer whose tag does not verify with the driver's key".into());
        }
        if version != VERSION {
            return Err(format!("answer frame version {version}; this driver reads {VERSION}"));
        }
        if r.0.len() < node_len {
            return Err("an answer shorter than its node name".into());
        }
        let node = String::from_utf8_lossy(&r.0[..node_len]).into_owned();
        let rest = &r.0[node_len..];
        let reply = match kind {
            DONE => Reply::Done(rest.to_vec()),
            BATCH => Reply::Batch(postcard::from_bytes(rest).map_err(|e| format!("a batch answer: {e}"))?),
            FAILED => {
                Reply::Failed(postcard::from_bytes(rest).map_err(|e| format!("a failure answer: {e}"))?)
            }
            REFUSED => match postcard::from_bytes(rest).map_err(|e| format!("a refusal: {e}"))? {
                WireError::Refused(why) => Reply::Refused(why),
                _ => return Err("a refusal that carries another error".into()),
            },
            other => return Err(format!("an answer of unknown kind {other}")),
        };
        Ok(AnswerFrame { to, node, reply })
    }
}

/// A map batch's outcome on the wire (`pool::batch::RawBatch` without its
/// argument, which the driver kept).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireBatch {
    pub done: u32,
    /// Each chunk's record count and records (`crate::batch::Chunk`).
    pub chunks: Vec<(u32, serde_bytes::ByteBuf)>,
    pub end: WireEnd,
}

impl WireBatch {
    /// Whether its counts add up for a batch of `items` items: at most
    /// `items` done, the chunks holding exactly `done` records, a failed
    /// item within the batch. An agent with the key can still lie; it
    /// cannot make the driver read past what it sent.
    pub(crate) fn check(&self, items: u32) -> Result<(), String> {
        let records: u64 = self.chunks.iter().map(|(count, _)| u64::from(*count)).sum();
        let failed = u32::from(matches!(self.end, WireEnd::Failed(_)));
        if self.done > items || records != u64::from(self.done) || self.done + failed > items {
            return Err(format!(
                "a batch answer of {} results in chunks of {records} records, for a batch of {items} items",
                self.done
            ));
        }
        if matches!(self.end, WireEnd::Complete { .. }) && self.done != items {
            return Err(format!("a batch answer complete after {} of {items} items", self.done));
        }
        Ok(())
    }
}

/// `pool::batch::BatchEnd` on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireEnd {
    Complete { nanos: u64 },
    Unstarted,
    Failed(WireError),
    RestFail(WireError),
}

/// An [`Error`] on the wire. A worker's death keeps every field; the
/// receiving side adds the node's name.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    Panicked(String),
    WorkerDied {
        signal: Option<i32>,
        code: Option<i32>,
        pid: u32,
        item: Option<u64>,
        memory_limit: Option<u64>,
        output_tail: Option<String>,
        resident_at_kill: Option<u64>,
        /// `MemoryLimitBy`: 1 cgroup v2, 2 cgroup v1, 3 sampling.
        memory_limit_by: Option<u8>,
    },
    TimedOut,
    Cancelled,
    Codec(String),
    Closed,
    Other(String),
    TooLarge {
        size: u64,
        max: u64,
    },
    Broken(String),
    Refused(String),
}

impl WireError {
    pub(crate) fn from_error(err: &Error) -> WireError {
        match err {
            Error::Panicked { message } => WireError::Panicked(message.clone()),
            Error::WorkerDied {
                signal,
                code,
                pid,
                item,
                memory_limit,
                output_tail,
                resident_at_kill,
                memory_limit_by,
                ..
            } => WireError::WorkerDied {
                memory_limit_by: memory_limit_by.map(|by| match by {
                    MemoryLimitBy::CgroupV2 => 1,
                    MemoryLimitBy::CgroupV1 => 2,
                    _ => 3,
                }),
                signal: *signal,
                code: *code,
                pid: *pid,
                item: *item,
                memory_limit: *memory_limit,
                output_tail: output_tail.as_deref().map(str::to_owned),
                resident_at_kill: *resident_at_kill,
            },
            Error::TimedOut => WireError::TimedOut,
            Error::Cancelled => WireError::Cancelled,
            Error::Codec(m) => WireError::Codec(m.clone()),
            Error::Closed => WireError::Closed,
            Error::TooLarge { size, max } => WireError::TooLarge { size: *size, max: *max },
            Error::Broken(m) => WireError::Broken(m.clone()),
            Error::Refused { reason, .. } => WireError::Refused(reason.clone()),
            other => WireError::Other(other.to_string()),
        }
    }

    /// The error, as it happened on `node`.
    pub(crate) fn into_error(self, node: &str) -> Error {
        match self {
            WireError::Panicked(message) => Error::Panicked { message },
            WireError::WorkerDied {
                signal,
                code,
                pid,
                item,
                memory_limit,
                output_tail,
                resident_at_kill,
                memory_limit_by,
            } => Error::WorkerDied {
                memory_limit_by: memory_limit_by.map(|by| match by {
                    1 => MemoryLimitBy::CgroupV2,
                    2 => MemoryLimitBy::CgroupV1,
                    _ => MemoryLimitBy::Sampling,
                }),
                signal,
                code,
                pid,
                task: None,
                item,
                memory_limit,
                output_tail: output_tail.map(String::into_boxed_str),
                resident_at_kill,
                node: Some(node.into()),
            },
            WireError::TimedOut => Error::TimedOut,
            WireError::Cancelled => Error::Cancelled,
            WireError::Codec(m) => Error::Codec(m),
            WireError::Closed => Error::Closed,
            WireError::Other(m) => Error::Io(std::io::Error::other(format!("on node {node}: {m}"))),
            WireError::TooLarge { size, max } => Error::TooLarge { size, max },
            WireError::Broken(m) => Error::Broken(m),
            WireError::Refused(reason) => Error::Refused { node: node.to_owned(), reason },
        }
    }
}

/// Fixed-width reads from a slice whose length was checked first.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split at N")
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Decode `body` as a task frame and as an answer frame signed with a fixed
/// key (so what comes after the tag is parsed too), checking a batch answer
/// as the driver does (`__fuzz::cluster_frames`).
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_signed(body: &[u8]) {
    let key = Key::new(b"fuzz");
    let mut signed = key.tag(body).to_vec();
    signed.extend_from_slice(body);
    let _ = TaskFrame::decode(&signed, &key);
    if let Ok(AnswerFrame { reply: Reply::Batch(batch), .. }) = AnswerFrame::decode(&signed, &key) {
        let _ = batch.check(16);
    }
    let _ = TaskFrame::decode(body, &key);
    let _ = AnswerFrame::decode(body, &key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskFrame {
        TaskFrame {
            build: [7; 32],
            to: Address { driver: 42, task: 9, attempt: 2 },
            lease_ms: 1000,
            timeout_ms: 5,
            items: 0,
            header: [1; 24],
            payload: b"argument".to_vec(),
        }
    }

    #[test]
    fn a_task_frame_round_trips_and_any_flipped_bit_is_refused() {
        let key = Key::new(b"secret");
        let bytes = task().encode(&key);
        let back = TaskFrame::decode(&bytes, &key).unwrap();
        assert_eq!((back.to, back.payload.as_slice(), back.lease_ms), (task().to, &b"argument"[..], 1000));
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(TaskFrame::decode(&bad, &key).is_err(), "bit flipped at byte {at} went through");
        }
        let (to, why) = TaskFrame::decode(&bytes, &Key::new(b"other")).unwrap_err();
        assert_eq!(to, Some(task().to));
        assert!(why.contains("key"), "{why}");
        assert!(TaskFrame::decode(&bytes[..40], &key).is_err());
    }

    #[test]
    fn an_unsigned_answer_is_accepted_only_as_a_refusal() {
        let key = Key::new(b"secret");
        let to = Address { driver: 1, task: 2, attempt: 0 };
        let done = AnswerFrame { to, node: "a".into(), reply: Reply::Done(vec![1, 2, 3]) };
        assert!(AnswerFrame::decode(&done.encode(None).unwrap(), &key).is_err());
        let signed = AnswerFrame::decode(&done.encode(Some(&key)).unwrap(), &key).unwrap();
        assert!(matches!(signed.reply, Reply::Done(ref p) if p == &[1, 2, 3]));
        let refusal = AnswerFrame { to, node: "a".into(), reply: Reply::Refused("bad tag".into()) };
        let back = AnswerFrame::decode(&refusal.encode(None).unwrap(), &key).unwrap();
        assert!(matches!(back.reply, Reply::Refused(ref why) if why == "bad tag"));
        let failed = AnswerFrame { to, node: "a".into(), reply: Reply::Failed(WireError::TimedOut) };
        let mut bytes = failed.encode(Some(&key)).unwrap();
        bytes[TAG_LEN + 30] ^= 1;
        assert!(AnswerFrame::decode(&bytes, &key).is_err());
    }

    #[test]
    fn a_batch_answer_whose_counts_do_not_add_up_is_refused() {
        let chunk = |n: u32| (n, serde_bytes::ByteBuf::from(vec![0u8; 4]));
        let batch = |done, chunks: Vec<(u32, serde_bytes::ByteBuf)>, end| WireBatch { done, chunks, end };
        assert!(batch(10, vec![chunk(4), chunk(6)], WireEnd::Complete { nanos: 1 }).check(10).is_ok());
        assert!(batch(3, vec![chunk(3)], WireEnd::Failed(WireError::TimedOut)).check(10).is_ok());
        assert!(
            batch(11, vec![chunk(11)], WireEnd::Complete { nanos: 1 }).check(10).is_err(),
            "more than its items"
        );
        assert!(batch(5, vec![chunk(4)], WireEnd::Unstarted).check(10).is_err(), "records short of done");
        assert!(
            batch(9, vec![chunk(9)], WireEnd::Complete { nanos: 1 }).check(10).is_err(),
            "complete early"
        );
        assert!(batch(10, vec![chunk(10)], WireEnd::Failed(WireError::TimedOut)).check(10).is_err());
        assert!(batch(u32::MAX, vec![chunk(u32::MAX), chunk(1)], WireEnd::Unstarted).check(10).is_err());
    }
}
