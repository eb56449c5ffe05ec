//! Awaiting one-off units without a thread per waiter.
//!
//! [`Outcome`] is a unit's result slot: filled once, read by a blocking
//! `wait` or by a poll that leaves its waker. A thread unit's thread fills
//! its own. A process unit that is awaited is handed to [`WATCHER`]: one
//! thread, started on first use, waiting in `epoll` on the socket and
//! pidfd of every awaited process unit; when either is ready it finishes
//! the unit there (reads its answer, bounded as `wire::recv` reads, or
//! judges its death, and reaps it), fills the outcome and wakes the waker.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;

use crate::Error;

/// A unit's result, filled once.
pub(crate) struct Outcome<R> {
    state: Mutex<State<R>>,
    ready: Condvar,
}

struct State<R> {
    value: Option<Result<R, Error>>,
    filled: bool,
    waker: Option<Waker>,
}

impl<R> Outcome<R> {
    pub(crate) fn new() -> Outcome<R> {
        Outcome {
            state: Mutex::new(State { value: None, filled: false, waker: None }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Store the result (the first one only) and wake whoever waits.
    pub(crate) fn fill(&self, value: Result<R, Error>) {
        let mut state = self.lock();
        if state.filled {
            return;
        }
        state.filled = true;
        state.value = Some(value);
        let waker = state.waker.take();
        drop(state);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(crate) fn is_filled(&self) -> bool {
        self.lock().filled
    }

    /// The result, or `Pending` with the latest waker kept. Never blocks.
    pub(crate) fn poll(&self, cx: &Context<'_>) -> Poll<Result<R, Error>> {
        let mut state = self.lock();
        if state.filled {
            return Poll::Ready(state.value.take().unwrap_or(Err(Error::Closed)));
        }
        match &state.waker {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Block until filled; take the result.
    pub(crate) fn wait(&self) -> Result<R, Error> {
        let mut state = self.lock();
        while !state.filled {
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.value.take().unwrap_or(Err(Error::Closed))
    }

    /// Wait at most until `deadline`; `None` if it passed first.
    pub(crate) fn wait_until(&self, deadline: std::time::Instant) -> Option<Result<R, Error>> {
        let mut state = self.lock();
        while !state.filled {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.ready.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        Some(state.value.take().unwrap_or(Err(Error::Closed)))
    }
}

/// A watched unit: finished on the watcher's thread when it is ready.
pub(crate) trait Finish: Send + Sync {
    fn finish(&self);
}

/// The watcher thread, started on first use.
pub(crate) static WATCHER: Watcher = Watcher { running: OnceLock::new(), starting: Mutex::new(()) };

pub(crate) struct Watcher {
    running: OnceLock<Arc<Running>>,
    starting: Mutex<()>,
}

struct Running {
    epoll: std::os::fd::OwnedFd,
    units: Mutex<Units>,
}

#[derive(Default)]
struct Units {
    next_key: u64,
    by_key: HashMap<u64, Arc<dyn Finish>>,
}

impl Watcher {
    fn running(&self) -> Option<&Arc<Running>> {
        if let Some(running) = self.running.get() {
            return Some(running);
        }
        let _one_at_a_time = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if self.running.get().is_none() {
            let _ = self.running.set(start()?);
        }
        self.running.get()
    }

    /// Finish `unit` once any of `fds` is readable (its answer came, its
    /// socket closed, or its process exited). The caller keeps the
    /// descriptors open until `finish` runs. If no watcher can run (out of
    /// descriptors or threads), the unit is finished on a thread of its own.
    pub(crate) fn watch(&self, unit: Arc<dyn Finish>, fds: &[std::os::fd::BorrowedFd<'_>]) {
        let Some(running) = self.running() else { return finish_on_a_thread(unit) };
        let mut units = running.units.lock().unwrap_or_else(|e| e.into_inner());
        let key = units.next_key;
        units.next_key += 1;
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        let mut added = 0;
        for fd in fds {
            if epoll::add(&running.epoll, fd, epoll::EventData::new_u64(key), flags).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            drop(units);
            return finish_on_a_thread(unit);
        }
        units.by_key.insert(key, unit);
    }
}

fn finish_on_a_thread(unit: Arc<dyn Finish>) {
    if let Err(e) = std::thread::Builder::new().name("tandem-unit".into()).spawn(move || unit.finish()) {
        // Not even a thread: nothing is left but to say so (the unit's
        // outcome stays unfilled, so this cannot be silent).
        eprintln!("tandem: no thread to wait for an awaited unit ({e}); it will never resolve");
    }
}

fn start() -> Option<Arc<Running>> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
    let running = Arc::new(Running { epoll, units: Mutex::new(Units::default()) });
    let theirs = running.clone();
    std::thread::Builder::new()
        .name("tandem-watcher".into())
        .stack_size(256 * 1024)
        .spawn(move || run(&theirs))
        .ok()?;
    Some(running)
}

fn run(running: &Running) {
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        if epoll::wait(&running.epoll, spare_capacity(&mut events), None).is_err() {
            continue;
        }
        for event in events.drain(..) {
            let key = event.data.u64();
            // The first of a unit's descriptors to fire finishes it; the
            // other finds nothing (and its descriptor closes with the unit).
            let unit = running.units.lock().unwrap_or_else(|e| e.into_inner()).by_key.remove(&key);
            if let Some(unit) = unit {
                unit.finish();
            }
        }
    }
}
