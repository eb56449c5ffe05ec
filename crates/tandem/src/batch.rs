//! Map batches on the wire: many items travel as one task, yet each item
//! keeps a task's semantics.
//!
//! A worker publishes each item's result on a [`Board`] it shares with the
//! parent *before* it starts the next item. So when a worker dies (or is
//! killed at a time limit), the parent knows exactly which items have
//! results, which one was running, and which never started: only the running
//! one fails, the finished ones keep their results, and the rest run again
//! elsewhere without counting as a try.
//!
//! Board layout (one per worker, made by the parent, sealed, 8-byte words):
//!
//! | offset | word | written by |
//! |---|---|---|
//! | 0 | id of the batch the words below describe | worker, last, at a batch's start |
//! | 8 | `base << 32 \| count`: the arena holds the results of items `base..base+count` | worker, after each record |
//! | 16 | bytes of records in the arena | worker, before the word above |
//! | 24 | 1 + index of the item started last (0: none) | worker, before each item |
//! | 32 | CLOCK_MONOTONIC ns when it started (timed batches only) | worker, before the word above |
//! | 40 | id of a batch the parent asks to stop after its current item | parent |
//! | 64.. | arena: records, each a u32 LE `len << 2 \| status` and `len` bytes | worker |
//!
//! A record's status is a value (postcard), a panic, a codec failure, or a
//! value in the fixed-width encoding (`codec::fixed`: the kind's tag, then
//! its little-endian bytes), which a worker uses for results that are one
//! primitive; a batch whose items are such values says so in its flags
//! ([`FIXED`]) and carries them back to back, without per-item lengths.
//!
//! A record that carries descriptors or does not fit in the arena travels
//! alone in a `Partial` frame; when the arena fills, its records go in one
//! `Partial` frame and it starts over. At the batch's end the records left
//! in the arena stay there: the parent reads them from the board after the
//! Done frame, as it does after a death. A `Partial` frame is: batch id (u64),
//! index of its first item (u32), record count (u32), records. Results that
//! reached the parent both ways (a worker that died between sending a
//! `Partial` frame and clearing its arena) are taken once, by index.
//!
//! Nothing from the worker is trusted: indices, counts and lengths are
//! checked, and a bad one is an error for the parent to report, never a
//! panic or an out-of-bounds read.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::fixed;
use crate::sys::board::Board;
use crate::wire::{self, Frame, Kind};

/// Size of a worker's board.
pub(crate) const BOARD_LEN: usize = 1 << 20;
const BATCH: usize = 0;
const PROGRESS: usize = 8;
const USED: usize = 16;
const STARTED: usize = 24;
const SINCE: usize = 32;
const STOP: usize = 40;
const ARENA: usize = 64;
const ARENA_LEN: usize = BOARD_LEN - ARENA;

/// A record's status: the item returned (its encoded value follows).
pub(crate) const STATUS_VALUE: u8 = 0;
/// The item panicked (its message follows).
pub(crate) const STATUS_PANICKED: u8 = 1;
/// The item's argument or result could not be (de)serialized (why follows).
pub(crate) const STATUS_CODEC: u8 = 2;
/// The item returned a value in the fixed-width encoding (`codec::fixed`):
/// its kind's tag (one byte), then its bytes.
pub(crate) const STATUS_FIXED: u8 = 3;
const RECORD_HEADER: usize = 4;
/// Largest record body: its length has 30 bits.
pub(crate) const MAX_RECORD: usize = (1 << 30) - 1;
const PARTIAL_PREFIX: usize = 16;

/// Batch flag: record when each item starts (the pool has a time limit).
pub(crate) const TIMED: u8 = 1;
/// Batch flag: the items are in the fixed-width encoding (`codec::fixed`),
/// of the kind whose tag is in the flags' upper four bits.
pub(crate) const FIXED: u8 = 2;
/// Bytes before the items in a batch task's argument: flags (u8), count (u32 LE).
pub(crate) const PREFIX_LEN: usize = 5;

/// The start of a batch task's argument.
pub(crate) fn prefix(flags: u8, count: u32) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[0] = flags;
    p[1..].copy_from_slice(&count.to_le_bytes());
    p
}

/// `flags` for a batch whose items are fixed-width values of `kind`.
pub(crate) fn fixed_flags(flags: u8, kind: fixed::Kind) -> u8 {
    (flags & 0x0f) | FIXED | ((kind as u8) << 4)
}

/// The kind of a batch's fixed-width items, if its flags say they are.
/// `Err` for a kind this build does not know.
pub(crate) fn fixed_items(flags: u8) -> Result<Option<fixed::Kind>, String> {
    if flags & FIXED == 0 {
        return Ok(None);
    }
    fixed::Kind::from_tag(flags >> 4)
        .map(Some)
        .ok_or_else(|| format!("a map batch's items have the unknown fixed kind {}", flags >> 4))
}

/// Append a result record's body for `value` in the fixed-width encoding,
/// if it has one of kind `expected` (any when `None`): its kind.
#[inline]
pub(crate) fn append_fixed<T: serde::Serialize>(
    value: &T,
    expected: Option<fixed::Kind>,
    record: &mut Vec<u8>,
) -> Option<fixed::Kind> {
    let at = record.len();
    record.push(0);
    match fixed::append(value, expected, record) {
        Ok(kind) => {
            record[at] = kind as u8;
            Some(kind)
        }
        Err(_) => {
            record.truncate(at);
            None
        }
    }
}

/// The value of a `STATUS_FIXED` record's body.
#[inline]
pub(crate) fn fixed_value<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let (&tag, bytes) = body.split_first().ok_or("a fixed-width map result with no kind")?;
    let kind =
        fixed::Kind::from_tag(tag).ok_or_else(|| format!("a map result of the unknown fixed kind {tag}"))?;
    fixed::decode(kind, bytes)
        .map_err(|_| format!("a map result that is not a {kind:?} of {} bytes", kind.width()))
}

/// Flags and item count of a batch task's argument.
pub(crate) fn parse_prefix(bytes: &[u8]) -> Option<(u8, u32)> {
    let flags = *bytes.first()?;
    let count = u32::from_le_bytes(bytes.get(1..PREFIX_LEN)?.try_into().ok()?);
    Some((flags, count))
}

#[inline]
fn pack(base: u32, count: u32) -> u64 {
    (u64::from(base) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

#[inline]
fn record_header(status: u8, len: usize) -> [u8; RECORD_HEADER] {
    (((len as u32) << 2) | u32::from(status)).to_le_bytes()
}

fn partial_prefix(id: u64, first: u32, count: u32) -> [u8; PARTIAL_PREFIX] {
    let mut p = [0u8; PARTIAL_PREFIX];
    p[..8].copy_from_slice(&id.to_le_bytes());
    p[8..12].copy_from_slice(&first.to_le_bytes());
    p[12..].copy_from_slice(&count.to_le_bytes());
    p
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process.
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A fresh board for a worker.
pub(crate) fn new_board() -> io::Result<Board> {
    Board::create(BOARD_LEN)
}

/// Map the board a worker's parent sent.
pub(crate) fn open_board(fd: OwnedFd) -> io::Result<Board> {
    Board::open(fd, BOARD_LEN)
}

/// Ask batch `id` to stop after the item it is running (a dropped map).
pub(crate) fn request_stop(board: &Board, id: u64) {
    board.word(STOP).store(id, Ordering::Relaxed);
}

/// The item batch `id` is running and since when (CLOCK_MONOTONIC ns), if
/// one is running now. The time may be that of a later item (never an
/// earlier one), so a deadline computed from it is never early.
pub(crate) fn running_item(board: &Board, id: u64) -> Option<(u32, u64)> {
    if board.word(BATCH).load(Ordering::Acquire) != id {
        return None;
    }
    let started = board.word(STARTED).load(Ordering::Acquire);
    let since = board.word(SINCE).load(Ordering::Relaxed);
    let (base, count) = unpack(board.word(PROGRESS).load(Ordering::Acquire));
    let index = u32::try_from(started.checked_sub(1)?).ok()?;
    (u64::from(index) >= u64::from(base) + u64::from(count)).then_some((index, since))
}

/// What a worker needs to run batches: its board and its socket to the parent.
#[derive(Clone)]
pub(crate) struct Sink {
    pub board: Arc<Board>,
    pub socket: Arc<OwnedFd>,
}

/// The worker's side of one batch: publishes each item's outcome.
pub(crate) struct Writer<'s> {
    sink: &'s Sink,
    /// The board's words, looked up (and bounds-checked) once per batch.
    words: Words<'s>,
    id: u64,
    timed: bool,
    base: u32,
    count: u32,
    used: usize,
}

struct Words<'s> {
    progress: &'s AtomicU64,
    used: &'s AtomicU64,
    started: &'s AtomicU64,
    since: &'s AtomicU64,
    stop: &'s AtomicU64,
}

impl<'s> Writer<'s> {
    /// Start batch `id` on the board: nothing run yet.
    pub(crate) fn begin(sink: &'s Sink, id: u64, timed: bool) -> Writer<'s> {
        let board = &*sink.board;
        let words = Words {
            progress: board.word(PROGRESS),
            used: board.word(USED),
            started: board.word(STARTED),
            since: board.word(SINCE),
            stop: board.word(STOP),
        };
        words.started.store(0, Ordering::Relaxed);
        words.used.store(0, Ordering::Relaxed);
        words.progress.store(0, Ordering::Relaxed);
        board.word(BATCH).store(id, Ordering::Release);
        Writer { sink, words, id, timed, base: 0, count: 0, used: 0 }
    }

    /// Whether the parent asked this batch to stop.
    #[inline]
    pub(crate) fn stop_requested(&self) -> bool {
        self.words.stop.load(Ordering::Relaxed) == self.id
    }

    /// Item `index` starts now.
    #[inline]
    pub(crate) fn start(&self, index: u32) {
        if self.timed {
            self.words.since.store(now_ns(), Ordering::Relaxed);
        }
        self.words.started.store(u64::from(index) + 1, Ordering::Release);
    }

    /// Items with a published result.
    pub(crate) fn done(&self) -> u32 {
        self.base + self.count
    }

    /// Publish the running item's outcome: `status`, and the record in
    /// `record` (begun by [`begin_record`], then the body), with `fds` for a
    /// value that carries descriptors. Fails only if the parent is gone.
    #[inline]
    pub(crate) fn push(&mut self, status: u8, record: &mut Vec<u8>, fds: &[OwnedFd]) -> io::Result<()> {
        let len = (record.len().saturating_sub(RECORD_HEADER)).min(MAX_RECORD);
        record.truncate(RECORD_HEADER + len);
        record[..RECORD_HEADER].copy_from_slice(&record_header(status, len));
        let size = RECORD_HEADER + len;
        let alone = !fds.is_empty() || size > ARENA_LEN;
        if alone || size > ARENA_LEN - self.used {
            self.flush()?;
        }
        if alone {
            let prefix = partial_prefix(self.id, self.base, 1);
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            wire::send(self.sink.socket.as_fd(), Kind::Partial, &[&prefix, record], &borrowed)?;
            self.base += 1;
        } else {
            self.sink.board.write(ARENA + self.used, record);
            self.used += size;
            self.count += 1;
        }
        self.publish();
        Ok(())
    }

    /// Publish the running item's value in the fixed-width encoding: kind
    /// `kind`, bits `bits` (see `codec::fixed::encode`), as a
    /// `STATUS_FIXED` record written in one store. Fails only if the parent
    /// is gone.
    #[inline]
    pub(crate) fn push_fixed(&mut self, kind: fixed::Kind, bits: u64) -> io::Result<()> {
        let len = 1 + kind.width();
        let size = RECORD_HEADER + len;
        if size > ARENA_LEN - self.used {
            self.flush()?;
        }
        let header = ((len as u32) << 2) | u32::from(STATUS_FIXED);
        let record = u128::from(header) | (u128::from(kind as u8) << 32) | (u128::from(bits) << 40);
        let at = ARENA + self.used;
        if at + 16 <= BOARD_LEN {
            self.sink.board.write16(at, record);
        } else {
            self.sink.board.write(at, &record.to_le_bytes()[..size]);
        }
        self.used += size;
        self.count += 1;
        self.publish();
        Ok(())
    }

    /// End of the batch: the arena's records stay on the board, where the
    /// parent reads them after the batch's Done frame (one copy out of the
    /// mapping). Sending them instead cost a copy out here, one into the
    /// socket, one out of it and a zeroed buffer: 1M trivial items took
    /// 15.6-16.2 ms that way against 19.0-24.1 ms, in one run, alternating.
    /// The parent's read leaves the lines shared, so the next batch's first
    /// write to each takes it back, once per batch and line.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }

    #[inline(always)]
    fn publish(&self) {
        self.words.used.store(self.used as u64, Ordering::Relaxed);
        self.words.progress.store(pack(self.base, self.count), Ordering::Release);
    }

    /// Send the arena's records in one frame and start it over.
    fn flush(&mut self) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let board = &self.sink.board;
        let records = board.copy_out(ARENA, self.used);
        let prefix = partial_prefix(self.id, self.base, self.count);
        wire::send(self.sink.socket.as_fd(), Kind::Partial, &[&prefix, &records], &[])?;
        self.base += self.count;
        self.count = 0;
        self.used = 0;
        // Progress first: a parent that reads it with a stale byte count
        // still parses no record.
        self.words.progress.store(pack(self.base, 0), Ordering::Release);
        self.words.used.store(0, Ordering::Relaxed);
        Ok(())
    }
}

/// Start a record in `buf`: room for its header; its body follows.
#[inline]
pub(crate) fn begin_record(buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[0; RECORD_HEADER]);
}

/// The body of a batch's Done frame: how long it ran inside the worker, how
/// many items have results, and whether it stopped early on request.
pub(crate) fn done_body(nanos: u64, done: u32, stopped: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(13);
    b.extend_from_slice(&nanos.to_le_bytes());
    b.extend_from_slice(&done.to_le_bytes());
    b.push(u8::from(stopped));
    b
}

/// The counterpart of [`done_body`].
pub(crate) fn parse_done_body(body: &[u8]) -> Option<(u64, u32, bool)> {
    let nanos = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let done = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
    let stopped = *body.get(12)? != 0;
    Some((nanos, done, stopped))
}

/// A run of consecutive items' records, as received.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// How many records it holds.
    pub count: u32,
    data: Vec<u8>,
    at: usize,
    /// Descriptors of its one value, if it carries any.
    pub fds: Vec<OwnedFd>,
}

/// A chunk as it crosses machines (feature `cluster`): its record count and
/// records; the receiving side reads them as a chunk from a worker.
#[cfg(feature = "cluster")]
impl Chunk {
    /// Count and records, unless it carries descriptors (which cannot cross).
    pub(crate) fn into_wire(self) -> Result<(u32, Vec<u8>), Chunk> {
        if !self.fds.is_empty() {
            return Err(self);
        }
        let mut data = self.data;
        data.drain(..self.at.min(data.len()));
        Ok((self.count, data))
    }

    /// A chunk of `count` records received from another machine.
    pub(crate) fn from_wire(count: u32, data: Vec<u8>) -> Chunk {
        Chunk { count, data, at: 0, fds: Vec::new() }
    }
}

impl Chunk {
    /// Step past the next record and return it; `Err` once the data is
    /// malformed (and from then on). The caller counts the records.
    #[inline]
    pub(crate) fn pop(&mut self) -> Result<(u8, &[u8]), String> {
        let rest = &self.data[self.at.min(self.data.len())..];
        let (status, body, after) = split_record(rest)?;
        let start = self.data.len() - rest.len() + RECORD_HEADER;
        let len = body.len();
        self.at = self.data.len() - after.len();
        Ok((status, &self.data[start..start + len]))
    }
}

impl Chunk {
    /// Take the consecutive `STATUS_FIXED` records of one kind from the
    /// next one on, at most `max`, handing each one's kind and bits to
    /// `each`, which says whether it took the value; stop before any other
    /// record (or one `each` refused), leaving it for [`Chunk::pop`]. How
    /// many it took. The common case of a batch of primitives, without a
    /// per-record parse.
    #[inline]
    pub(crate) fn take_fixed(&mut self, max: usize, mut each: impl FnMut(fixed::Kind, u64) -> bool) -> usize {
        let mut at = self.at.min(self.data.len());
        let Some(kind) = self.data.get(at + RECORD_HEADER).and_then(|&tag| fixed::Kind::from_tag(tag)) else {
            return 0;
        };
        let width = kind.width();
        let size = RECORD_HEADER + 1 + width;
        let header = record_header(STATUS_FIXED, 1 + width);
        let mut taken = 0;
        while taken < max {
            let Some(record) = self.data.get(at..at + size) else { break };
            if record[..RECORD_HEADER] != header || record[RECORD_HEADER] != kind as u8 {
                break;
            }
            let value = &record[RECORD_HEADER + 1..];
            let bits = match value.try_into() {
                Ok(eight) => u64::from_le_bytes(eight),
                Err(_) => value.iter().rev().fold(0, |bits, &b| (bits << 8) | u64::from(b)),
            };
            if !each(kind, bits) {
                break;
            }
            at += size;
            taken += 1;
        }
        self.at = at;
        taken
    }
}

#[inline]
fn split_record(data: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let Some(header) = data.get(..RECORD_HEADER) else {
        return Err("a map result record is cut short".into());
    };
    let word = u32::from_le_bytes(header.try_into().expect("4 bytes"));
    // Two bits of status: every value is one of the four statuses.
    let (status, len) = ((word & 3) as u8, (word >> 2) as usize);
    let body = data
        .get(RECORD_HEADER..RECORD_HEADER + len)
        .ok_or_else(|| format!("a map result record claims {len} bytes that are not there"))?;
    Ok((status, body, &data[RECORD_HEADER + len..]))
}

/// The parent's side of one batch: gathers results from `Partial` frames
/// and, at the end, from the board.
pub(crate) struct Collector {
    id: u64,
    items: u32,
    next: u32,
    chunks: Vec<Chunk>,
}

impl Collector {
    pub(crate) fn new(id: u64, items: u32) -> Collector {
        Collector { id, items, next: 0, chunks: Vec::new() }
    }

    /// Items with results so far (`0..done`).
    pub(crate) fn done(&self) -> u32 {
        self.next
    }

    /// Take a `Partial` frame; an error if it is not a valid next piece.
    pub(crate) fn partial(&mut self, frame: Frame) -> Result<(), String> {
        let p = &frame.payload;
        let (Some(id), Some(first), Some(count)) = (p.get(..8), p.get(8..12), p.get(12..16)) else {
            return Err("a partial map result too short to read".into());
        };
        let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
        let first = u32::from_le_bytes(first.try_into().expect("4 bytes"));
        let count = u32::from_le_bytes(count.try_into().expect("4 bytes"));
        if id != self.id {
            return Err(format!("results for batch {id} while batch {} was running", self.id));
        }
        if first != self.next || count == 0 || u64::from(first) + u64::from(count) > u64::from(self.items) {
            return Err(format!(
                "results for items {first}..{} of a batch of {} whose next item is {}",
                u64::from(first) + u64::from(count),
                self.items,
                self.next
            ));
        }
        if !frame.fds.is_empty() && count != 1 {
            return Err("descriptors came with several results at once".into());
        }
        self.next += count;
        self.chunks.push(Chunk { count, data: frame.payload, at: PARTIAL_PREFIX, fds: frame.fds });
        Ok(())
    }

    /// Take the results the board holds beyond the frames already read:
    /// after the batch's Done frame, or once its worker is dead. Returns the
    /// index of the item that was running, if one was.
    pub(crate) fn read_board(&mut self, board: &Board) -> Result<Option<u32>, String> {
        if board.word(BATCH).load(Ordering::Acquire) != self.id {
            // The worker never started this batch.
            return Ok(None);
        }
        let (base, count) = unpack(board.word(PROGRESS).load(Ordering::Acquire));
        let used = (board.word(USED).load(Ordering::Relaxed) as usize).min(ARENA_LEN);
        let end = u64::from(base) + u64::from(count);
        if base > self.next || end > u64::from(self.items) {
            return Err(format!(
                "the board claims results for items {base}..{end} of a batch of {} whose next item is {}",
                self.items, self.next
            ));
        }
        let end = end as u32;
        if end > self.next {
            let data = board.copy_out(ARENA, used);
            let mut at = 0;
            for _ in base..self.next {
                let (_, _, rest) = split_record(&data[at..])?;
                at = data.len() - rest.len();
            }
            self.chunks.push(Chunk { count: end - self.next, data, at, fds: Vec::new() });
            self.next = end;
        }
        let started = board.word(STARTED).load(Ordering::Acquire);
        Ok((started == u64::from(self.next) + 1 && self.next < self.items).then_some(self.next))
    }

    /// The chunks gathered, in item order.
    pub(crate) fn into_chunks(self) -> Vec<Chunk> {
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap()
    }

    fn bodies(chunks: Vec<Chunk>) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        for mut c in chunks {
            for _ in 0..c.count {
                let (s, b) = c.pop().unwrap();
                out.push((s, b.to_vec()));
            }
        }
        out
    }

    #[test]
    fn results_survive_on_the_board_and_the_running_item_is_known() {
        let (ours, theirs) = pair();
        let board = Arc::new(new_board().unwrap());
        let sink = Sink { board: board.clone(), socket: Arc::new(theirs) };
        let mut w = Writer::begin(&sink, 7, false);
        for i in 0..3u32 {
            w.start(i);
            let mut r = Vec::new();
            begin_record(&mut r);
            r.extend_from_slice(&[i as u8; 5]);
            w.push(STATUS_VALUE, &mut r, &[]).unwrap();
        }
        w.start(3); // "dies" while item 3 runs
        let mut c = Collector::new(7, 10);
        assert_eq!(c.read_board(&board).unwrap(), Some(3));
        assert_eq!(c.done(), 3);
        assert_eq!(bodies(c.into_chunks()), (0..3u8).map(|i| (STATUS_VALUE, vec![i; 5])).collect::<Vec<_>>());
        drop(ours);
    }

    #[test]
    fn a_full_arena_flushes_to_frames_and_nothing_is_taken_twice() {
        let (ours, theirs) = pair();
        let board = Arc::new(new_board().unwrap());
        let sink = Sink { board: board.clone(), socket: Arc::new(theirs) };
        let mut w = Writer::begin(&sink, 1, false);
        let big = ARENA_LEN / 3;
        let reader = std::thread::spawn(move || {
            let mut frames = Vec::new();
            while let Ok(f) = wire::recv(ours.as_fd(), 1 << 30, None) {
                frames.push(f);
            }
            frames
        });
        for i in 0..5u32 {
            w.start(i);
            let mut r = vec![i as u8; RECORD_HEADER + big];
            w.push(STATUS_VALUE, &mut r, &[]).unwrap();
        }
        // One record bigger than the whole arena goes alone.
        w.start(5);
        let mut r = vec![5u8; RECORD_HEADER + ARENA_LEN + 10];
        w.push(STATUS_VALUE, &mut r, &[]).unwrap();
        // The worker's end of the socket closes: the reader stops.
        drop(sink);
        let frames = reader.join().unwrap();
        let mut c = Collector::new(1, 6);
        for f in frames {
            c.partial(f).unwrap();
        }
        assert_eq!(c.read_board(&board).unwrap(), None);
        let got = bodies(c.into_chunks());
        assert_eq!(got.len(), 6);
        for (i, (s, b)) in got.iter().enumerate() {
            assert_eq!(*s, STATUS_VALUE);
            assert!(b.iter().all(|&x| x == i as u8), "item {i}");
        }
    }

    #[test]
    fn a_batch_never_started_has_no_results_and_lies_are_refused() {
        let board = new_board().unwrap();
        let mut c = Collector::new(9, 4);
        assert_eq!(c.read_board(&board).unwrap(), None);
        assert_eq!(c.done(), 0);
        // The board claims more items than the batch has.
        board.word(BATCH).store(9, Ordering::Release);
        board.word(PROGRESS).store(pack(0, 5), Ordering::Release);
        assert!(c.read_board(&board).is_err());
        // A record whose length runs past its data.
        board.word(PROGRESS).store(pack(0, 1), Ordering::Release);
        board.word(USED).store(8, Ordering::Release);
        board.write(ARENA, &record_header(STATUS_VALUE, 1000));
        let mut c = Collector::new(9, 4);
        c.read_board(&board).unwrap();
        assert!(c.into_chunks()[0].pop().is_err());
        // A frame for another batch, or out of order.
        let mut c = Collector::new(9, 4);
        let frame = |id: u64, first: u32| Frame {
            kind: Kind::Partial,
            payload: partial_prefix(id, first, 1).to_vec(),
            fds: Vec::new(),
            lent: None,
        };
        assert!(c.partial(frame(8, 0)).is_err());
        assert!(c.partial(frame(9, 2)).is_err());
        assert!(c.partial(frame(9, 0)).is_ok());
    }
}
