//! Process mode: one driver thread per slot owns one worker process.
//!
//! The fast path has no hand-off through the driver (see `lanes`): while a
//! driver is parked with an idle worker, its lane is open, and a submitter
//! that finds the queue empty sends the task straight to that worker's
//! socket; the task's handle reads the answer itself (`join_direct`). The
//! parked driver watches only the worker's pidfd and its eventfd, and takes
//! the task over (`Next::Sent`) when anything else happens.
//!
//! A queued task is sent by the driver, which waits for the answer in one
//! `poll` on the socket, the worker's pidfd (death), its eventfd (cancel,
//! terminate, queued work) and the task's deadline. Whatever happens, the
//! task resolves once, and a dead, killed or retired worker is replaced
//! before the next task.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use super::backend::Backend;
use super::handle::{Place, Resolve};
use super::job::ProcessWork;
use super::lanes::{self, InFlight, Lane, Peer, lane};
use super::shared::State;
use crate::child::ChildProcess;
use crate::launch::WorkerConfig;
use crate::launch::{self, Worker};
use crate::wire::{self, Frame, Kind, RecvError};
use crate::{Error, UnitId};

/// Process mode's own part of a pool: a lane per worker slot, each with
/// its driver's eventfd (see `lanes`).
pub(crate) struct Processes {
    pub(crate) lanes: Vec<Lane>,
    /// Sandboxed pools: what the first worker to finish starting enforced,
    /// or why it could not start.
    sandbox_outcome: std::sync::Mutex<Option<Result<Vec<String>, Error>>>,
    sandbox_ready: std::sync::Condvar,
}

impl Processes {
    pub(crate) fn new(lanes: Vec<Lane>) -> Processes {
        Processes { lanes, sandbox_outcome: Default::default(), sandbox_ready: Default::default() }
    }

    /// Keep the first sandbox outcome of a worker start.
    fn note_sandbox_outcome(&self, outcome: Result<&[String], &Error>) {
        let mut slot = self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome.map(<[String]>::to_vec).map_err(Error::duplicate));
            self.sandbox_ready.notify_all();
        }
    }

    /// Wait for the first sandbox outcome.
    pub(crate) fn wait_sandbox_outcome(&self) -> Result<Vec<String>, Error> {
        let mut slot = self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = &*slot {
                return match outcome {
                    Ok(report) => Ok(report.clone()),
                    Err(e) => Err(e.duplicate()),
                };
            }
            slot = self.sandbox_ready.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// What the first worker enforced; empty without a sandbox.
    pub(crate) fn sandbox_report(&self) -> Vec<String> {
        match &*self.sandbox_outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(report)) => report.clone(),
            _ => Vec::new(),
        }
    }
}

type Shared = super::shared::Shared<Processes>;
pub(super) type Job = super::job::Job<ProcessWork>;

impl Backend for Processes {
    type Work = ProcessWork;
    type Locked = ();

    fn queued(shared: &Shared, state: MutexGuard<'_, State<Processes>>) {
        // Under the pool's lock, so a driver cannot park unseen meanwhile.
        lanes::wake_one_parked(shared);
        drop(state);
    }

    fn wake_all(shared: &Shared) {
        for lane in &shared.backend.lanes {
            wake(&lane.wake);
        }
    }

    fn take_running(_state: &mut State<Processes>) -> Vec<Arc<dyn Resolve>> {
        // Each driver resolves its running task `Cancelled` when woken.
        Vec::new()
    }
}

/// Times a task is handed to a fresh worker after the one it was sent to
/// died before taking it, before it fails as if that worker died under it.
const UNDELIVERED_TRIES: u32 = 3;

pub(super) fn new_wake() -> Result<OwnedFd, Error> {
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

/// What a read from the worker's socket means.
pub(super) fn answer_from(read: Result<Frame, RecvError>) -> Answer {
    match read {
        Ok(frame) if frame.kind == Kind::Done => Answer::Done(frame),
        Ok(frame) if frame.kind == Kind::Partial => Answer::Partial(frame),
        Ok(frame) => Answer::Garbage(format!("an unexpected {:?} message", frame.kind)),
        Err(RecvError::Closed) | Err(RecvError::Truncated(_)) => Answer::Died,
        Err(RecvError::TimedOut) => Answer::TimedOut,
        Err(RecvError::Malformed(why)) => Answer::Garbage(why),
        Err(RecvError::Io(e)) => Answer::Garbage(e.to_string()),
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
pub(super) struct Live {
    pub(super) child: ChildProcess,
    /// Its socket and a duplicate of its pidfd (shared with joiners).
    pub(super) peer: Peer,
    pub(super) tasks: u64,
    /// The board it publishes map batches on, once it has had one.
    pub(super) board: Option<crate::sys::board::Board>,
}

pub(super) enum Answer {
    Done(Frame),
    /// Some results of the running map batch.
    Partial(Frame),
    Died,
    TimedOut,
    Woken,
    Garbage(String),
}

/// What a driver does next.
enum Next {
    /// A submitter sent this job to the worker at this instant; a joiner
    /// may have read its answer already (the verdict).
    Sent(Job, Instant, Option<Answer>),
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
    let mut start_tried = false;
    loop {
        let idle = || {
            let state = shared.lock();
            state.queue.is_empty() && !state.closed && !state.terminating
        };
        if live.is_none() && !start_tried && idle() {
            // Replace a retired worker before the next task needs it (once;
            // if it fails, the next queued task tries again and reports why).
            start_tried = true;
            *live = start_worker(shared, slot).ok();
        }
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
            lane.open = live.is_some();
            lane.peer = live.as_ref().map(|l| l.peer.clone());
        }
        let Parked { died, woken } = park(live.as_ref(), wake);
        let sent = {
            let mut lane = lane(shared, slot);
            lane.parked = false;
            lane.open = false;
            lane.nudged = false;
            // Only the driver holds the worker's socket while it is not
            // parked: a polite retire closes it.
            lane.peer = None;
            while lane.reading {
                lane.driver_waiting = true;
                lane = shared.backend.lanes[slot].reader_gone.wait(lane).unwrap_or_else(|e| e.into_inner());
            }
            lane.driver_waiting = false;
            lane.in_flight.take()
        };
        if let Some(InFlight { job, sent_at, verdict }) = sent {
            // Any wake-up is left on the eventfd for `await_answer` to judge.
            return Next::Sent(job, sent_at, verdict);
        }
        if woken {
            drain_wake(wake);
        }
        if died {
            // The worker died while idle: replace it now, so no task meets it.
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
            start_tried = false;
        }
    }
}

/// Why `park` returned.
#[derive(Clone, Copy)]
struct Parked {
    died: bool,
    woken: bool,
}

/// Sleep until the worker dies or the eventfd is written. The socket is not
/// watched: an answer to a task sent on the open lane is its joiner's to
/// read (see `claim_open_lane`).
fn park(live: Option<&Live>, wake: &OwnedFd) -> Parked {
    loop {
        let result = match live {
            Some(live) => {
                let mut fds =
                    [PollFd::new(live.child.pidfd(), PollFlags::IN), PollFd::new(wake, PollFlags::IN)];
                rustix::event::poll(&mut fds, None).map(|_| Parked {
                    died: !fds[0].revents().is_empty(),
                    woken: !fds[1].revents().is_empty(),
                })
            }
            None => {
                let mut fds = [PollFd::new(wake, PollFlags::IN)];
                rustix::event::poll(&mut fds, None).map(|_| Parked { died: false, woken: true })
            }
        };
        match result {
            Ok(outcome) => return outcome,
            Err(rustix::io::Errno::INTR) => continue,
            // Cannot happen with valid descriptors; treat as a dead worker.
            Err(_) => return Parked { died: true, woken: false },
        }
    }
}

fn drive(shared: &Arc<Shared>, slot: usize) {
    let wake = shared.backend.lanes[slot].wake.clone();
    // `next` starts the worker at once, as Python's pools do, so the first
    // task does not pay for it; if that fails, the first task tries again
    // and reports it.
    let mut live: Option<Live> = None;
    loop {
        let (job, sent_at, verdict) = match next(shared, slot, &mut live, &wake) {
            Next::Stop => break,
            Next::Sent(job, at, verdict) => (job, at, verdict),
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
                let ProcessWork { header, bytes, fds } = &job.work;
                job.control.set(Place::InProcess(wake.clone()));
                if job.control.cancelled.load(Ordering::SeqCst) {
                    job.control.set(Place::Finished);
                    continue;
                }
                if job.batch.is_some() {
                    super::process_batch::run(shared, slot, &mut live, job, &wake);
                    continue;
                }
                let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                let at = Instant::now();
                if wire::send(worker.peer.socket.as_fd(), Kind::Task, &[header, bytes], &borrowed).is_err() {
                    undelivered(shared, slot, &mut live, job);
                    continue;
                }
                (job, at, None)
            }
        };
        let deadline = shared.config.task_timeout.map(|t| sent_at + t);
        let max = shared.config.max_message_or_default();
        let worker = live.as_mut().expect("a task was sent to it");
        let mut verdict = verdict;
        let answer = loop {
            let answer = match verdict.take() {
                Some(answer) => answer,
                None => await_answer(worker, &wake, deadline, max),
            };
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

/// A job whose send failed: its worker died before it had the whole task,
/// so the task never ran and (up to a few times) it does not count as a try.
pub(super) fn undelivered(shared: &Shared, slot: usize, live: &mut Option<Live>, mut job: Job) {
    if job.undelivered < UNDELIVERED_TRIES {
        job.undelivered += 1;
        retire(live.take(), false);
        shared.slot(slot).restarts += 1;
        job.control.set(Place::Queued);
        shared.requeue(job);
    } else {
        finish(shared, slot, live, job, Answer::Died);
    }
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
        Answer::Partial(_) => {
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
            job.completion.resolve_err(Error::Codec(format!(
                "the worker answered task {} with map results: its protocol state is broken, so it was replaced",
                job.id
            )));
        }
        Answer::Died => {
            let mut dead = live.take().expect("alive");
            let err = death(shared, &mut dead, job.id);
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

/// How a worker that died while running task `id` died, as the task's error.
pub(super) fn death(shared: &Shared, dead: &mut Live, id: u64) -> Error {
    let status = dead
        .child
        .wait_or_kill(crate::child::EXIT_GRACE)
        .unwrap_or(crate::child::ExitStatus { signal: None, code: None });
    let mut err = Error::died(dead.child.pid(), status.signal, status.code).in_task(id);
    if let Error::WorkerDied { memory_limit, .. } = &mut err {
        if shared.config.memory_limit > 0 {
            *memory_limit = Some(shared.config.memory_limit);
        }
    }
    err
}

/// Stop a worker: politely (close its socket; it exits after its loop) or
/// by SIGKILL. Either way it is reaped (or handed to its reaper).
pub(super) fn retire(live: Option<Live>, polite: bool) {
    let Some(Live { child, peer, .. }) = live else { return };
    if !polite {
        let _ = child.kill();
    }
    drop(peer);
    let mut child = child;
    let _ = child.wait();
}

fn start_worker(shared: &Shared, slot: usize) -> Result<Live, Error> {
    let started = start_and_initialize(shared, slot);
    let Some(sandbox) = &shared.config.sandbox else { return started };
    // The sandbox comes after the initializer: open what the tasks need,
    // then lock down.
    let outcome = started.and_then(|live| match crate::sandbox::impose(live.peer.socket.as_fd(), sandbox) {
        Ok(report) => Ok((live, report)),
        Err(e) => {
            retire(Some(live), false);
            Err(e)
        }
    });
    shared.backend.note_sandbox_outcome(outcome.as_ref().map(|(_, report)| report.as_slice()));
    outcome.map(|(live, _)| live)
}

fn start_and_initialize(shared: &Shared, slot: usize) -> Result<Live, Error> {
    let Worker { child, socket } = launch::start(shared.config.method, worker_config(shared))?;
    {
        let mut stats = shared.slot(slot);
        stats.unit = Some(UnitId::Process(child.pid()));
    }
    let pidfd = child.pidfd().try_clone().map_err(|e| Error::os("duplicating a worker's pidfd", e))?;
    let peer = Peer { socket: Arc::new(socket), pidfd: Arc::new(pidfd) };
    let live = Live { child, peer, tasks: 0, board: None };
    if let Some(init) = shared.config.initializer {
        let header =
            crate::task::header_for(0, crate::task::init_trampoline, crate::sys::code::offset_of(init));
        let unit = crate::codec::encode(&()).expect("() encodes");
        let sent = wire::send(live.peer.socket.as_fd(), Kind::Task, &[&header, &unit.bytes], &[]);
        let failure = match sent.map(|()| wire::recv(live.peer.socket.as_fd(), 1 << 20, None)) {
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

pub(super) fn await_answer(live: &Live, wake: &OwnedFd, deadline: Option<Instant>, max: u64) -> Answer {
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec::try_from(left).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
        });
        if timeout.is_some_and(|t| t.tv_sec == 0 && t.tv_nsec == 0) {
            return Answer::TimedOut;
        }
        let (socket_ready, died, woken) = {
            let mut fds = [
                PollFd::new(&*live.peer.socket, PollFlags::IN),
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
            drain_wake(wake);
            return Answer::Woken;
        }
        if socket_ready {
            return answer_from(wire::recv(live.peer.socket.as_fd(), max, deadline));
        }
        if died {
            return Answer::Died;
        }
    }
}
