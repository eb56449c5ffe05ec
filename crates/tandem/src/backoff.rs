//! The one backoff policy of the sharing layers: spin, then yield, then
//! sleep.
//!
//! A waiter in `ipc`, `sync` or `shm` first polls its condition with a busy
//! spin, then with `sched_yield` between polls, and only then sleeps in the
//! kernel (a futex, or glibc's robust mutex, which is a futex underneath).
//! Why: on this kind of machine (see NOTES.md) a sleep and wake-up across
//! CPUs costs ~66 us, because an idle vCPU halts and the hypervisor must
//! wake it, while an answer that comes within the spin costs ~0.2 us. The
//! yields let a peer on the *same* CPU run and answer when there are more
//! units than CPUs (with 2 producer + 2 consumer processes on 2 CPUs this
//! beat a longer pure spin: ~1.8 M vs ~1.5 M items/s).
//!
//! The budget is short (about 10-20 us when nothing answers) so a waiter
//! that will sleep anyway wastes little CPU. The waking side pays for a
//! wake-up call only when someone really sleeps: waiters announce
//! themselves only after the spin.
//!
//! Outside this policy (owned elsewhere, and shaped by time, not count):
//! `wire`'s socket spin (`wire::SPIN`, polls with `MSG_DONTWAIT` for up to
//! 50 us) and the pool's waiters, which reuse it. They can move here by
//! calling [`Backoff::spin_until`].

use crate::sys::robust::Spin;

/// The policy: [`Backoff::SPINS`] busy polls, then [`Backoff::YIELDS`]
/// polls each after a `sched_yield(2)`, then the caller sleeps.
///
/// ```ignore
/// if !Backoff.spin_until(|| word.load(Ordering::Acquire) != seen) {
///     futex::wait(word, seen, deadline)?; // announce first, then sleep
/// }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Backoff;

impl Backoff {
    /// Busy polls (with `spin_loop` hints) before yielding.
    pub const SPINS: u32 = 32;
    /// Polls after a `sched_yield(2)` each, before sleeping.
    pub const YIELDS: u32 = 20;

    /// Poll `ready` until it says `true` (then `true`) or the budget is
    /// spent (`false`: the caller should now sleep in the kernel).
    #[inline]
    pub fn spin_until(&self, mut ready: impl FnMut() -> bool) -> bool {
        for i in 0..Self::SPINS + Self::YIELDS {
            if ready() {
                return true;
            }
            if i < Self::SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        ready()
    }
}

impl Spin for Backoff {
    fn spin_until(&self, ready: impl FnMut() -> bool) -> bool {
        Backoff::spin_until(self, ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_as_soon_as_ready_and_gives_up_after_its_budget() {
        let mut polls = 0;
        assert!(Backoff.spin_until(|| {
            polls += 1;
            polls == 3
        }));
        assert_eq!(polls, 3);
        let mut polls = 0;
        assert!(!Backoff.spin_until(|| {
            polls += 1;
            false
        }));
        assert_eq!(polls, Backoff::SPINS + Backoff::YIELDS + 1);
    }
}
