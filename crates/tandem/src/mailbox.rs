//! The answer slot of a pool's process worker: one shared page where the
//! worker leaves the answer to a task sent on the direct lane, so neither
//! side makes a system call for it. A round trip is then the task's
//! `sendmsg` and `recvmsg` and one `sched_yield` each way, where the socket
//! answer cost a `sendmsg` and a `recvmsg` more (a Unix socket call costs
//! about twice a pipe's on this kind of machine: see BENCHMARKS.md).
//!
//! Protocol (words are 64-bit, written and read `SeqCst`):
//! - the parent, before sending task `id` on the lane, clears `RING` and
//!   sets `WANT` to `id + 1` (0 means no task may answer here);
//! - the worker, when task `id` ends and `WANT` says `id + 1`, writes the
//!   Done payload at `BODY` and its length in `SIZE` (or `ON_SOCKET` in
//!   `SIZE` when the answer must go on the socket: descriptors, reports,
//!   captured output, too big), then `SEQ = id + 1`, then reads `RING`: if
//!   a reader asked to be rung, it sends a `Ring` frame on the socket;
//! - a reader that stops polling sets `RING`, then looks at `SEQ` once more
//!   before it sleeps on the socket (one of the two always sees the other).
//!
//! A `Ring` frame is only a wake-up: a reader that finds nothing new in the
//! slot after one reads on. The worker is not trusted: the parent copies an
//! answer out before judging it, and a size over the slot is refused.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use crate::sys::board::Board;

/// Bytes of the shared page.
pub(crate) const LEN: usize = 4096;
const WANT: usize = 0;
const RING: usize = 8;
const SEQ: usize = 16;
const SIZE: usize = 24;
const BODY: usize = 64;
/// The largest answer that fits.
pub(crate) const CAPACITY: usize = LEN - BODY;
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

    /// The parent: task `id` is about to be sent on the lane.
    pub(crate) fn expect(&self, id: u64) {
        self.board.word(RING).store(0, SeqCst);
        self.board.word(WANT).store(id.wrapping_add(1), SeqCst);
    }

    /// The worker: whether task `id`'s answer may come here.
    pub(crate) fn wanted(&self, id: u64) -> bool {
        self.board.word(WANT).load(SeqCst) == id.wrapping_add(1)
    }

    /// The worker: leave task `id`'s answer, made of `parts` (at most
    /// [`CAPACITY`] bytes in all); true if a reader asked to be rung.
    pub(crate) fn leave(&self, id: u64, parts: &[&[u8]]) -> bool {
        let mut at = BODY;
        for part in parts {
            self.board.write(at, part);
            at += part.len();
        }
        self.board.word(SIZE).store((at - BODY) as u64, SeqCst);
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

    /// The parent: as new, for the next worker (nobody else may write).
    fn clear(&self) {
        for word in [WANT, RING, SEQ, SIZE] {
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
        for word in [WANT, RING, SEQ, SIZE] {
            assert_eq!(again.board.word(word).load(SeqCst), 0, "word {word} cleared");
        }
        let held = again.clone();
        spares.keep(again);
        assert!(spares.kept.lock().unwrap().is_empty(), "a slot someone holds is not kept");
        drop(held);
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
