//! Process mode: one event loop thread drives every worker process of the
//! pool, whatever its size.
//!
//! - [`event_loop`]: the loop. It waits in one `epoll` on every worker's
//!   socket and pidfd and on its [`Bell`], and owns each worker's whole
//!   life: hand it a task, read the answer a piece at a time (a worker
//!   that stalls mid-answer stalls no one else), judge a death, keep the
//!   deadlines, kill, replace, recycle, retry, shut down, terminate.
//! - [`lanes`]: the direct path. While a worker is idle its lane is open:
//!   a submitter that finds the queue empty sends the task straight to the
//!   worker and the task's handle reads the answer itself (two hand-offs,
//!   like a bare pipe round trip). The loop takes the task over whenever
//!   anything but a plain answer happens.
//! - [`batch`]: a map batch in a worker, as the loop drives it.
//! - [`memory`]: `worker_memory_limit`, by a memory cgroup per worker
//!   ([`cgroup`]) or by sampling.
//! - [`starter`]: starting a worker (launch, initializer, sandbox) blocks
//!   for a while, so a few starter threads do it and hand the worker to
//!   the loop.
//!
//! Threads in the parent: the loop and at most [`starter::STARTERS`]
//! starters, for 1 or 1,000 workers.

mod batch;
mod cgroup;
mod event_loop;
mod memory;
pub(crate) use memory::Memory;
pub(crate) mod lanes;
mod starter;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use rustix::event::EventfdFlags;

use super::backend::Backend;
use super::handle::Resolve;
use super::job::ProcessWork;
use super::shared::State;
use crate::Error;
use crate::child::ChildProcess;
use lanes::{Lane, Peer};

type Shared = super::shared::Shared<Processes>;
pub(super) type Job = super::job::Job<ProcessWork>;

/// Process mode's own part of a pool: the loop's bell, a lane per worker
/// slot, the starters.
pub(crate) struct Processes {
    pub(crate) lanes: Vec<Lane>,
    pub(super) bell: Bell,
    starters: starter::Starters,
    /// Answer slots of reaped workers, for their successors.
    pub(super) mailboxes: crate::mailbox::Spares,
    /// How the resident-memory limit is enforced, chosen once.
    pub(super) memory: Memory,
    /// Sandboxed pools: what the first worker to finish starting enforced,
    /// or why it could not start.
    sandbox_outcome: Mutex<Option<Result<Vec<String>, Error>>>,
    sandbox_ready: std::sync::Condvar,
}

impl Processes {
    pub(crate) fn new(workers: usize, memory: Memory) -> Result<Processes, Error> {
        Ok(Processes {
            memory,
            lanes: (0..workers).map(|_| Lane::default()).collect(),
            bell: Bell::new(workers)?,
            starters: starter::Starters::default(),
            mailboxes: crate::mailbox::Spares::new(workers),
            sandbox_outcome: Default::default(),
            sandbox_ready: Default::default(),
        })
    }

    /// Keep the first sandbox outcome of a worker start.
    fn note_sandbox_outcome(&self, outcome: Result<&[String], &Error>) {
        let mut slot = self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome.map(<[String]>::to_vec).map_err(Error::duplicate));
            self.sandbox_ready.notify_all();
        }
    }

    /// Wait for the first sandbox outcome.
    pub(crate) fn wait_sandbox_outcome(&self) -> Result<Vec<String>, Error> {
        let mut slot = self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = &*slot {
                return match outcome {
                    Ok(report) => Ok(report.clone()),
                    Err(e) => Err(e.duplicate()),
                };
            }
            slot = self.sandbox_ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// What the first worker enforced; empty without a sandbox.
    pub(crate) fn sandbox_report(&self) -> Vec<String> {
        match &*self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(report)) => report.clone(),
            _ => Vec::new(),
        }
    }
}

impl Backend for Processes {
    type Work = ProcessWork;
    type Locked = ();

    fn queued(shared: &Shared, state: MutexGuard<'_, State<Processes>>) {
        drop(state);
        shared.backend.bell.ring();
    }

    fn wake_all(shared: &Shared) {
        shared.backend.bell.ring_always();
    }

    fn take_running(_state: &mut State<Processes>) -> Vec<Arc<dyn Resolve>> {
        // The loop resolves the running tasks `Cancelled` when it sees the
        // pool terminating.
        Vec::new()
    }
}

/// Start the pool's loop (which starts the workers).
pub(crate) fn start(shared: &Arc<Shared>) -> Result<(), Error> {
    let pool = shared.clone();
    let handle = std::thread::Builder::new()
        .name("tandem-pool-loop".into())
        .stack_size(256 * 1024)
        .spawn(move || event_loop::run(&pool))
        .map_err(|e| Error::os("starting a process pool's event loop thread", e))?;
    shared.lock().joinable.push((0, handle));
    Ok(())
}

/// Ask the loop to look at slot `slot` (a cancel, a dropped or awaited
/// direct task, a map's stop, a joiner done reading).
pub(crate) fn attend(pool: &Weak<Shared>, slot: usize) {
    if let Some(pool) = pool.upgrade() {
        pool.backend.bell.attend(slot);
    }
}

/// How the loop is woken: an eventfd it waits on, rung only while it may
/// be asleep, and a flag per slot that needs a look.
pub(super) struct Bell {
    fd: OwnedFd,
    /// Set by the loop before it checks for work one last time and sleeps;
    /// whoever finds it set writes the eventfd.
    asleep: AtomicBool,
    /// Slots to look at.
    attention: Vec<AtomicBool>,
    /// Set with any of `attention`, so the loop need not scan them all.
    any: AtomicBool,
}

impl Bell {
    fn new(slots: usize) -> Result<Bell, Error> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| Error::os("creating a process pool's eventfd", e))?;
        Ok(Bell {
            fd,
            asleep: AtomicBool::new(false),
            attention: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            any: AtomicBool::new(false),
        })
    }

    /// Wake the loop if it sleeps (or is about to).
    pub(super) fn ring(&self) {
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.ring_always();
        }
    }

    /// Wake the loop whatever it does.
    fn ring_always(&self) {
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    pub(super) fn attend(&self, slot: usize) {
        self.attention[slot].store(true, Ordering::SeqCst);
        self.any.store(true, Ordering::SeqCst);
        self.ring();
    }
}

/// A live worker process and what it has done.
pub(super) struct Live {
    pub(super) child: ChildProcess,
    /// Its socket and a duplicate of its pidfd (shared with joiners).
    pub(super) peer: Peer,
    pub(super) tasks: u64,
    /// The board it publishes map batches on, once it has had one.
    pub(super) board: Option<crate::sys::board::Board>,
    /// With `capture_output`: the parent's copy of its stderr memfd, whose
    /// end goes into the error of a task it dies under (`output::tail`).
    pub(super) stderr: Option<std::os::fd::OwnedFd>,
    /// Killed by the loop for this resident memory, past the pool's
    /// `worker_memory_limit` (see `memory`).
    pub(super) over_memory: Option<u64>,
    /// Its memory cgroup, when the pool's limit is a cgroup's: dropped
    /// (removed) only once the worker has been reaped.
    pub(super) cgroup: Option<cgroup::Leaf>,
}

/// Times a task is handed to a fresh worker after the one it was sent to
/// died before taking it, before that counts as a death under it.
const UNDELIVERED_TRIES: u32 = 3;

/// What becomes of a task whose worker is gone.
#[derive(Debug, PartialEq, Eq)]
enum Again {
    /// It never reached the worker: queued again, not counted as a try.
    Free,
    /// Queued again as one more try.
    Retry,
    /// It fails with the worker's death.
    Fail,
}

/// The fate of a task that has been `undelivered` times to workers that
/// died before taking it and run `attempts` times past its first, whose
/// worker has now died (`never_reached`: before it took the task), in a
/// pool that retries `retries` times (none once `terminating`). A task
/// that keeps meeting dying workers before they take it uses its free
/// sends first and then its retries, as any death does: it never fails
/// while the pool still has tries to give it.
fn again(never_reached: bool, undelivered: u32, attempts: u32, retries: u32, terminating: bool) -> Again {
    if never_reached && undelivered < UNDELIVERED_TRIES {
        Again::Free
    } else if attempts < retries && !terminating {
        Again::Retry
    } else {
        Again::Fail
    }
}

#[cfg(test)]
mod again_tests {
    use super::{Again, UNDELIVERED_TRIES, again};

    #[test]
    fn a_task_that_never_reached_its_worker_is_sent_again_free_then_on_its_retries() {
        for undelivered in 0..UNDELIVERED_TRIES {
            assert_eq!(again(true, undelivered, 0, 0, false), Again::Free);
            assert_eq!(again(true, undelivered, 0, 0, true), Again::Free, "terminating or not");
        }
        // Past the free sends, each further one is a try of its own.
        assert_eq!(again(true, UNDELIVERED_TRIES, 0, u32::MAX, false), Again::Retry);
        assert_eq!(again(true, UNDELIVERED_TRIES, 6, 7, false), Again::Retry);
        assert_eq!(again(true, UNDELIVERED_TRIES, 7, 7, false), Again::Fail);
        assert_eq!(again(true, UNDELIVERED_TRIES, 0, 0, false), Again::Fail);
        assert_eq!(again(true, UNDELIVERED_TRIES, 0, u32::MAX, true), Again::Fail);
    }

    #[test]
    fn a_task_whose_worker_died_under_it_runs_again_only_on_its_retries() {
        assert_eq!(again(false, 0, 0, 1, false), Again::Retry);
        assert_eq!(again(false, 0, 1, 1, false), Again::Fail);
        assert_eq!(again(false, 0, 0, 0, false), Again::Fail);
        assert_eq!(again(false, 0, 0, 5, true), Again::Fail, "a terminating pool retries nothing");
    }
}
