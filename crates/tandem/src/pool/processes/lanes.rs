//! The direct path of process mode: a lane per worker slot, through which
//! a submitter sends a small task straight to an idle worker and the
//! task's handle reads the answer itself (two hand-offs, like a bare pipe
//! round trip). The loop (`event_loop`) owns everything else: it parks an
//! idle worker's slot on its lane, and takes the slot back (`close`)
//! whenever anything but a plain answer happens.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};

use super::{Job, Shared};
use crate::answer::Answer;
use crate::mailbox::{Held, Mailbox};
use crate::pool::handle::Place;
use crate::pool::job::ProcessWork;
use crate::wire::{self, Kind};

/// Largest task frame a submitter sends itself: small enough that `sendmsg`
/// on an idle worker's empty socket never blocks the submitter.
const DIRECT_MAX: usize = 16 * 1024;

/// The live worker's ends, for whoever talks to it outside the loop.
#[derive(Clone)]
pub(crate) struct Peer {
    pub(crate) socket: Arc<OwnedFd>,
    pub(crate) pidfd: Arc<OwnedFd>,
    /// Its pid, to read a result it lent (checked against `pidfd`).
    pub(crate) pid: u32,
    /// Where it leaves the answer to a task sent on the lane (none in a
    /// pool whose tasks all take the loop's path: see [`used`]).
    pub(crate) mailbox: Option<Arc<Mailbox>>,
}

impl Peer {
    /// What its slot holds for task `id` (without a slot: nothing).
    pub(crate) fn look(&self, id: u64) -> Held {
        self.mailbox.as_ref().map_or(Held::Empty, |m| m.look(id))
    }

    /// A reader is about to sleep on the socket: have the worker ring.
    pub(crate) fn ask_ring(&self) {
        if let Some(mailbox) = &self.mailbox {
            mailbox.ask_ring();
        }
    }
}

/// Whether the pool's tasks may take the lanes. Recycling counts tasks in
/// the loop, a deadline is the loop's to keep (a joiner reading the answer
/// would hold the slot past it), and so is a sampled resident-memory limit
/// (sampled while the loop watches the task; a cgroup's limit is the
/// kernel's): the loop sends those pools' tasks.
pub(super) fn used(shared: &Shared) -> bool {
    shared.config.max_tasks_per_worker.is_none()
        && shared.config.task_timeout.is_none()
        && !shared.backend.memory.samples()
}

/// A task a submitter sent on an open lane.
pub(super) struct InFlight {
    pub(super) job: Job,
    pub(super) sent_at: Instant,
    /// What a joiner read from the worker but could not settle itself (a
    /// death, garbage): for the loop to judge.
    pub(super) verdict: Option<Answer>,
}

/// What a slot's lane shares between the loop, submitters and joiners.
#[derive(Default)]
pub(crate) struct Lane {
    state: Mutex<LaneState>,
    /// Signalled when a joiner stops reading while the loop waits for it
    /// (only at the pool's end; otherwise the joiner rings the loop).
    reader_gone: Condvar,
}

#[derive(Default)]
struct LaneState {
    /// The loop left this slot's idle worker to the lane.
    parked: bool,
    /// Parked and free: a submitter may send it one task.
    open: bool,
    /// The worker's ends, while parked (the loop's retire closes the last
    /// copy of the socket once it has taken the slot back).
    peer: Option<Peer>,
    /// The task a submitter sent on the open lane.
    in_flight: Option<InFlight>,
    /// A joiner is reading the in-flight task's answer from the socket.
    reading: bool,
    /// The loop wants the slot back and waits for that joiner.
    loop_waiting: bool,
    /// The joiners' reader, kept between tasks (its read-ahead buffer is
    /// made once); a joiner takes it while it reads.
    reader: Option<wire::FrameReader>,
    /// How long the last task a joiner read the answer of took, from its
    /// send: the next joiner's poll budget (`Backoff::answer_after`).
    answered_in: Option<std::time::Duration>,
}

fn lock(shared: &Shared, slot: usize) -> MutexGuard<'_, LaneState> {
    shared.backend.lanes[slot].state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Leave slot `slot`'s idle worker to its lane (the loop does).
pub(super) fn park(shared: &Shared, slot: usize, peer: Peer) {
    let mut lane = lock(shared, slot);
    lane.parked = true;
    lane.open = lane.in_flight.is_none();
    lane.peer = Some(peer);
}

/// What the loop finds when it takes a slot back from its lane.
pub(super) enum Closed {
    /// Nothing was sent on it: the worker is idle.
    Idle,
    /// A submitter sent this task; the loop reads its answer from now on.
    Taken(Box<InFlight>),
    /// A joiner is reading: it rings the loop (an attention for the slot)
    /// when it stops, and the loop closes the lane again then.
    Busy,
}

/// Take slot `slot` back from its lane. With `wait`, wait for a reading
/// joiner (only at the pool's end, when nothing else needs the loop).
pub(super) fn close(shared: &Shared, slot: usize, wait: bool) -> Closed {
    let mut lane = lock(shared, slot);
    lane.parked = false;
    lane.open = false;
    while lane.reading {
        if !wait {
            lane.loop_waiting = true;
            return Closed::Busy;
        }
        lane.loop_waiting = true;
        lane = shared.backend.lanes[slot].reader_gone.wait(lane).unwrap_or_else(|e| e.into_inner());
    }
    lane.loop_waiting = false;
    lane.peer = None;
    match lane.in_flight.take() {
        Some(flight) => Closed::Taken(Box::new(flight)),
        None => Closed::Idle,
    }
}

/// An open lane a submitter has claimed: it stays closed to others.
pub(crate) struct Claim<'a> {
    slot: usize,
    lane: MutexGuard<'a, LaneState>,
    peer: Peer,
}

/// Claim an open lane for `job`, if it is small and a lane is open. The
/// caller holds the pool's lock and found the queue empty; it releases that
/// lock, then calls [`send_direct`].
///
/// The loop does not read the socket of a parked slot: the task's handle
/// reads the answer itself when joined (`join_direct`), so the common
/// submit-then-join path has two hand-offs (caller to worker and back),
/// like a bare pipe round trip. A handle that stops waiting, is polled by
/// an executor, or is dropped asks the loop to take the task over.
pub(crate) fn claim_open_lane<'a>(shared: &'a Shared, job: &Job) -> Option<Claim<'a>> {
    let small = job.work.header.len() + job.work.bytes.len() <= DIRECT_MAX;
    if !small || !used(shared) {
        return None;
    }
    (0..shared.backend.lanes.len()).find_map(|slot| {
        let mut lane = lock(shared, slot);
        if !lane.open {
            return None;
        }
        let peer = lane.peer.clone()?;
        lane.open = false;
        Some(Claim { slot, lane, peer })
    })
}

/// Send `job` on a claimed lane.
pub(crate) fn send_direct(shared: &Arc<Shared>, claim: Claim<'_>, job: Job) {
    let Claim { slot, mut lane, peer } = claim;
    let ProcessWork { header, bytes, .. } = &job.work;
    let fds = job.work.descriptors();
    job.control.set(Place::Direct { slot, pool: Arc::downgrade(shared) });
    let in_slot =
        peer.mailbox.as_ref().filter(|m| fds.is_empty() && m.takes_task(header.len() + bytes.len()));
    let sent = match in_slot {
        // Left in the slot: the worker polls it, or is rung awake (a ring
        // that cannot go out means the worker's socket is gone: its death
        // is judged as any under a task).
        Some(slot) => {
            if slot.post(job.id, &[header, bytes]) {
                let _ = wire::send(peer.socket.as_fd(), Kind::Ring, &[], &[]);
            }
            Ok(())
        }
        None => {
            if let Some(mailbox) = &peer.mailbox {
                mailbox.expect(job.id);
            }
            wire::send(peer.socket.as_fd(), Kind::Task, &[header, bytes], &fds)
        }
    };
    drop(peer);
    if sent.is_err() {
        // The worker is gone and never saw the task: queue it, and have the
        // loop replace the worker (its pidfd may not show the death yet).
        drop(lane);
        shared.backend.bell.attend(slot);
        job.control.set(Place::Queued);
        shared.requeue(job);
        return;
    }
    lane.in_flight = Some(InFlight { job, sent_at: Instant::now(), verdict: None });
}

/// How far a joiner may wait for a direct task's answer.
#[derive(Clone, Copy)]
pub(crate) enum Patience {
    /// Look once, never block.
    None,
    /// Until this instant.
    Until(Instant),
    /// As long as it takes.
    Forever,
}

/// A joiner reads the answer to its own task `id`, sent on lane `slot`,
/// straight from the worker: no loop wake-up on the way back. Anything but
/// a plain answer (a death, garbage) is handed to the loop as the task's
/// verdict. On return the task may or may not be resolved.
pub(crate) fn join_direct(shared: &Shared, slot: usize, id: u64, patience: Patience) {
    let (peer, mut reader, answered_in) = {
        let mut lane = lock(shared, slot);
        let mine = lane.in_flight.as_ref().is_some_and(|f| f.job.id == id && f.verdict.is_none());
        if !mine || !lane.parked || lane.reading {
            // The loop took the task over, or another thread is reading.
            return;
        }
        let Some(peer) = lane.peer.clone() else { return };
        lane.reading = true;
        (peer, lane.reader.take().unwrap_or_else(wire::FrameReader::buffered), lane.answered_in)
    };
    let budget = crate::backoff::Backoff::answer_after(answered_in);
    let max = shared.config.max_message_or_default();
    let read = read_answer(&peer, id, patience, budget, max, &mut reader)
        .map(|answer| answer.fetch_lent(peer.pid, peer.pidfd.as_fd(), max));
    let mut lane = lock(shared, slot);
    lane.reading = false;
    if reader.is_empty() {
        // Only a reader at a frame boundary serves the next task.
        lane.reader = Some(reader);
    }
    let loop_waiting = lane.loop_waiting;
    let done = match read {
        None => None,
        Some(Answer::Done(frame)) if crate::task::done_id(&frame) == Some(id) => {
            let flight = lane.in_flight.take().expect("a joiner reads only while its task is in flight");
            lane.open = lane.parked;
            lane.answered_in = Some(flight.sent_at.elapsed());
            Some((flight.job, frame))
        }
        Some(other) => {
            // Bytes were consumed that the loop must judge: hand them over.
            if let Some(flight) = lane.in_flight.as_mut() {
                flight.verdict = Some(other);
            }
            None
        }
    };
    let judge = lane.in_flight.as_ref().is_some_and(|f| f.verdict.is_some());
    drop(lane);
    if loop_waiting {
        shared.backend.lanes[slot].reader_gone.notify_all();
    }
    // The loop looks again if it waited for us, has a verdict to judge, or
    // has queued work for this now idle worker.
    if loop_waiting || judge || shared.queued.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        shared.backend.bell.attend(slot);
    }
    if let Some((job, frame)) = done {
        shared.slot(slot).tasks_done += 1;
        job.control.set(Place::Finished);
        job.completion.resolve_frame(frame);
    }
}

/// Wait for the worker's answer to task `id` as long as `patience` allows;
/// `None` if there is none yet or the worker died with nothing to read (the
/// loop sees the death on its pidfd and acts).
///
/// The answer is most often in the worker's slot (`mailbox`): polled with
/// no system call. One on the socket is read with the lane's buffered
/// reader; the worker owes exactly one frame there (and wake-ups), so
/// anything read past it is the worker's fault.
fn read_answer(
    peer: &Peer,
    id: u64,
    patience: Patience,
    budget: crate::backoff::Backoff,
    max: u64,
    reader: &mut wire::FrameReader,
) -> Option<Answer> {
    if !matches!(patience, Patience::None) {
        // A short task answers within microseconds: poll the slot, after
        // letting a worker on this CPU run.
        // A poll that finds the slot empty also reads the socket without
        // waiting, so a death (end of file) is seen at once, not at the end
        // of the budget; a quick answer is in the slot at the first look.
        let mut spinner = budget.begin();
        let found = loop {
            if !spinner.pause() {
                break None;
            }
            if let Some(found) = from_slot(peer, id) {
                break Some(found);
            }
            let read = reader.read_ready(peer.socket.as_fd(), max).transpose();
            if let Some(answer) = read.and_then(|read| judge(peer, id, reader, read)) {
                return Some(answer);
            }
        };
        if let Some(found) = found {
            return found.or_else(|| read_socket(peer, id, patience, max, reader));
        }
        // Going to sleep on the socket: have the worker ring.
        peer.ask_ring();
    }
    match from_slot(peer, id) {
        Some(Some(answer)) => Some(answer),
        _ => read_socket(peer, id, patience, max, reader),
    }
}

/// What the slot says of task `id`: `None` if nothing yet, `Some(None)` if
/// the answer is on the socket.
fn from_slot(peer: &Peer, id: u64) -> Option<Option<Answer>> {
    match peer.look(id) {
        Held::Empty => None,
        Held::OnSocket => Some(None),
        held => Some(Answer::from_mailbox(held)),
    }
}

/// Read the socket for task `id`'s answer (or a wake-up that says it is in
/// the slot), as long as `patience` allows.
fn read_socket(
    peer: &Peer,
    id: u64,
    patience: Patience,
    max: u64,
    reader: &mut wire::FrameReader,
) -> Option<Answer> {
    let sock = peer.socket.as_fd();
    loop {
        if reader.is_empty() {
            let mut fds =
                [PollFd::new(&*peer.socket, PollFlags::IN), PollFd::new(&*peer.pidfd, PollFlags::IN)];
            let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
            let timeout = match patience {
                Patience::None => Some(zero),
                Patience::Until(t) => {
                    Some(Timespec::try_from(t.saturating_duration_since(Instant::now())).unwrap_or(zero))
                }
                Patience::Forever => None,
            };
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(0) => return from_slot(peer, id).flatten(),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return None,
            }
            if fds[0].revents().is_empty() {
                // The worker died with nothing to read: the loop's (it
                // looks at the slot too).
                return None;
            }
        }
        let read = reader.recv(sock, max, None);
        if let Some(answer) = judge(peer, id, reader, read) {
            return Some(answer);
        }
    }
}

/// What a read from the socket says of task `id`'s answer; `None` for a
/// stale wake-up (nothing new in the slot: read on).
fn judge(
    peer: &Peer,
    id: u64,
    reader: &wire::FrameReader,
    read: Result<wire::Frame, wire::RecvError>,
) -> Option<Answer> {
    match read {
        // A wake-up: the answer is in the slot.
        Ok(frame) if frame.kind == Kind::Ring => from_slot(peer, id).flatten(),
        Ok(_) if !reader.is_empty() => {
            Some(Answer::Garbage("the worker sent more than the one answer it owed".into()))
        }
        read => Some(Answer::from_read(read)),
    }
}

/// Whether the task in flight on slot `slot`'s lane was cancelled (its
/// worker must be killed: the loop cannot take it while a joiner reads).
pub(super) fn in_flight_cancelled(shared: &Shared, slot: usize) -> bool {
    let lane = lock(shared, slot);
    lane.in_flight.as_ref().is_some_and(|f| f.job.control.cancelled.load(std::sync::atomic::Ordering::SeqCst))
}
