//! What the pool queues: a task's work (in the shape its mode needs) and
//! how to resolve it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use super::batch;
use super::handle::{Control, Resolve};
use crate::Error;

/// How thread mode runs a task here: the user's `f` and the argument `X`
/// to an output `O`.
pub(crate) type LocalRun<X, A, R, O> = fn(fn(A) -> R, X) -> Result<O, Error>;

/// Thread mode's work: runs the task and returns what resolves its
/// completion, so the worker can count the task before anyone sees its result.
pub(crate) type ThreadWork = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// Process mode's work: the encoded frame of a task or a map batch.
pub(crate) struct ProcessWork {
    pub header: [u8; 24],
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// A big argument's arena, kept as it is while the task may be sent
    /// (again); its descriptor goes last with the frame
    /// (`codec::descriptors`).
    pub pin: Option<crate::codec::arena::Pin>,
}

impl ProcessWork {
    /// The descriptors to send with the frame: the shareables', then the
    /// arena's.
    pub(crate) fn descriptors(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        crate::codec::descriptors(&self.fds, self.pin.as_ref())
    }
}

/// A queued task, with the work of its pool's mode.
pub(crate) struct Job<W> {
    pub id: u64,
    pub control: Arc<Control>,
    pub completion: Arc<dyn Resolve>,
    pub work: W,
    /// Times the task was re-run after its worker died.
    pub attempts: u32,
    /// Times it could not be sent because its worker was already gone
    /// (process mode), or its node was lost (cluster mode: `node_losses`).
    pub undelivered: u32,
    /// A map batch: its items report one by one (see `batch`).
    pub batch: Option<BatchJob>,
}

impl<W> Job<W> {
    /// The same job with other work (`()` once its work is taken).
    pub(crate) fn with_work<V>(self, work: V) -> (Job<V>, W) {
        let Job { id, control, completion, work: old, attempts, undelivered, batch } = self;
        (Job { id, control, completion, work, attempts, undelivered, batch }, old)
    }
}

/// What the pool knows of a map batch beyond its work.
pub(crate) struct BatchJob {
    /// Set by its map to stop the batch after the running item.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// How many items it has.
    pub items: u32,
    /// Thread mode under a time limit: each item's start, for the supervisor.
    pub clock: Option<Arc<dyn batch::ItemClock>>,
}

/// A task on a pool thread, for time-outs and terminate.
pub(crate) struct Running {
    pub deadline: Option<Instant>,
    pub completion: Arc<dyn Resolve>,
    /// A timed map batch: its deadline is its running item's, not its own.
    pub clock: Option<Arc<dyn batch::ItemClock>>,
}
