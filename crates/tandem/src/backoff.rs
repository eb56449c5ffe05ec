//! The backoff policy of every waiter in tandem: poll, then sleep.
//!
//! A waiter first polls its condition for a short budget, and only then
//! sleeps in the kernel (a futex, a condition variable, `poll`, or glibc's
//! robust mutex). Why: on this kind of machine (see NOTES.md) a sleep and
//! wake-up across CPUs costs ~66 us, because an idle vCPU halts and the
//! hypervisor must wake it, while an answer that comes within the poll
//! costs well under a microsecond. The waking side pays for a wake-up call
//! only when someone really sleeps: waiters announce themselves only after
//! the poll.
//!
//! One module, two measured budgets, because two kinds of wait want them:
//! - [`Backoff::MEMORY`], for a word in shared memory (the queue's ring,
//!   the locks, `sync`): 32 busy polls, then 20 polls each after a
//!   `sched_yield`, then sleep. Contended by several units at once (2
//!   producer + 2 consumer processes on 2 CPUs), a longer poll steals the
//!   CPU the other units need.
//! - [`Backoff::ANSWER`], for a peer's answer (a worker's socket, a
//!   joiner's result, a pool thread's next job): polls each after a
//!   `sched_yield`, no busy spin, for up to 50 us. A busy spin here let a
//!   peer on the same CPU wait (and, in a VM, pause-loop exits descheduled
//!   the spinner): the process round trip went from 5.6-6.8 us to 14-22 us
//!   and the channel's from 5.4 to 19 us; the 20-yield budget of `MEMORY`
//!   made answers that take 10-50 us sleep. A joiner on a pool's lane and
//!   a worker waiting for its next task stretch it to their last wait
//!   plus a quarter when that wait took at most 400 us
//!   ([`Backoff::answer_after`]): a 1 MiB result, whose copies keep each
//!   side waiting ~100 us, then costs no sleep on either side (process
//!   result round trip 318-336 -> 229-251 us, BENCHMARKS.md).
//!
//! Measured with `cargo bench -p tandem --bench pool -- round_trip/tandem`
//! and `--bench sharing -- "round_trip|queue"` (BENCHMARKS.md).

use std::time::{Duration, Instant};

use crate::sys::robust::Spin;

/// How long a waiter for a peer's answer looks before it sleeps (a polled
/// future: before it hands the wait to the pool's loop).
pub(crate) const ANSWER_BUDGET: Duration = Duration::from_micros(50);

/// The longest wait worth polling through: past it a sleep and wake-up
/// (~66 us) is under a sixth of the wait.
const POLL_THROUGH_UP_TO: Duration = Duration::from_micros(400);

/// A poll budget: busy polls (`spin_loop` hints), then polls each after a
/// `sched_yield(2)` until a count or a time is spent; then the caller
/// sleeps.
///
/// ```ignore
/// if !Backoff::MEMORY.spin_until(|| word.load(Ordering::Acquire) != seen) {
///     futex::wait(word, seen, deadline)?; // announce first, then sleep
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    spins: u32,
    yields: Yields,
}

#[derive(Clone, Copy, Debug)]
enum Yields {
    Count(u32),
    For(Duration),
}

impl Backoff {
    /// For a word in shared memory (see the module docs).
    pub const MEMORY: Backoff = Backoff { spins: 32, yields: Yields::Count(20) };
    /// For a peer's answer (see the module docs).
    pub const ANSWER: Backoff = Backoff { spins: 0, yields: Yields::For(ANSWER_BUDGET) };

    /// [`ANSWER`](Self::ANSWER) for a waiter whose last wait for the same
    /// peer took `last`: a wait of up to 400 us (a task that moves a
    /// megabyte, say) is polled through, with a quarter to spare, instead
    /// of paying a sleep and a wake-up that would cost as much again as
    /// half of it; a longer or unknown one gets the usual 50 us. Polling
    /// yields the CPU each time, so a peer on this CPU runs meanwhile.
    pub fn answer_after(last: Option<Duration>) -> Backoff {
        let budget = match last {
            Some(last) if last <= POLL_THROUGH_UP_TO => (last + last / 4).max(ANSWER_BUDGET),
            _ => ANSWER_BUDGET,
        };
        Backoff { spins: 0, yields: Yields::For(budget) }
    }

    /// Poll `ready` until it says `true` (then `true`) or the budget is
    /// spent (`false`: the caller should now sleep in the kernel).
    #[inline]
    pub fn spin_until(&self, mut ready: impl FnMut() -> bool) -> bool {
        let mut spin = self.begin();
        loop {
            if ready() {
                return true;
            }
            if !spin.pause() {
                return false;
            }
        }
    }

    /// One wait under this budget, for a waiter whose poll is not a
    /// closure (it reads a socket, say): call [`Spinner::pause`] between polls.
    #[inline]
    pub fn begin(&self) -> Spinner {
        Spinner { budget: *self, polls: 0, start: None }
    }
}

/// One wait under a [`Backoff`].
#[derive(Debug)]
pub(crate) struct Spinner {
    budget: Backoff,
    polls: u32,
    start: Option<Instant>,
}

impl Spinner {
    /// Pause before the next poll; `false` once the budget is spent.
    #[inline]
    pub(crate) fn pause(&mut self) -> bool {
        self.polls += 1;
        if self.polls <= self.budget.spins {
            std::hint::spin_loop();
            return true;
        }
        let more = match self.budget.yields {
            Yields::Count(n) => self.polls <= self.budget.spins + n,
            // The clock is read only once yielding begins.
            Yields::For(limit) => self.start.get_or_insert_with(Instant::now).elapsed() < limit,
        };
        if more {
            std::thread::yield_now();
        }
        more
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
    fn a_wait_that_was_short_enough_is_polled_through_next_time() {
        let budget = |last: Option<u64>| match Backoff::answer_after(last.map(Duration::from_micros)).yields {
            Yields::For(d) => d.as_micros() as u64,
            Yields::Count(_) => unreachable!("an answer's budget is a time"),
        };
        assert_eq!(budget(None), 50);
        assert_eq!(budget(Some(3)), 50, "never under the usual budget");
        assert_eq!(budget(Some(100)), 125);
        assert_eq!(budget(Some(400)), 500);
        assert_eq!(budget(Some(401)), 50, "a long wait sleeps");
        assert_eq!(budget(Some(1_000_000)), 50);
    }

    #[test]
    fn stops_as_soon_as_ready_and_gives_up_after_its_budget() {
        // MEMORY counts its polls; ANSWER is timed, so only a condition
        // already true is sure to be seen within it on a busy machine.
        for (budget, at) in [(Backoff::MEMORY, 3), (Backoff::ANSWER, 1)] {
            let mut polls = 0;
            assert!(budget.spin_until(|| {
                polls += 1;
                polls == at
            }));
            assert_eq!(polls, at);
        }
        let mut polls = 0;
        assert!(!Backoff::MEMORY.spin_until(|| {
            polls += 1;
            false
        }));
        assert_eq!(polls, 32 + 20 + 1);
        let start = Instant::now();
        assert!(!Backoff::ANSWER.spin_until(|| false));
        assert!(start.elapsed() >= Duration::from_micros(50));
    }
}
