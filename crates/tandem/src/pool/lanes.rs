//! The direct path of process mode: a lane per worker slot, through which
//! a submitter sends a small task straight to an idle worker and the
//! task's handle reads the answer itself (two hand-offs, like a bare pipe
//! round trip). The slot's driver (`processes`) owns everything else and
//! takes a task over whenever anything but a plain answer happens.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};

use super::handle::Place;
use super::job::ProcessWork;
use super::processes::{Answer, answer_from, wake};
use super::processes::{Job, Processes};
use crate::Error;

type Shared = super::shared::Shared<Processes>;
use crate::wire::{self, Kind};

/// Largest task frame a submitter sends itself: small enough that `sendmsg`
/// on an idle worker's empty socket never blocks the submitter.
const DIRECT_MAX: usize = 16 * 1024;

/// The live worker's ends, for whoever talks to it outside the driver.
#[derive(Clone)]
pub(super) struct Peer {
    pub(super) socket: Arc<OwnedFd>,
    pub(super) pidfd: Arc<OwnedFd>,
}

/// A task a submitter sent on an open lane.
pub(super) struct InFlight {
    pub(super) job: Job,
    pub(super) sent_at: Instant,
    /// What a joiner read from the worker but could not settle itself (a
    /// death, garbage): for the driver to judge.
    pub(super) verdict: Option<Answer>,
}

/// What a slot's driver shares with submitters and joiners.
pub(crate) struct Lane {
    /// Wakes the driver (cancel, terminate, shutdown, queued work).
    pub wake: Arc<OwnedFd>,
    pub(super) state: Mutex<LaneState>,
    /// Signalled when a joiner stops reading while the driver waits for it.
    pub(super) reader_gone: Condvar,
}

#[derive(Default)]
pub(super) struct LaneState {
    /// The driver is waiting in `park`: any reason to wake it must write its
    /// eventfd.
    pub(super) parked: bool,
    /// Parked with a live, idle worker: a submitter may send it one task.
    pub(super) open: bool,
    /// The driver's worker, while it is parked (a polite retire must be
    /// able to close the last copy of the socket).
    pub(super) peer: Option<Peer>,
    /// The task a submitter sent on the open lane.
    pub(super) in_flight: Option<InFlight>,
    /// A joiner is reading the in-flight task's answer from the socket.
    pub(super) reading: bool,
    /// The driver woke and waits for that joiner to finish.
    pub(super) driver_waiting: bool,
    /// Its eventfd was written for queued work and it has not woken yet:
    /// the next queued job must wake another driver.
    pub(super) nudged: bool,
}

pub(crate) fn new_lanes(n: usize) -> Result<Vec<Lane>, Error> {
    (0..n)
        .map(|_| {
            let wake = super::processes::new_wake()?;
            Ok(Lane { wake: Arc::new(wake), state: Mutex::default(), reader_gone: Condvar::new() })
        })
        .collect()
}

pub(super) fn lane(shared: &Shared, slot: usize) -> MutexGuard<'_, LaneState> {
    shared.backend.lanes[slot].state.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open lane a submitter has claimed: its driver stays parked.
pub(crate) struct Claim<'a> {
    slot: usize,
    lane: MutexGuard<'a, LaneState>,
    peer: Peer,
}

/// Claim an open lane for `job`, if it is small and a lane is open. The
/// caller holds the pool's lock and found the queue empty; it releases that
/// lock, then calls [`send_direct`].
///
/// The parked driver does not watch the socket of an open lane: the task's
/// handle reads the answer itself when joined (`join_direct`), so the
/// common submit-then-join path has two hand-offs (caller to worker and
/// back), like a bare pipe round trip. A handle that stops waiting or is
/// dropped wakes the driver, which then takes the task over.
pub(crate) fn claim_open_lane<'a>(shared: &'a Shared, job: &Job) -> Option<Claim<'a>> {
    let small = job.work.header.len() + job.work.bytes.len() <= DIRECT_MAX;
    // Recycling counts tasks in the driver: let it send them.
    if !small || shared.config.max_tasks_per_worker.is_some() {
        return None;
    }
    (0..shared.backend.lanes.len()).find_map(|slot| {
        let mut lane = lane(shared, slot);
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
    let ProcessWork { header, bytes, fds } = &job.work;
    job.control.set(Place::Direct {
        slot,
        wake: shared.backend.lanes[slot].wake.clone(),
        pool: Arc::downgrade(shared),
    });
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let sent = wire::send(peer.socket.as_fd(), Kind::Task, &[header, bytes], &borrowed);
    drop(peer);
    if sent.is_err() {
        // The worker is gone and never saw the task: queue it, and wake this
        // lane's driver to replace the worker (its pidfd may not show the
        // death yet).
        drop(lane);
        wake(&shared.backend.lanes[slot].wake);
        job.control.set(Place::Queued);
        shared.requeue(job);
        return;
    }
    lane.in_flight = Some(InFlight { job, sent_at: Instant::now(), verdict: None });
    drop(lane);
    if shared.config.task_timeout.is_some() {
        // The deadline is the driver's to keep: wake it to take the task.
        wake(&shared.backend.lanes[slot].wake);
    }
}

/// Wake one parked driver for a queued job (process mode), one with an idle
/// worker if there is one.
pub(crate) fn wake_one_parked(shared: &Shared) {
    // Each queued job wakes its own driver: one woken for an earlier job
    // takes that one, and a driver holding an unjoined direct task takes it
    // over before the queue.
    let nudge = |want_open: bool| {
        (0..shared.backend.lanes.len()).find(|&slot| {
            let mut lane = lane(shared, slot);
            let fits = lane.parked && !lane.nudged && (lane.open || !want_open);
            if fits {
                lane.nudged = true;
            }
            fits
        })
    };
    if let Some(slot) = nudge(true).or_else(|| nudge(false)) {
        wake(&shared.backend.lanes[slot].wake);
    }
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
/// straight from the worker: no driver wake-up on the way back. Anything but
/// a plain answer (a death, garbage, a cancel, terminate, queued work for
/// this worker) is left to the driver, which is woken by the same event or
/// told here. On return the task may or may not be resolved.
pub(crate) fn join_direct(shared: &Shared, slot: usize, id: u64, patience: Patience) {
    let peer = {
        let mut lane = lane(shared, slot);
        let mine = lane.in_flight.as_ref().is_some_and(|f| f.job.id == id && f.verdict.is_none());
        if !mine || !lane.parked || lane.reading {
            // The driver took the task over, or another thread is reading.
            return;
        }
        let Some(peer) = lane.peer.clone() else { return };
        lane.reading = true;
        peer
    };
    let read = read_answer(
        &peer,
        &shared.backend.lanes[slot].wake,
        patience,
        shared.config.max_message_or_default(),
    );
    let mut lane = lane(shared, slot);
    lane.reading = false;
    let driver_waiting = lane.driver_waiting;
    let done = match read {
        None => None,
        Some(Answer::Done(frame)) if crate::task::done_id(&frame) == Some(id) => {
            let flight = lane.in_flight.take().expect("a joiner reads only while its task is in flight");
            if lane.parked && !driver_waiting {
                lane.open = true;
            }
            Some((flight.job, frame))
        }
        Some(other) => {
            // Bytes were consumed that the driver must judge: hand them over.
            if let Some(flight) = lane.in_flight.as_mut() {
                flight.verdict = Some(other);
            }
            wake(&shared.backend.lanes[slot].wake);
            None
        }
    };
    drop(lane);
    if driver_waiting {
        shared.backend.lanes[slot].reader_gone.notify_all();
    }
    if let Some((job, frame)) = done {
        shared.slot(slot).tasks_done += 1;
        job.control.set(Place::Finished);
        job.completion.resolve_frame(frame);
    }
}

/// Wait for the worker's answer as long as `patience` allows; `None` if
/// there is none yet or the worker died, was woken or is to be cancelled
/// (the driver sees the same event and acts).
fn read_answer(peer: &Peer, wake: &OwnedFd, patience: Patience, max: u64) -> Option<Answer> {
    if !matches!(patience, Patience::None) {
        // A short task answers within microseconds: try the read itself
        // first (a death shows as a closed socket; a cancel or terminate is
        // seen once the spin ends).
        match wire::recv_spinning(peer.socket.as_fd(), max) {
            Ok(None) => {}
            other => return Some(answer_from(other.map(|f| f.expect("a frame")))),
        }
    }
    loop {
        let mut fds = [
            PollFd::new(&*peer.socket, PollFlags::IN),
            PollFd::new(&*peer.pidfd, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        let timeout = match patience {
            Patience::None => Some(zero),
            Patience::Until(t) => {
                Some(Timespec::try_from(t.saturating_duration_since(Instant::now())).unwrap_or(zero))
            }
            Patience::Forever => None,
        };
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return None,
        }
        if !fds[2].revents().is_empty() || fds[0].revents().is_empty() {
            // Woken, or the worker died with nothing to read: the driver's.
            return None;
        }
        return Some(answer_from(wire::recv(peer.socket.as_fd(), max, None)));
    }
}
