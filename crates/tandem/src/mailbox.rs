//! The slot of a pool's process worker: one shared memfd (two pages)
//! where a small task sent on the direct lane and its answer are left, so
//! a round trip makes no socket call: each side only yields its CPU to the
//! other while it polls (see BENCHMARKS.md: a Unix socket call costs about
//! twice a pipe's on this kind of machine).
//!
//! Protocol (words are 64-bit, written and read `SeqCst`):
//! - the worker, once it has mapped the slot, sets `MAPPED`; before that
//!   the parent sends it everything on the socket;
//! - the parent, before task `id` goes out on the lane, clears `RING` and
//!   sets `WANT` to `id + 1` (0 means no task may answer here). A small
//!   task without descriptors is left in the slot: its bytes at
//!   `TASK_BODY`, their length in `TASK_SIZE`, then `TASK = id + 1`; then
//!   the parent reads `WAKE`, and if the worker sleeps on its socket sends
//!   it a `Ring` frame. Any other task goes on the socket;
//! - the worker polls `TASK` and its socket for its next task, and sets
//!   `TAKEN = id + 1` once it has copied a task out, before it runs it (a
//!   worker that died with `TAKEN` short of `TASK` never saw its task,
//!   which then goes to a fresh worker as a task whose send failed does);
//!   before it sleeps on the socket it sets `WAKE` and looks at `TASK` once
//!   more (one of the two sides always sees the other);
//! - the worker, when task `id` ends and `WANT` says `id + 1`, writes the
//!   Done payload at `BODY` and its length in `SIZE` (or `ON_SOCKET` in
//!   `SIZE` when the answer must go on the socket: descriptors, reports,
//!   captured output, too big), then `SEQ = id + 1`, then reads `RING`: if
//!   a reader asked to be rung, it sends a `Ring` frame on the socket;
//! - a reader that stops polling sets `RING`, then looks at `SEQ` once more
//!   before it sleeps on the socket.
//!
//! A `Ring` frame, either way, is only a wake-up: a reader that finds
//! nothing new in the slot after one reads on. The worker is not trusted:
//! the parent never reads the task half, copies an answer out before
//! judging it, and refuses a size over the slot.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use crate::sys::board::Board;

/// Bytes of the shared memory: the words and the answer, then the task.
pub(crate) const LEN: usize = 8192;
const WANT: usize = 0;
const RING: usize = 8;
const SEQ: usize = 16;
const SIZE: usize = 24;
const TASK: usize = 32;
const TASK_SIZE: usize = 40;
const WAKE: usize = 48;
const MAPPED: usize = 56;
const TAKEN: usize = 64;
const WORDS: [usize; 9] = [WANT, RING, SEQ, SIZE, TASK, TASK_SIZE, WAKE, MAPPED, TAKEN];
const BODY: usize = 128;
const TASK_BODY: usize = 4096;
/// The largest answer that fits.
pub(crate) const CAPACITY: usize = TASK_BODY - BODY;
/// The largest task that fits.
pub(crate) const TASK_CAPACITY: usize = LEN - TASK_BODY;
const ON_SOCKET: u64 = u64::MAX;

/// What the slot holds for a task.
#[derive(Debug)]
pub(crate) enum Held {
    /// Nothing yet.
    Empty,
    /// The answer is on the socket.
    OnSocket,
    /// The Done payload.
    Answer(Vec<u8>),
    /// The worker wrote something that cannot be an answer.
    Bad(String),
}

/// One worker's answer slot (either side).
pub(crate) struct Mailbox {
    board: Board,
}

impl Mailbox {
    /// A new slot (the parent, at a worker's start).
    pub(crate) fn create() -> io::Result<Mailbox> {
        Ok(Mailbox { board: Board::create(LEN)? })
    }

    /// The slot the parent sent (the worker).
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Mailbox> {
        Ok(Mailbox { board: Board::open(fd, LEN)? })
    }

    /// Its descriptor, to send.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.board.fd()
    }

    /// The parent: task `id` is about to be sent on the lane's socket.
    pub(crate) fn expect(&self, id: u64) {
        self.board.word(RING).store(0, SeqCst);
        self.board.word(WANT).store(id.wrapping_add(1), SeqCst);
    }

    /// The parent: whether a task of `len` bytes may be left here (the
    /// worker reads the slot, and the task fits).
    pub(crate) fn takes_task(&self, len: usize) -> bool {
        len <= TASK_CAPACITY && self.board.word(MAPPED).load(SeqCst) != 0
    }

    /// The parent: leave task `id`, made of `parts` (at most
    /// [`TASK_CAPACITY`] bytes in all: see [`Mailbox::takes_task`]); true
    /// if the worker sleeps on its socket and must be rung.
    pub(crate) fn post(&self, id: u64, parts: &[&[u8]]) -> bool {
        self.write_parts(TASK_BODY, TASK_SIZE, parts);
        self.expect(id);
        self.board.word(TASK).store(id.wrapping_add(1), SeqCst);
        self.board.word(WAKE).load(SeqCst) != 0
    }

    /// The worker: it reads the slot from now on.
    pub(crate) fn attach(&self) {
        self.board.word(MAPPED).store(1, SeqCst);
    }

    /// The worker: the bytes of a task left since the one numbered `seen`
    /// (which it then becomes), if there is one.
    pub(crate) fn take_task(&self, seen: &mut u64) -> io::Result<Option<Vec<u8>>> {
        let task = self.board.word(TASK).load(SeqCst);
        if task == 0 || task == *seen {
            return Ok(None);
        }
        *seen = task;
        let bytes = match self.board.word(TASK_SIZE).load(SeqCst) {
            size if size > TASK_CAPACITY as u64 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a task of {size} bytes in a slot of {TASK_CAPACITY}"),
                ));
            }
            size => self.board.copy_out(TASK_BODY, size as usize),
        };
        // Marked before it runs: a death before this never ran the task.
        self.board.word(TAKEN).store(task, SeqCst);
        Ok(Some(bytes))
    }

    /// The parent: whether task `id` was left here and never taken (its
    /// worker died first: the task never reached it).
    pub(crate) fn untaken(&self, id: u64) -> bool {
        self.board.word(TASK).load(SeqCst) == id.wrapping_add(1)
            && self.board.word(TAKEN).load(SeqCst) != id.wrapping_add(1)
    }

    /// The worker: whether a task newer than the one numbered `seen` is
    /// here (without taking it).
    #[cfg(feature = "chaos")]
    pub(crate) fn has_task_since(&self, seen: u64) -> bool {
        let task = self.board.word(TASK).load(SeqCst);
        task != 0 && task != seen
    }

    /// The worker: it is about to sleep on its socket (`true`), or awake.
    pub(crate) fn sleeping(&self, asleep: bool) {
        self.board.word(WAKE).store(asleep as u64, SeqCst);
    }

    /// The worker: whether task `id`'s answer may come here.
    pub(crate) fn wanted(&self, id: u64) -> bool {
        self.board.word(WANT).load(SeqCst) == id.wrapping_add(1)
    }

    /// The worker: leave task `id`'s answer, made of `parts` (at most
    /// [`CAPACITY`] bytes in all); true if a reader asked to be rung.
    pub(crate) fn leave(&self, id: u64, parts: &[&[u8]]) -> bool {
        self.write_parts(BODY, SIZE, parts);
        self.publish(id)
    }

    /// The worker: task `id`'s answer goes on the socket (which wakes its
    /// reader by itself).
    pub(crate) fn on_socket(&self, id: u64) {
        self.board.word(SIZE).store(ON_SOCKET, SeqCst);
        self.publish(id);
    }

    /// The worker, as a hostile one could: leave task `id`'s answer
    /// claiming `size` bytes ([`crate::chaos::lie_about_answer_size`]).
    #[cfg(feature = "chaos")]
    pub(crate) fn leave_claiming(&self, id: u64, parts: &[&[u8]], size: u64) -> bool {
        self.leave(id, parts);
        self.board.word(SIZE).store(size, SeqCst);
        self.publish(id)
    }

    fn publish(&self, id: u64) -> bool {
        self.board.word(SEQ).store(id.wrapping_add(1), SeqCst);
        self.board.word(RING).load(SeqCst) != 0
    }

    /// The parent: what the slot holds for task `id`.
    pub(crate) fn look(&self, id: u64) -> Held {
        if self.board.word(SEQ).load(SeqCst) != id.wrapping_add(1) {
            return Held::Empty;
        }
        match self.board.word(SIZE).load(SeqCst) {
            ON_SOCKET => Held::OnSocket,
            size if size > CAPACITY as u64 => {
                Held::Bad(format!("an answer of {size} bytes in a slot of {CAPACITY}"))
            }
            size => Held::Answer(self.board.copy_out(BODY, size as usize)),
        }
    }

    /// The parent: a reader is about to sleep on the socket: have the
    /// worker ring once it answers.
    pub(crate) fn ask_ring(&self) {
        self.board.word(RING).store(1, SeqCst);
    }

    /// Write `parts` one after another from `body`, then their length in
    /// the word at `size` (the bounds are the caller's: see `CAPACITY`).
    fn write_parts(&self, body: usize, size: usize, parts: &[&[u8]]) {
        let mut at = body;
        for part in parts {
            self.board.write(at, part);
            at += part.len();
        }
        self.board.word(size).store((at - body) as u64, SeqCst);
    }

    /// The parent: as new, for the next worker (nobody else may write).
    fn clear(&self) {
        for word in WORDS {
            self.board.word(word).store(0, SeqCst);
        }
    }
}

/// A pool's slots of workers that are gone, for their successors: making
/// one costs the parent a `memfd_create`, `ftruncate`, `fcntl` and `mmap`,
/// and unmapping it a TLB shoot-down across the parent's CPUs, about a
/// fifth of a fork-server worker's replacement (BENCHMARKS.md).
///
/// Reuse is safe once no process that mapped a slot can run: its worker
/// reaped, and whatever the worker forked killed with its process group
/// (a sandboxed worker cannot fork at all). Task ids are never reused, so
/// what a slot said for an earlier worker's task never matches a later one.
pub(crate) struct Spares {
    kept: Mutex<Vec<Mailbox>>,
    most: usize,
}

impl Spares {
    /// Keep at most `most` (the pool's worker count).
    pub(crate) fn new(most: usize) -> Spares {
        Spares { kept: Mutex::new(Vec::new()), most }
    }

    /// A slot for a new worker: a kept one, cleared, or a new one.
    pub(crate) fn take(&self) -> io::Result<Arc<Mailbox>> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match kept {
            Some(mailbox) => {
                mailbox.clear();
                Ok(Arc::new(mailbox))
            }
            None => Mailbox::create().map(Arc::new),
        }
    }

    /// Keep the slot of a worker that has been reaped, unless someone
    /// still holds it (then it is unmapped when the last holder lets go).
    pub(crate) fn keep(&self, mailbox: Arc<Mailbox>) {
        let Some(mailbox) = Arc::into_inner(mailbox) else { return };
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < self.most {
            kept.push(mailbox);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_left_for_the_expected_task_is_seen_once_published() {
        let parent = Mailbox::create().unwrap();
        let worker = Mailbox::open(parent.fd().try_clone_to_owned().unwrap()).unwrap();
        assert!(!worker.wanted(0), "no task may answer before one is expected");
        parent.expect(7);
        assert!(worker.wanted(7) && !worker.wanted(8));
        assert!(matches!(parent.look(7), Held::Empty));
        assert!(!worker.leave(7, &[b"ab", b"cd"]), "nobody asked to be rung");
        assert!(matches!(parent.look(7), Held::Answer(a) if a == b"abcd"));
        assert!(matches!(parent.look(8), Held::Empty), "an answer is for its own task only");
        parent.expect(8);
        parent.ask_ring();
        worker.on_socket(8);
        assert!(matches!(parent.look(8), Held::OnSocket));
        parent.expect(9);
        parent.ask_ring();
        assert!(worker.leave(9, &[b"x"]), "a reader asked to be rung");
    }

    #[test]
    fn a_kept_slot_comes_back_cleared_and_a_held_one_is_not_kept() {
        let spares = Spares::new(1);
        let first = spares.take().unwrap();
        first.expect(3);
        first.ask_ring();
        let worker = Mailbox::open(first.fd().try_clone_to_owned().unwrap()).unwrap();
        assert!(worker.leave(3, &[b"old"]), "its reader asked to be rung");
        drop(worker);
        let same_memory = first.board.word(WANT) as *const _ as usize;
        spares.keep(first);
        let again = spares.take().unwrap();
        assert_eq!(again.board.word(WANT) as *const _ as usize, same_memory, "the kept slot is reused");
        assert!(matches!(again.look(3), Held::Empty), "nothing of the earlier worker shows");
        for word in WORDS {
            assert_eq!(again.board.word(word).load(SeqCst), 0, "word {word} cleared");
        }
        let held = again.clone();
        spares.keep(again);
        assert!(spares.kept.lock().unwrap().is_empty(), "a slot someone holds is not kept");
        drop(held);
    }

    #[test]
    fn a_task_left_in_the_slot_is_taken_once_and_a_sleeping_worker_is_rung() {
        let parent = Mailbox::create().unwrap();
        let worker = Mailbox::open(parent.fd().try_clone_to_owned().unwrap()).unwrap();
        assert!(!parent.takes_task(10), "not before the worker reads the slot");
        worker.attach();
        assert!(parent.takes_task(TASK_CAPACITY) && !parent.takes_task(TASK_CAPACITY + 1));
        let mut seen = 0;
        assert!(worker.take_task(&mut seen).unwrap().is_none());
        assert!(!parent.post(4, &[b"he", b"llo"]), "an awake worker needs no ring");
        assert!(worker.wanted(4), "its answer may come here");
        assert!(parent.untaken(4) && !parent.untaken(3));
        assert_eq!(worker.take_task(&mut seen).unwrap().as_deref(), Some(&b"hello"[..]));
        assert!(!parent.untaken(4), "taken before it runs");
        assert!(worker.take_task(&mut seen).unwrap().is_none(), "taken once");
        worker.sleeping(true);
        assert!(parent.post(5, &[b"x"]), "a sleeping worker is rung");
        worker.sleeping(false);
        assert_eq!(worker.take_task(&mut seen).unwrap().as_deref(), Some(&b"x"[..]));
        parent.board.word(TASK_SIZE).store(TASK_CAPACITY as u64 + 1, SeqCst);
        parent.board.word(TASK).store(7, SeqCst);
        assert!(worker.take_task(&mut seen).is_err(), "a size over the slot is refused");
    }

    #[test]
    fn a_size_over_the_slot_is_refused() {
        let parent = Mailbox::create().unwrap();
        let worker = Mailbox::open(parent.fd().try_clone_to_owned().unwrap()).unwrap();
        parent.expect(1);
        worker.board.word(SIZE).store(CAPACITY as u64 + 1, SeqCst);
        worker.publish(1);
        assert!(matches!(parent.look(1), Held::Bad(_)));
    }
}
