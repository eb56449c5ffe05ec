//! Process mode: one driver thread per slot owns one worker process.
//!
//! The fast path has no hand-off through the driver on the way in: while a
//! driver is parked with an idle worker, its lane is open, and a submitter
//! that finds the queue empty sends the task straight to that worker's
//! socket. The parked driver wakes when the answer arrives (or the worker
//! dies, or its eventfd is written), takes the task from the lane and
//! finishes it like a queued one. A queued task is sent by the driver.
//!
//! Either way the driver waits for the answer in one `poll` on the socket,
//! the worker's pidfd (death), its eventfd (cancel, terminate, queued work)
//! and the task's deadline. Whatever happens, the task resolves once, and a
//! dead, killed or retired worker is replaced before the next task.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use super::handle::Place;
use super::{Job, Shared, Work};
use crate::child::ChildProcess;
use crate::launch::{self, Worker};
use crate::wire::{self, Frame, Kind, RecvError};
use crate::worker::WorkerConfig;
use crate::{Error, UnitId};

/// Largest task frame a submitter sends itself: small enough that `sendmsg`
/// on an idle worker's empty socket never blocks the submitter.
const DIRECT_MAX: usize = 16 * 1024;

pub(crate) fn new_wake() -> Result<OwnedFd, Error> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| Error::os("creating a pool driver's eventfd", e))
}

/// Wake a driver (cancel, terminate, shutdown, queued work).
pub(crate) fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Clear a driver's eventfd.
fn drain_wake(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

/// What a slot's driver shares with submitters.
#[derive(Default)]
pub(crate) struct Lane {
    /// The driver is waiting in `park` (any reason to wake it must write its
    /// eventfd, except an answer to a task sent on the open lane).
    parked: bool,
    /// Set while parked with a live, idle worker: its socket, for a submitter
    /// to send one task to. Taken by whoever uses or closes the lane.
    open: Option<Arc<OwnedFd>>,
    /// The task a submitter sent on the open lane, and when.
    in_flight: Option<(Job, Instant)>,
}

pub(crate) fn new_lanes(n: usize) -> Vec<Mutex<Lane>> {
    (0..n).map(|_| Mutex::new(Lane::default())).collect()
}

fn lane(shared: &Shared, slot: usize) -> MutexGuard<'_, Lane> {
    shared.lanes[slot].lock().unwrap_or_else(|e| e.into_inner())
}

/// Send `job` straight to an idle worker, if a lane is open and the task is
/// small. The caller holds the pool's lock and found the queue empty; the
/// lock is released before the send. Gives the job back otherwise.
pub(crate) fn submit_direct<'a>(
    shared: &'a Shared,
    state: MutexGuard<'a, super::State>,
    job: Job,
) -> Result<(), (MutexGuard<'a, super::State>, Job)> {
    let small = match &job.work {
        Work::Process { header, bytes, .. } => header.len() + bytes.len() <= DIRECT_MAX,
        Work::Thread(_) => false,
    };
    if !small {
        return Err((state, job));
    }
    // Most recently parked first would keep one worker warm; any open lane
    // will do for correctness.
    let Some((slot, mut lane, socket)) = (0..shared.lanes.len()).find_map(|slot| {
        let mut lane = lane(shared, slot);
        let socket = lane.open.take()?;
        Some((slot, lane, socket))
    }) else {
        return Err((state, job));
    };
    drop(state);
    let Work::Process { header, bytes, fds } = &job.work else { unreachable!("checked above") };
    job.control.set(Place::InProcess(shared.wakes[slot].clone()));
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    if wire::send(socket.as_fd(), Kind::Task, &[header, bytes], &borrowed).is_err() {
        // The worker is gone and never saw the task: queue it for the
        // driver, which is about to notice the death and replace the worker.
        drop(socket);
        drop(lane);
        job.control.set(Place::Queued);
        shared.requeue(job);
        return Ok(());
    }
    drop(socket);
    lane.in_flight = Some((job, Instant::now()));
    drop(lane);
    if shared.config.task_timeout.is_some() {
        // The parked driver polls without a deadline: make it re-arm.
        wake(&shared.wakes[slot]);
    }
    Ok(())
}

/// Wake one parked driver for a queued job (process mode).
pub(crate) fn wake_one_parked(shared: &Shared) {
    if let Some(slot) = (0..shared.lanes.len()).find(|&slot| lane(shared, slot).parked) {
        wake(&shared.wakes[slot]);
    }
}

pub(crate) fn start(shared: &Arc<Shared>) -> Result<(), Error> {
    for slot in 0..shared.config.workers {
        let pool = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tandem-pool-driver-{slot}"))
            .stack_size(256 * 1024)
            .spawn(move || drive(&pool, slot))
            .map_err(|e| Error::os("starting a pool driver thread", e))?;
        shared.lock().joinable.push((slot, handle));
    }
    Ok(())
}

/// A live worker process and what it has done.
struct Live {
    child: ChildProcess,
    socket: Arc<OwnedFd>,
    tasks: u64,
}

enum Answer {
    Done(Frame),
    Died,
    TimedOut,
    Woken,
    Garbage(String),
}

/// What a driver does next.
enum Next {
    /// A submitter sent this job to the worker at this instant; the bool
    /// says the worker's socket is already readable.
    Sent(Job, Instant, bool),
    /// A queued job for the driver to send.
    Queued(Job),
    /// The pool is closed and drained, or terminating.
    Stop,
}

fn worker_config(shared: &Shared) -> WorkerConfig {
    WorkerConfig {
        memory_limit: shared.config.memory_limit,
        max_message: shared.config.max_message,
        no_new_privs: shared.config.no_new_privs,
    }
}

/// The next job for this slot: from the queue, or sent on the open lane
/// while the driver was parked. Replaces a worker that dies while idle.
fn next(shared: &Shared, slot: usize, live: &mut Option<Live>, wake: &OwnedFd) -> Next {
    loop {
        {
            let mut state = shared.lock();
            if state.terminating {
                return Next::Stop;
            }
            while let Some(job) = state.queue.pop_front() {
                shared.queued.store(state.queue.len(), Ordering::SeqCst);
                if !job.completion.is_resolved() {
                    return Next::Queued(job);
                }
            }
            if state.closed {
                return Next::Stop;
            }
            let mut lane = lane(shared, slot);
            lane.parked = true;
            lane.open = live.as_ref().map(|l| l.socket.clone());
        }
        let Parked { readable, died, woken } = park(live.as_ref(), wake);
        let sent = {
            let mut lane = lane(shared, slot);
            lane.parked = false;
            lane.open = None;
            lane.in_flight.take()
        };
        if let Some((job, at)) = sent {
            // Any wake-up is left on the eventfd for `await_answer` to judge.
            return Next::Sent(job, at, readable && !woken);
        }
        if woken {
            drain_wake(wake);
        }
        if readable || died {
            // Nothing was sent, yet the worker spoke, hung up or died: it is
            // broken or gone. Replace it now, so no task meets it.
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
            *live = start_worker(shared, slot).ok();
        }
    }
}

/// Why `park` returned.
#[derive(Clone, Copy)]
struct Parked {
    readable: bool,
    died: bool,
    woken: bool,
}

/// Sleep until the worker's socket or pidfd stirs or the eventfd is written.
fn park(live: Option<&Live>, wake: &OwnedFd) -> Parked {
    loop {
        let result = match live {
            Some(live) => {
                let mut fds = [
                    PollFd::new(&*live.socket, PollFlags::IN),
                    PollFd::new(live.child.pidfd(), PollFlags::IN),
                    PollFd::new(wake, PollFlags::IN),
                ];
                rustix::event::poll(&mut fds, None).map(|_| Parked {
                    readable: !fds[0].revents().is_empty(),
                    died: !fds[1].revents().is_empty(),
                    woken: !fds[2].revents().is_empty(),
                })
            }
            None => {
                let mut fds = [PollFd::new(wake, PollFlags::IN)];
                rustix::event::poll(&mut fds, None).map(|_| Parked { readable: false, died: false, woken: true })
            }
        };
        match result {
            Ok(outcome) => return outcome,
            Err(rustix::io::Errno::INTR) => continue,
            // Cannot happen with valid descriptors; treat as a broken worker.
            Err(_) => return Parked { readable: false, died: true, woken: false },
        }
    }
}

fn drive(shared: &Arc<Shared>, slot: usize) {
    let wake = shared.wakes[slot].clone();
    // Start the worker now, as Python's pools do, so the first task does not
    // pay for it; if that fails, the first task tries again and reports it.
    let mut live: Option<Live> = start_worker(shared, slot).ok();
    loop {
        let (job, sent_at, mut readable) = match next(shared, slot, &mut live, &wake) {
            Next::Stop => break,
            Next::Sent(job, at, readable) => (job, at, readable),
            Next::Queued(job) => {
                if live.is_none() {
                    match start_worker(shared, slot) {
                        Ok(new) => live = Some(new),
                        Err(e) => {
                            job.completion.resolve_err(e);
                            continue;
                        }
                    }
                }
                let worker = live.as_ref().expect("started above");
                let Work::Process { header, bytes, fds } = &job.work else {
                    unreachable!("process pools queue process work")
                };
                job.control.set(Place::InProcess(wake.clone()));
                if job.control.cancelled.load(Ordering::SeqCst) {
                    job.control.set(Place::Finished);
                    continue;
                }
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                let at = Instant::now();
                if wire::send(worker.socket.as_fd(), Kind::Task, &[header, bytes], &borrowed).is_err() {
                    // The worker is gone: judged below like any death.
                    let answer = Answer::Died;
                    finish(shared, slot, &mut live, job, answer);
                    continue;
                }
                (job, at, false)
            }
        };
        let deadline = shared.config.task_timeout.map(|t| sent_at + t);
        let max = shared.config.max_message_or_default();
        let worker = live.as_mut().expect("a task was sent to it");
        let answer = loop {
            let answer = await_answer(worker, &wake, deadline, max, readable);
            readable = false;
            match answer {
                // A stale wake-up (queued work, a finished task's cancel):
                // keep waiting for this task.
                Answer::Woken
                    if !job.control.cancelled.load(Ordering::SeqCst) && !shared.lock().terminating => {}
                other => break other,
            }
        };
        let stop = matches!(answer, Answer::Woken) && shared.lock().terminating;
        finish(shared, slot, &mut live, job, answer);
        if stop {
            break;
        }
    }
    let terminating = shared.lock().terminating;
    retire(live, !terminating);
}

/// Resolve (or re-queue) a sent job from its worker's answer, and retire the
/// worker if the answer shows it broken, dead or due for recycling.
fn finish(shared: &Shared, slot: usize, live: &mut Option<Live>, mut job: Job, answer: Answer) {
    job.control.set(Place::Finished);
    match answer {
        Answer::Done(frame) if crate::task::done_id(&frame) == Some(job.id) => {
            shared.slot(slot).tasks_done += 1;
            job.completion.resolve_frame(frame);
            let worker = live.as_mut().expect("alive");
            worker.tasks += 1;
            if shared.config.max_tasks_per_worker.is_some_and(|n| worker.tasks >= n) {
                retire(live.take(), true);
                shared.slot(slot).restarts += 1;
            }
        }
        Answer::Done(_) => {
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
            job.completion.resolve_err(Error::Codec(format!(
                "the worker answered a different task than task {}: its protocol state is broken, so it was replaced",
                job.id
            )));
        }
        Answer::Garbage(why) => {
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
            job.completion.resolve_err(Error::Codec(format!(
                "the worker's answer to task {} could not be read ({why}); the worker was replaced",
                job.id
            )));
        }
        Answer::Died => {
            let mut dead = live.take().expect("alive");
            let status = dead
                .child
                .wait_or_kill(crate::child::EXIT_GRACE)
                .unwrap_or(crate::child::ExitStatus { signal: None, code: None });
            let mut err = Error::died(dead.child.pid(), status.signal, status.code).in_task(job.id);
            if let Error::WorkerDied { memory_limit, .. } = &mut err {
                if shared.config.memory_limit > 0 {
                    *memory_limit = Some(shared.config.memory_limit);
                }
            }
            shared.slot(slot).restarts += 1;
            if job.attempts < shared.config.retries && !shared.lock().terminating {
                job.attempts += 1;
                job.control.set(Place::Queued);
                shared.requeue(job);
            } else {
                job.completion.resolve_err(err);
            }
        }
        Answer::TimedOut => {
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
            job.completion.resolve_err(Error::TimedOut);
        }
        Answer::Woken => {
            // Cancelled (already resolved by cancel()) or terminating.
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
            job.completion.resolve_err(Error::Cancelled);
        }
    }
}

/// Stop a worker: politely (close its socket; it exits after its loop) or
/// by SIGKILL. Either way it is reaped (or handed to its reaper).
fn retire(live: Option<Live>, polite: bool) {
    let Some(Live { child, socket, .. }) = live else { return };
    if !polite {
        let _ = child.kill();
    }
    drop(socket);
    let mut child = child;
    let _ = child.wait();
}

fn start_worker(shared: &Shared, slot: usize) -> Result<Live, Error> {
    let Worker { child, socket } = launch::start(shared.config.method, worker_config(shared))?;
    {
        let mut stats = shared.slot(slot);
        stats.unit = Some(UnitId::Process(child.pid()));
    }
    let live = Live { child, socket: Arc::new(socket), tasks: 0 };
    if let Some(init) = shared.config.initializer {
        let header =
            crate::task::header_for(0, crate::task::init_trampoline, crate::sys::code::offset_of(init));
        let unit = crate::codec::encode(&()).expect("() encodes");
        let sent = wire::send(live.socket.as_fd(), Kind::Task, &[&header, &unit.bytes], &[]);
        let failure = match sent.map(|()| wire::recv(live.socket.as_fd(), 1 << 20, None)) {
            Ok(Ok(frame)) => crate::task::decode_done::<()>(frame).err(),
            Ok(Err(e)) => {
                Some(Error::Panicked { message: format!("the worker died running the initializer: {e}") })
            }
            Err(e) => Some(Error::os("sending the initializer", e)),
        };
        if let Some(e) = failure {
            retire(Some(live), false);
            return Err(Error::Panicked {
                message: format!("the pool's initializer failed in a new worker: {e}"),
            });
        }
    }
    Ok(live)
}

fn await_answer(live: &mut Live, wake: &OwnedFd, deadline: Option<Instant>, max: u64, readable: bool) -> Answer {
    let mut readable = readable;
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec::try_from(left).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
        });
        if timeout.is_some_and(|t| t.tv_sec == 0 && t.tv_nsec == 0) {
            return Answer::TimedOut;
        }
        let (socket_ready, died, woken) = if std::mem::take(&mut readable) {
            // `park` saw the answer arrive.
            (true, false, false)
        } else {
            let mut fds = [
                PollFd::new(&live.socket, PollFlags::IN),
                PollFd::new(live.child.pidfd(), PollFlags::IN),
                PollFd::new(wake, PollFlags::IN),
            ];
            if wire::spin_until_ready(&mut fds) {
                // Ready within the spin: no sleep, no wake-up.
            } else {
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(0) => return Answer::TimedOut,
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Answer::Garbage(format!("poll failed: {e}")),
                }
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty(), !fds[2].revents().is_empty())
        };
        if woken {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(wake, &mut buf);
            return Answer::Woken;
        }
        if socket_ready {
            return match wire::recv(live.socket.as_fd(), max, deadline) {
                Ok(frame) if frame.kind == Kind::Done => Answer::Done(frame),
                Ok(frame) => Answer::Garbage(format!("an unexpected {:?} message", frame.kind)),
                Err(RecvError::Closed) | Err(RecvError::Truncated(_)) => Answer::Died,
                Err(RecvError::TimedOut) => Answer::TimedOut,
                Err(RecvError::Malformed(why)) => Answer::Garbage(why),
                Err(RecvError::Io(e)) => Answer::Garbage(e.to_string()),
            };
        }
        if died {
            return Answer::Died;
        }
    }
}
