//! Awaiting without a thread per waiter: one-off units, channel receives.
//!
//! [`Outcome`] is a unit's result slot: filled once, read by a blocking
//! `wait` or by a poll that leaves its waker. A thread unit's thread fills
//! its own. A process unit that is awaited is handed to [`WATCHER`]: one
//! thread, started on first use, waiting in `epoll` on the socket and
//! pidfd of every awaited process unit; when either is ready it finishes
//! the unit there (reads its answer, bounded as `wire::recv` reads, or
//! judges its death, and reaps it), fills the outcome and wakes the waker.
//! A channel's `recv_async` registers a copy of its socket the same way
//! ([`Watcher::watch_ready`]) and is woken when a message (or the end)
//! arrives; it reads on its own poll. The reaper (`child::reaper`) hands
//! it the pidfds of children whose handles were dropped unjoined.
//!
//! This module depends on nothing in the crate but `Error`, so the process
//! layers (`child`) and the public ones above them can all use it.

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
    /// One of its descriptors fired. True if it is finished (its
    /// registration ends); false if it needs more (it called `again` on
    /// the descriptor to watch once more: an answer that came in part). It
    /// must not block: every unit shares this thread.
    fn finish(&self, again: &dyn Fn(std::os::fd::BorrowedFd<'_>)) -> bool;
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
    by_key: HashMap<u64, Entry>,
}

/// A registration: what to finish, and descriptors the watcher owns (a
/// copy of a channel's socket), taken out of the epoll set when it fires or
/// is withdrawn: closing a copy alone would not, while the original is open.
struct Entry {
    unit: Arc<dyn Finish>,
    owned: Option<std::os::fd::OwnedFd>,
}

/// Wakes the latest waker of a `recv_async` when its socket is readable.
pub(crate) struct Readiness {
    fired: std::sync::atomic::AtomicBool,
    waker: Mutex<Waker>,
}

impl Readiness {
    pub(crate) fn new(waker: &Waker) -> Readiness {
        Readiness { fired: std::sync::atomic::AtomicBool::new(false), waker: Mutex::new(waker.clone()) }
    }

    pub(crate) fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keep the latest poll's waker.
    pub(crate) fn update(&self, waker: &Waker) {
        let mut mine = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        if !mine.will_wake(waker) {
            *mine = waker.clone();
        }
    }
}

impl Finish for Readiness {
    fn finish(&self, _again: &dyn Fn(std::os::fd::BorrowedFd<'_>)) -> bool {
        self.fired.store(true, std::sync::atomic::Ordering::SeqCst);
        self.waker.lock().unwrap_or_else(|e| e.into_inner()).wake_by_ref();
        true
    }
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
        if let Err(unit) = self.try_watch(unit, fds) {
            finish_on_a_thread(unit);
        }
    }

    /// Register `unit` under `fds`; the unit back if none could be (no
    /// watcher thread, or no descriptor accepted), for the caller to
    /// finish another way.
    pub(crate) fn try_watch(
        &self,
        unit: Arc<dyn Finish>,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), Arc<dyn Finish>> {
        let Some(running) = self.running() else { return Err(unit) };
        // Registered under the lock, so the watcher, which takes the lock to
        // find the unit of an event, sees it in the map.
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
            return Err(unit);
        }
        units.by_key.insert(key, Entry { unit, owned: None });
        Ok(())
    }

    /// Wake `ready` once `fd` is readable. The watcher keeps a copy of the
    /// descriptor until then; `None` if it could not (the error says why).
    pub(crate) fn watch_ready(
        &self,
        ready: Arc<Readiness>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<u64, Error> {
        let running = self
            .running()
            .ok_or(Error::Unsupported("waiting without blocking: no watcher thread could start"))?;
        let copy = fd.try_clone_to_owned().map_err(|e| Error::os("copying a socket for the watcher", e))?;
        let mut units = running.units.lock().unwrap_or_else(|e| e.into_inner());
        let key = units.next_key;
        units.next_key += 1;
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
        epoll::add(&running.epoll, &copy, epoll::EventData::new_u64(key), flags)
            .map_err(|e| Error::os("registering a socket with the watcher", e))?;
        units.by_key.insert(key, Entry { unit: ready, owned: Some(copy) });
        Ok(key)
    }

    /// Withdraw a registration that has not fired (a dropped future).
    pub(crate) fn unwatch(&self, key: u64) {
        let Some(running) = self.running.get() else { return };
        let entry = running.units.lock().unwrap_or_else(|e| e.into_inner()).by_key.remove(&key);
        if let Some(Entry { owned: Some(fd), .. }) = entry {
            let _ = epoll::delete(&running.epoll, &fd);
        }
    }
}

fn finish_on_a_thread(unit: Arc<dyn Finish>) {
    // Its own thread may wait: it polls until the unit is finished.
    let run = move || {
        while !unit.finish(&|fd| {
            crate::child::poll_ready(fd, None);
        }) {}
    };
    if let Err(e) = std::thread::Builder::new().name("tandem-unit".into()).spawn(run) {
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
            // A unit finished by one of its descriptors is gone when its
            // other one fires (and that descriptor closes with the unit).
            let unit = running
                .units
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .by_key
                .get(&key)
                .map(|e| e.unit.clone());
            let Some(unit) = unit else { continue };
            let again = |fd: std::os::fd::BorrowedFd<'_>| {
                let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
                let _ = epoll::modify(&running.epoll, fd, epoll::EventData::new_u64(key), flags);
            };
            if unit.finish(&again) {
                let entry = running.units.lock().unwrap_or_else(|e| e.into_inner()).by_key.remove(&key);
                if let Some(Entry { owned: Some(fd), .. }) = entry {
                    let _ = epoll::delete(&running.epoll, &fd);
                }
            }
        }
    }
}
