//! The seam between the pool's common part and its two modes.
//!
//! A mode ([`Threads`], [`Processes`]) says what work it queues, what it
//! keeps under the pool's lock, and how the common queue wakes its workers.
//! The common part ([`Shared`]: the queue, closing, terminating, numbers)
//! is written once over any mode, and a [`Pool`](super::Pool) holds one
//! `Shared` of either mode behind [`Inner`]. Nothing of one mode is a field
//! of the other, and neither mode's code meets the other's work.
//!
//! A new mode implements [`Backend`], adds a variant to [`Inner`], and
//! starts its workers in `PoolBuilder::build`, as the cluster mode
//! (`remote`, feature `cluster`) does.

use std::sync::{Arc, MutexGuard};

use super::handle::Resolve;
use super::processes::Processes;
use super::shared::{Shared, State};
use super::threads::Threads;

/// What a pool mode provides to the common part.
pub(crate) trait Backend: Sized + Send + Sync + 'static {
    /// What a queued task carries in this mode.
    type Work: Send + 'static;
    /// What this mode keeps under the pool's lock.
    type Locked: Send;

    /// A job was just queued (`state` is the pool's lock, still held):
    /// wake a worker for it.
    fn queued(shared: &Shared<Self>, state: MutexGuard<'_, State<Self>>);

    /// The pool is closing or terminating: wake every worker to see it.
    fn wake_all(shared: &Shared<Self>);

    /// The pool terminates: the completions of the tasks running now, which
    /// the pool cancels. A mode whose workers resolve their own running
    /// tasks when woken returns none.
    fn take_running(state: &mut State<Self>) -> Vec<Arc<dyn Resolve>>;
}

/// A pool's common part, in the pool's mode.
pub(crate) enum Inner {
    Threads(Arc<Shared<Threads>>),
    Processes(Arc<Shared<Processes>>),
    /// Cluster mode: the queue goes to agents on other machines.
    #[cfg(feature = "cluster")]
    Cluster(Arc<Shared<super::remote::Remote>>),
}
