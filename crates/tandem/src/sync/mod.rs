//! Locks and signals that work between threads and between processes: the
//! `multiprocessing.Lock` / `Semaphore` / `Event` / `Barrier` analogues.
//!
//! Each object lives in its own small block of anonymous shared memory (a
//! sealed memfd, never a name under /dev/shm). Clones, and copies sent to a
//! process inside a task's argument, are the same object. None of them can
//! be wedged by a unit that is killed while using it:
//!
//! - [`Mutex`] is glibc's robust, process-shared mutex: a holder's death is
//!   reported to the next locker as poison, like a panicking holder in std.
//! - [`Semaphore`] and [`Event`] are single atomic words with futex waits, so
//!   there is no half-done state for a killed unit to leave behind.
//! - [`Barrier`] watches the processes that hold it: if one dies, the waiters
//!   get [`Error::Broken`](crate::Error::Broken) instead of waiting forever.
//!
//! ```
//! use tandem::sync::Mutex;
//! tandem::init();
//! let total = Mutex::new(0u64).unwrap();
//! let h = tandem::process::spawn(total.clone(), |t| *t.lock().unwrap() += 40).unwrap();
//! h.join().unwrap();
//! *total.lock().unwrap() += 2;
//! assert_eq!(*total.lock().unwrap(), 42);
//! ```

mod barrier;
mod event;
mod liveness;
mod mutex;
mod semaphore;

pub use barrier::{Barrier, BarrierWaitResult};
pub use event::Event;
pub use mutex::{Mutex, MutexGuard};
pub use semaphore::Semaphore;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::backoff::Backoff;
use crate::sys::futex;

fn wake_all(word: &AtomicU32) {
    // A failed wake can only mean a bad address, which the region rules out.
    let _ = futex::wake_all(word);
}

/// Wait while `word` reads `seq`: spin and yield a little (the crate's one
/// policy, [`Backoff`]), then announce ourselves in `waiters` (if given) and
/// sleep on the futex. Announcing only after the spin means the waking side
/// makes a wake-up call only for real sleepers; it changes `word` before
/// reading `waiters`, and we count ourselves before the kernel compares
/// `word`, so no wake-up is missed. `false` once the deadline passed.
fn wait_on(word: &AtomicU32, seq: u32, waiters: Option<&AtomicU32>, deadline: Option<Instant>) -> bool {
    if Backoff::MEMORY.spin_until(|| word.load(Ordering::Acquire) != seq) {
        return true;
    }
    if let Some(w) = waiters {
        w.fetch_add(1, Ordering::SeqCst);
    }
    let woke = matches!(futex::wait(word, seq, deadline), Ok(true));
    if let Some(w) = waiters {
        w.fetch_sub(1, Ordering::SeqCst);
    }
    woke
}
