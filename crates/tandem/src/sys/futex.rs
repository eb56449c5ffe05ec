//! Futex waits and wakes on 32-bit words in shared memory.
//!
//! The words live in `MAP_SHARED` memory, so the calls use shared (not
//! `FUTEX_PRIVATE_FLAG`) futexes: a wake in one process reaches a sleeper
//! in another. rustix makes both calls safe; they are here so every futex
//! call of the sharing layers is in one place, with one timeout rule.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use rustix::thread::futex;

/// Sleep while `word` holds `seq`, until woken or `deadline` (`None`:
/// forever): `futex(2)` with `FUTEX_WAIT`.
///
/// `Ok(true)` when the sleep ended (woken, the word had already changed, or
/// a signal: the caller looks again), `Ok(false)` once the deadline has
/// passed (checked before sleeping).
pub fn wait(word: &AtomicU32, seq: u32, deadline: Option<Instant>) -> io::Result<bool> {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            Some(rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            })
        }
    };
    match futex::wait(word, futex::Flags::empty(), seq, timeout.as_ref()) {
        Ok(())
        | Err(rustix::io::Errno::AGAIN)
        | Err(rustix::io::Errno::INTR)
        | Err(rustix::io::Errno::TIMEDOUT) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Wake every sleeper on `word`: `futex(2)` with `FUTEX_WAKE`.
///
/// All, never one: a single woken unit might be killed before it acts,
/// leaving the others asleep beside it.
pub fn wake_all(word: &AtomicU32) -> io::Result<()> {
    futex::wake(word, futex::Flags::empty(), i32::MAX as u32).map(|_| ()).map_err(io::Error::from)
}
