//! A worker's big byte results lent to its parent instead of copied into
//! an arena: the parent reads them straight out of the worker's memory
//! (`sys::remote`, one copy instead of two) and then says so.
//!
//! Only a `Vec<u8>` or `ByteBuf` result over the bulk threshold is lent,
//! and only where the parent asked (its Config: it checked it may read its
//! children, and every place it reads a worker's answer reads a lent one
//! first). The message is [`TAG_LENT`](super) then the length, the
//! buffer's address and the address of its release flag (8 bytes each,
//! little endian). The worker keeps the buffer, untouched, until the
//! parent has written a non-zero byte into the flag: a flag of its own
//! per buffer, so no write the kernel tears into pieces can release
//! another. A task that changed the worker's ids or made it undumpable
//! (the parent could no longer read it) makes it lend nothing more. At most [`MOST`] buffers and [`MOST_BYTES`] wait at once; past
//! that a result goes to the arena as before. Released buffers are freed
//! before each task.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Buffers waiting for their parent at most.
const MOST: usize = 4;
/// Bytes waiting for their parent at most.
const MOST_BYTES: usize = 256 << 20;

/// What the parent writes into a buffer's flag once it has read it.
pub(crate) const RELEASED: [u8; 8] = 1u64.to_le_bytes();

struct Lent {
    buf: Vec<u8>,
    released: Box<AtomicU64>,
}

impl Lent {
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire) != 0
    }
}

static LENDING: AtomicBool = AtomicBool::new(false);
/// This worker's credentials when lending was turned on: the parent's
/// permission to read it was checked against those.
static LENT_AS: Mutex<Option<Credentials>> = Mutex::new(None);

/// What decides whether the parent may read this process's memory (ptrace
/// access): its user and group ids and whether it is dumpable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Credentials {
    uid: u32,
    euid: u32,
    gid: u32,
    egid: u32,
    dumpable: bool,
}

impl Credentials {
    fn now() -> Credentials {
        use rustix::process::{getegid, geteuid, getgid, getuid};
        Credentials {
            uid: getuid().as_raw(),
            euid: geteuid().as_raw(),
            gid: getgid().as_raw(),
            egid: getegid().as_raw(),
            dumpable: matches!(
                rustix::process::dumpable_behavior(),
                Ok(rustix::process::DumpableBehavior::Dumpable)
            ),
        }
    }
}
static LENT: Mutex<Vec<Lent>> = Mutex::new(Vec::new());
/// How many buffers `LENT` holds, read without its lock.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Lend results from now on (the parent's Config says it reads them).
pub(crate) fn enable(on: bool) {
    *LENT_AS.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Credentials::now);
    LENDING.store(on, Ordering::Relaxed);
}

/// Whether the parent may still read this process: a task that changed
/// its ids or made it undumpable (dropping privileges, say) lends nothing
/// more, since the read would be refused and the result lost.
fn still_readable() -> bool {
    *LENT_AS.lock().unwrap_or_else(|e| e.into_inner()) == Some(Credentials::now())
}

/// Whether results are lent.
pub(crate) fn enabled() -> bool {
    LENDING.load(Ordering::Relaxed)
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Lent>> {
    LENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Free the buffers of `lent` the parent has read, and count what is left.
fn drop_released(lent: &mut Vec<Lent>) {
    lent.retain(|l| !l.released());
    WAITING.store(lent.len(), Ordering::Relaxed);
}

/// Keep `buf` for the parent to read: its (address, release flag's
/// address), or `buf` back if too much waits already.
pub(crate) fn lend(buf: Vec<u8>) -> Result<(u64, u64), Vec<u8>> {
    if !still_readable() {
        return Err(buf);
    }
    let mut lent = lock();
    drop_released(&mut lent);
    let bytes: usize = lent.iter().map(|l| l.buf.len()).sum();
    if lent.len() >= MOST || bytes + buf.len() > MOST_BYTES {
        return Err(buf);
    }
    let released = Box::new(AtomicU64::new(0));
    let at = (buf.as_ptr() as usize as u64, &*released as *const AtomicU64 as usize as u64);
    lent.push(Lent { buf, released });
    WAITING.store(lent.len(), Ordering::Relaxed);
    Ok(at)
}

/// Free the buffers the parent has read.
pub(crate) fn sweep() {
    if WAITING.load(Ordering::Relaxed) == 0 {
        return;
    }
    drop_released(&mut lock());
}

/// Buffers still waiting for the parent (tests).
#[cfg(feature = "fuzzing")]
pub(crate) fn waiting() -> usize {
    let mut lent = lock();
    drop_released(&mut lent);
    lent.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_kept_until_its_own_flag_says_released() {
        enable(true);
        lend(vec![1u8; 10]).unwrap();
        lend(vec![2u8; 10]).unwrap();
        // The parent's write, to the second buffer's flag only.
        for l in lock().iter().filter(|l| l.buf[0] == 2) {
            l.released.store(u64::from_le_bytes(RELEASED), Ordering::Release);
        }
        sweep();
        assert_eq!(lock().iter().map(|l| l.buf[0]).collect::<Vec<_>>(), vec![1]);
        // At most MOST wait: the next one is handed back.
        for _ in 0..MOST - 1 {
            lend(vec![3u8; 10]).unwrap();
        }
        assert_eq!(lend(vec![4u8; 10]), Err(vec![4u8; 10]));
        lock().clear();
        WAITING.store(0, Ordering::Relaxed);
    }
}
