//! The loop that drives every worker process of a pool.
//!
//! One thread waits in one `epoll` on the bell (submits, cancels, the
//! pool's end, started workers) and on each worker's socket and pidfd, and
//! moves each slot through its states: no worker, idle (parked on its lane,
//! see `lanes`), running a task, running a map batch (`batch`), or dying
//! (its connection ended or it was killed: the loop waits for its exit to
//! judge how it died). Nothing here blocks on one worker: answers are read
//! a piece at a time as they arrive (`wire::FrameReader`), deaths are seen
//! on pidfds, and deadlines are the `epoll_wait` time-out.
//!
//! Whatever happens, a task resolves once, and a dead, killed or retired
//! worker is replaced before its slot takes the next task.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::Timespec;
use rustix::event::epoll::{self, EventData, EventFlags};

use super::batch::{self, Run};
use super::cgroup::Leaf;
use super::lanes::{self, Closed, InFlight};
use super::{Again, Job, Live, Shared, UNDELIVERED_TRIES, memory, starter};
use crate::Error;
use crate::answer::{self, Answer, Asked};
use crate::backoff::Backoff;
use crate::child::ChildProcess;
use crate::mailbox::Mailbox;
use crate::pool::handle::Place;
use crate::pool::job::ProcessWork;
use crate::wire::{self, FrameReader, Kind};

/// The bell's key in the epoll set; a worker's keys carry its slot and
/// generation (so a late event of a replaced worker is not taken for its
/// successor's), a retiring child's its number.
const BELL: u64 = u64::MAX;
const SOCKET: u64 = 0;
const PIDFD: u64 = 1;
const RETIRING: u64 = 2;

fn key(generation: u32, slot: usize, what: u64) -> u64 {
    (u64::from(generation) << 32) | ((slot as u64) << 2) | what
}

/// One slot of the pool.
struct Slot {
    live: Option<Live>,
    /// Bumped with each new worker.
    generation: u32,
    /// Its answer, as far as it has come.
    reader: FrameReader,
    work: Work,
    /// A starter is starting a worker for it.
    starting: bool,
}

pub(super) enum Work {
    /// No task. With a worker, it is parked on its lane (or about to be).
    Idle,
    /// A task the worker runs.
    Task { job: Job, deadline: Option<Instant> },
    /// A map batch the worker runs.
    Batch(Box<Run>),
    /// The worker's connection ended, or it was killed: waiting for its
    /// exit (seen on its pidfd) to say how it ended.
    Dying(Dying),
}

/// What waits for a dying worker's exit.
pub(super) enum Dying {
    /// A task whose worker died under it.
    Task(Job),
    /// A batch whose worker died or was killed, and the items' fate.
    Batch(Box<Run>, batch::Cause),
}

/// Run the pool's loop until the pool ends.
pub(super) fn run(shared: &Arc<Shared>) {
    let epoll = match epoll::create(epoll::CreateFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => return fail_everything(shared, Error::os("creating a process pool's epoll set", e)),
    };
    if let Err(e) = epoll::add(&epoll, &shared.backend.bell.fd, EventData::new_u64(BELL), EventFlags::IN) {
        return fail_everything(shared, Error::os("watching a process pool's eventfd", e));
    }
    let n = shared.config.workers;
    let mut lp = Loop {
        shared,
        epoll,
        slots: (0..n)
            .map(|_| Slot {
                live: None,
                generation: 0,
                reader: FrameReader::exact(),
                work: Work::Idle,
                starting: false,
            })
            .collect(),
        idle: Vec::with_capacity(n),
        retiring: HashMap::new(),
        next_retiring: 0,
        max: shared.config.max_message_or_default(),
        live: 0,
        starting: 0,
    };
    // Start every worker now, as Python's pools do, so the first tasks do
    // not pay for it; a start that fails is tried again by the next task,
    // which reports why.
    // The first worker is started here, the rest meanwhile by starters.
    for slot in 1..n {
        lp.start(slot);
    }
    if n > 0 {
        lp.start_here(0);
    }
    lp.run();
}

/// No loop: every task fails with why.
fn fail_everything(shared: &Shared, err: Error) {
    let mut state = shared.lock();
    state.closed = true;
    let queued: Vec<_> = state.queue.drain(..).collect();
    drop(state);
    for job in queued {
        job.completion.resolve_err(err.duplicate());
    }
}

pub(super) struct Loop<'a> {
    pub(super) shared: &'a Arc<Shared>,
    epoll: OwnedFd,
    slots: Vec<Slot>,
    /// Slots believed idle with a worker, most recent last.
    idle: Vec<usize>,
    /// Retired workers not yet exited: reaped when their pidfd fires
    /// (then their memory cgroup, if any, is removed).
    retiring: HashMap<u64, Retiring>,
    next_retiring: u64,
    pub(super) max: u64,
    /// Slots with a worker, and slots whose worker is being started.
    live: usize,
    starting: usize,
}

/// A worker on its way out, reaped when its pidfd fires: then its cgroup
/// goes and its answer slot is kept for a successor.
struct Retiring {
    child: ChildProcess,
    cgroup: Option<Leaf>,
    mailbox: Option<Arc<Mailbox>>,
}

impl Loop<'_> {
    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
        loop {
            self.take_started();
            self.attend_flagged();
            let (closed, terminating) = {
                let state = self.shared.lock();
                (state.closed, state.terminating)
            };
            if terminating {
                return self.end(true);
            }
            self.dispatch();
            if closed && self.all_done() {
                return self.end(false);
            }
            // A worker running a short task answers within microseconds:
            // look for it without sleeping first, for the answer budget
            // (see `backoff`), so it costs no wake-up of this thread.
            if self.any_running() {
                let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
                let came = Backoff::ANSWER.spin_until(|| {
                    events.clear();
                    let got = epoll::wait(&self.epoll, spare_capacity(&mut events), Some(&zero));
                    matches!(got, Ok(n) if n > 0) || self.work_waiting()
                });
                if came {
                    for event in events.drain(..) {
                        self.on_event(event.data.u64());
                    }
                    self.expire();
                    continue;
                }
            }
            let timeout = self.timeout();
            let bell = &self.shared.backend.bell;
            bell.asleep.store(true, Ordering::SeqCst);
            if self.work_waiting() {
                bell.asleep.store(false, Ordering::SeqCst);
                continue;
            }
            events.clear();
            let waited = epoll::wait(&self.epoll, spare_capacity(&mut events), timeout.as_ref());
            bell.asleep.store(false, Ordering::SeqCst);
            if waited.is_err() {
                // EINTR: look again.
                continue;
            }
            for event in events.drain(..) {
                self.on_event(event.data.u64());
            }
            self.expire();
        }
    }

    /// Something to do without waiting: a started worker, a slot to look
    /// at, or a queued job and a worker free for it.
    fn work_waiting(&self) -> bool {
        let bell = &self.shared.backend.bell;
        bell.any.load(Ordering::SeqCst)
            || starter::pending_done(self.shared)
            || (self.shared.queued.load(Ordering::SeqCst) > 0 && !self.idle.is_empty())
    }

    /// The `epoll_wait` time-out: until the nearest deadline (none: wait
    /// for an event).
    fn timeout(&self) -> Option<Timespec> {
        let sampling = self.samples_memory();
        // Without a time limit no slot has a deadline: skip the scan.
        if self.shared.config.task_timeout.is_none() && !sampling {
            return None;
        }
        let deadline = self.slots.iter().filter_map(|s| self.deadline_of(s)).min();
        let next = memory::next_wake(deadline, sampling)?;
        let left = next.saturating_duration_since(Instant::now());
        Some(Timespec::try_from(left).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 }))
    }

    fn deadline_of(&self, slot: &Slot) -> Option<Instant> {
        match &slot.work {
            Work::Task { deadline, .. } => *deadline,
            Work::Batch(run) => run.deadline(slot.live.as_ref(), self.shared.config.task_timeout),
            Work::Dying(_) | Work::Idle => None,
        }
    }

    fn on_event(&mut self, key: u64) {
        if key == BELL {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&self.shared.backend.bell.fd, &mut buf);
            return;
        }
        let what = key & 3;
        if what == RETIRING {
            if let Some(Retiring { mut child, cgroup, mailbox }) = self.retiring.remove(&(key >> 2)) {
                let _ = epoll::delete(&self.epoll, child.pidfd());
                let _ = child.wait();
                drop(cgroup);
                self.keep_slot_if_reaped(&child, mailbox);
            }
            return;
        }
        let slot = ((key & 0xffff_ffff) >> 2) as usize;
        let generation = (key >> 32) as u32;
        if slot >= self.slots.len()
            || self.slots[slot].generation != generation
            || self.slots[slot].live.is_none()
        {
            return;
        }
        match what {
            SOCKET => self.readable(slot),
            _ => self.exited(slot),
        }
    }

    // ----- starting and retiring workers -----

    /// Start a worker for the slot: on a starter thread, or here when the
    /// loop has nothing else to watch (no other slot runs anything or is
    /// being started), which saves two thread hand-offs (to a starter and
    /// back) on a small pool's replacement and first start.
    fn start(&mut self, slot: usize) {
        if self.slots[slot].starting || self.slots[slot].live.is_some() {
            return;
        }
        if self.starting == 0 && self.nothing_running() {
            return self.start_here(slot);
        }
        self.slots[slot].starting = true;
        self.starting += 1;
        starter::request(self.shared, slot);
    }

    fn start_here(&mut self, slot: usize) {
        self.slots[slot].starting = true;
        self.starting += 1;
        let started = starter::start_worker(self.shared, slot);
        self.started(slot, started);
    }

    /// No slot runs a task or a batch, or is dying: a start here delays
    /// only what the loop would do for idle workers (notice an idle death,
    /// take over a dropped direct task), by one start.
    fn nothing_running(&self) -> bool {
        self.slots.iter().all(|s| matches!(s.work, Work::Idle))
    }

    fn take_started(&mut self) {
        for (slot, started) in starter::take_done(self.shared) {
            self.started(slot, started);
        }
    }

    fn started(&mut self, slot: usize, started: Result<Live, Error>) {
        self.slots[slot].starting = false;
        self.starting -= 1;
        match started {
            Ok(live) => self.install(slot, live),
            // A task that was waiting for a worker reports why none came.
            Err(e) => {
                if let Some(job) = self.pop_job() {
                    job.control.set(Place::Finished);
                    job.completion.resolve_err(e);
                }
            }
        }
    }

    fn install(&mut self, slot: usize, live: Live) {
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        // The loop reads this worker only between parking it: at each park
        // its reader is empty, so it may read ahead (one system call per
        // small answer).
        s.reader = FrameReader::buffered();
        s.work = Work::Idle;
        let generation = s.generation;
        self.live += 1;
        // The socket is armed only while the loop reads it (one shot at a
        // time), so the lane's joiner can read it while the slot is parked.
        let watched = epoll::add(
            &self.epoll,
            &*live.peer.socket,
            EventData::new_u64(key(generation, slot, SOCKET)),
            EventFlags::ONESHOT,
        )
        .and_then(|()| {
            epoll::add(
                &self.epoll,
                live.child.pidfd(),
                EventData::new_u64(key(generation, slot, PIDFD)),
                EventFlags::IN,
            )
        });
        // Its answer slot goes out just before its first task, so a worker
        // that polls for its next frame finds that task within its budget
        // (sent at the start, the slot left it waiting, then asleep).
        let slot_sent = match &live.peer.mailbox {
            Some(mailbox) => wire::send(live.peer.socket.as_fd(), Kind::Mailbox, &[], &[mailbox.fd()]),
            None => Ok(()),
        };
        s.live = Some(live);
        if watched.is_err() || slot_sent.is_err() {
            // Cannot watch it: it cannot serve (the next task starts another).
            self.retire(slot, false);
            return;
        }
        self.become_idle(slot);
    }

    /// Stop the slot's worker, politely (close its socket; it exits after
    /// its loop) or by SIGKILL, and reap it once it exits.
    pub(super) fn retire(&mut self, slot: usize, polite: bool) {
        let s = &mut self.slots[slot];
        s.work = Work::Idle;
        s.reader = FrameReader::exact();
        let Some(Live { child, peer, cgroup, .. }) = s.live.take() else { return };
        self.live -= 1;
        let _ = epoll::delete(&self.epoll, &*peer.socket);
        let _ = epoll::delete(&self.epoll, child.pidfd());
        if !polite {
            let _ = child.kill();
        }
        self.reap_later(child, cgroup, peer.mailbox);
    }

    /// Reap `child` when it exits, then remove its memory cgroup and keep
    /// its answer slot for a successor (at once if it is reaped already).
    fn reap_later(&mut self, child: ChildProcess, cgroup: Option<Leaf>, mailbox: Option<Arc<Mailbox>>) {
        let mailbox = self.keep_slot_if_reaped(&child, mailbox);
        let number = self.next_retiring;
        self.next_retiring += 1;
        let data = EventData::new_u64((number << 2) | RETIRING);
        if epoll::add(&self.epoll, child.pidfd(), data, EventFlags::IN).is_ok() {
            self.retiring.insert(number, Retiring { child, cgroup, mailbox });
        } else {
            // Unwatchable: the crate's reaper takes it, and the pool's end
            // removes its cgroup (`cgroup::Tree::sweep`).
            drop(child);
            drop(cgroup);
        }
    }

    /// Keep `child`'s answer slot for a successor if `child` is reaped (no
    /// process of its can write there any more); else hand it back.
    fn keep_slot_if_reaped(
        &self,
        child: &ChildProcess,
        mailbox: Option<Arc<Mailbox>>,
    ) -> Option<Arc<Mailbox>> {
        match (child.reaped(), mailbox) {
            (true, Some(mailbox)) => {
                self.shared.backend.mailboxes.keep(mailbox);
                None
            }
            (_, mailbox) => mailbox,
        }
    }

    /// Retire and replace the slot's worker (a death, a kill, a recycle).
    pub(super) fn replace(&mut self, slot: usize, polite: bool) {
        self.retire(slot, polite);
        self.shared.slot(slot).restarts += 1;
        if !self.shared.lock().terminating {
            self.start(slot);
        }
    }

    // ----- idle workers and the queue -----

    /// The slot's worker is free again: park it on its lane.
    pub(super) fn become_idle(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.work = Work::Idle;
        let Some(live) = &s.live else { return };
        if !s.reader.is_empty() {
            // It sent more than the answer it owed: it no longer speaks the
            // protocol, and the lane's reader would start mid-stream.
            return self.replace(slot, false);
        }
        lanes::park(self.shared, slot, live.peer.clone());
        self.idle.push(slot);
    }

    fn pop_job(&self) -> Option<Job> {
        let mut state = self.shared.lock();
        while let Some(job) = state.queue.pop_front() {
            self.shared.queued.store(state.queue.len(), Ordering::SeqCst);
            if !job.completion.is_resolved() {
                return Some(job);
            }
        }
        None
    }

    /// Hand queued jobs to idle workers; start workers for the rest.
    fn dispatch(&mut self) {
        while self.shared.queued.load(Ordering::SeqCst) > 0 {
            let Some(slot) = self.take_idle() else {
                self.start_for_queue();
                return;
            };
            match self.pop_job() {
                Some(job) => self.send(slot, job),
                None => {
                    self.become_idle(slot);
                    return;
                }
            }
        }
    }

    /// An idle slot taken back from its lane, its worker free.
    fn take_idle(&mut self) -> Option<usize> {
        while let Some(slot) = self.idle.pop() {
            if !matches!(self.slots[slot].work, Work::Idle) || self.slots[slot].live.is_none() {
                continue;
            }
            match lanes::close(self.shared, slot, false) {
                Closed::Idle => return Some(slot),
                Closed::Taken(flight) => self.adopt(slot, flight),
                // Its joiner rings when done; the slot comes back then.
                Closed::Busy => {}
            }
        }
        None
    }

    /// Start workers for slots without one while jobs wait for them.
    fn start_for_queue(&mut self) {
        // Every slot has a worker or one on its way (the usual case): no scan.
        if self.live + self.starting == self.slots.len() {
            return;
        }
        let mut want = self.shared.queued.load(Ordering::SeqCst).saturating_sub(self.starting);
        for slot in 0..self.slots.len() {
            if want == 0 {
                break;
            }
            if self.slots[slot].live.is_none() && !self.slots[slot].starting {
                self.start(slot);
                want -= 1;
            }
        }
    }

    /// Send `job` to the slot's idle worker.
    fn send(&mut self, slot: usize, job: Job) {
        job.control.set(Place::InProcess { slot, pool: Arc::downgrade(self.shared) });
        if job.control.cancelled.load(Ordering::SeqCst) {
            job.control.set(Place::Finished);
            self.become_idle(slot);
            return;
        }
        if job.batch.is_some() {
            return batch::start(self, slot, job);
        }
        let live = self.slots[slot].live.as_ref().expect("an idle slot has a worker");
        let ProcessWork { header, bytes, .. } = &job.work;
        let borrowed = job.work.descriptors();
        let at = Instant::now();
        if wire::send(live.peer.socket.as_fd(), Kind::Task, &[header, bytes], &borrowed).is_err() {
            return self.undelivered(slot, job);
        }
        let deadline = self.shared.config.task_timeout.map(|t| at + t);
        self.slots[slot].work = Work::Task { job, deadline };
        self.arm(slot);
    }

    /// Read the slot's socket when the next bytes arrive.
    pub(super) fn arm(&mut self, slot: usize) {
        let s = &self.slots[slot];
        if let Some(live) = &s.live {
            let data = EventData::new_u64(key(s.generation, slot, SOCKET));
            let _ =
                epoll::modify(&self.epoll, &*live.peer.socket, data, EventFlags::IN | EventFlags::ONESHOT);
        }
    }

    /// A job whose send failed: its worker died before it had the whole
    /// task, so the task never ran and (up to a few times) it does not
    /// count as a try.
    pub(super) fn undelivered(&mut self, slot: usize, job: Job) {
        let pid = match self.shared.slot(slot).unit {
            Some(crate::UnitId::Process(pid)) => pid,
            _ => 0,
        };
        self.replace(slot, false);
        let err =
            answer::died_with(pid, crate::child::ExitStatus { signal: None, code: None }, self.asked(&job));
        if job.batch.is_some() && job.undelivered >= UNDELIVERED_TRIES {
            // The map counts its items' tries itself (`pool::map`).
            job.control.set(Place::Finished);
            job.completion.resolve_err(err);
            return;
        }
        self.again(true, job, err);
    }

    /// Queue `job` again or fail it with `err`, its worker gone
    /// (`never_reached`: before the worker took it); see [`again`](super::again).
    fn again(&mut self, never_reached: bool, mut job: Job, err: Error) {
        let terminating = self.shared.lock().terminating;
        match super::again(
            never_reached,
            job.undelivered,
            job.attempts,
            self.shared.config.retries,
            terminating,
        ) {
            Again::Free => {
                job.undelivered += 1;
                job.control.set(Place::Queued);
                self.shared.requeue(job);
            }
            Again::Retry => {
                job.attempts += 1;
                crate::pool::shared::Counters::add(&self.shared.counters.retried, 1);
                job.control.set(Place::Queued);
                self.shared.requeue(job);
            }
            Again::Fail => {
                job.control.set(Place::Finished);
                job.completion.resolve_err(err);
            }
        }
    }

    pub(super) fn asked(&self, job: &Job) -> Asked {
        Asked { task: Some(job.id), memory_limit: self.shared.config.memory_limit }
    }

    /// A task a submitter sent on the slot's lane: the loop reads its
    /// answer from now on (a verdict the joiner read is judged now).
    fn adopt(&mut self, slot: usize, flight: Box<InFlight>) {
        let InFlight { job, sent_at, verdict } = *flight;
        job.control.set(Place::InProcess { slot, pool: Arc::downgrade(self.shared) });
        let deadline = self.shared.config.task_timeout.map(|t| sent_at + t);
        self.slots[slot].work = Work::Task { job, deadline };
        match verdict {
            Some(answer) => self.answered(slot, answer),
            None => {
                // Its answer may come in the slot: have the worker ring,
                // then look (one of the two sees the other).
                if let Some(live) = &self.slots[slot].live {
                    live.peer.ask_ring();
                }
                if let Some(answer) = self.slot_answer(slot) {
                    return self.answered(slot, answer);
                }
                self.arm(slot);
                // A task cancelled or dropped while in flight is judged now.
                self.look_at(slot);
            }
        }
    }

    // ----- attention: cancels, stops, dropped or awaited direct tasks -----

    fn attend_flagged(&mut self) {
        let bell = &self.shared.backend.bell;
        if !bell.any.swap(false, Ordering::SeqCst) {
            return;
        }
        for slot in 0..self.slots.len() {
            if bell.attention[slot].swap(false, Ordering::SeqCst) {
                self.look_at(slot);
            }
        }
    }

    fn look_at(&mut self, slot: usize) {
        match &self.slots[slot].work {
            Work::Idle if self.slots[slot].live.is_some() => match lanes::close(self.shared, slot, false) {
                Closed::Idle if self.worker_exited(slot) => self.exited(slot),
                Closed::Idle => self.become_idle(slot),
                Closed::Taken(flight) => self.adopt(slot, flight),
                Closed::Busy => {
                    // A joiner reads; a cancelled task's worker is killed so
                    // that the read ends (the joiner then rings again).
                    if lanes::in_flight_cancelled(self.shared, slot)
                        && let Some(live) = &self.slots[slot].live
                    {
                        let _ = live.child.kill();
                    }
                }
            },
            Work::Idle => {
                // No worker (a direct send found it gone): start one.
                self.start(slot);
            }
            Work::Task { job, .. } => {
                if job.control.cancelled.load(Ordering::SeqCst) {
                    let Work::Task { job, .. } = std::mem::replace(&mut self.slots[slot].work, Work::Idle)
                    else {
                        unreachable!()
                    };
                    job.control.set(Place::Finished);
                    job.completion.resolve_err(Error::Cancelled);
                    self.replace(slot, false);
                }
            }
            Work::Batch(_) => batch::look_at(self, slot),
            Work::Dying(_) => {}
        }
    }

    // ----- answers -----

    /// The slot's socket has bytes (or its peer is gone).
    fn readable(&mut self, slot: usize) {
        loop {
            let s = &mut self.slots[slot];
            let Some(live) = &s.live else { return };
            if matches!(s.work, Work::Idle | Work::Dying(_)) {
                // Parked (the joiner's to read) or dying: not the loop's.
                return;
            }
            match s.reader.read_ready(live.peer.socket.as_fd(), self.max) {
                Ok(None) => return self.arm(slot),
                // A wake-up: the running task's answer is in the slot (or,
                // a stale one, nothing is: read on).
                Ok(Some(frame)) if frame.kind == Kind::Ring => {
                    if let Some(answer) = self.slot_answer(slot) {
                        return self.answered(slot, answer);
                    }
                }
                Ok(Some(frame)) => {
                    let answer = Answer::from_read(Ok(frame));
                    let more = matches!(answer, Answer::Partial(_));
                    self.answered(slot, answer);
                    if !more {
                        return;
                    }
                }
                Err(e) => return self.answered(slot, Answer::from_read(Err(e))),
            }
        }
    }

    /// The running task's answer if the worker left it in its slot.
    fn slot_answer(&self, slot: usize) -> Option<Answer> {
        let s = &self.slots[slot];
        match (&s.work, &s.live) {
            (Work::Task { job, .. }, Some(live)) => slot_answer_for(live, job.id),
            _ => None,
        }
    }

    /// Judge an answer to the slot's running work.
    fn answered(&mut self, slot: usize, answer: Answer) {
        if matches!(self.slots[slot].work, Work::Batch(_)) {
            return batch::answered(self, slot, answer);
        }
        let Work::Task { job, .. } = std::mem::replace(&mut self.slots[slot].work, Work::Idle) else {
            return;
        };
        job.control.set(Place::Finished);
        let answer = match &self.slots[slot].live {
            Some(live) => answer.fetch_lent(live.child.pid(), live.child.pidfd().as_fd(), self.max),
            None => answer,
        };
        match answer {
            Answer::Done(frame) if crate::task::done_id(&frame) == Some(job.id) => {
                self.shared.slot(slot).tasks_done += 1;
                // Where submitters take the lanes, the worker is parked
                // before its handle resolves, so a joiner that submits
                // again at once finds its lane open (the answer is read
                // already; a big one's arena is not written again before it
                // is copied out: `RELEASED`). Elsewhere the handle resolves
                // first: its joiner wakes sooner.
                let mut frame = Some(frame);
                if !lanes::used(self.shared) {
                    job.completion.resolve_frame(frame.take().expect("one answer"));
                }
                let live = self.slots[slot].live.as_mut().expect("alive");
                live.tasks += 1;
                if self.shared.config.max_tasks_per_worker.is_some_and(|n| live.tasks >= n) {
                    self.replace(slot, true);
                } else {
                    self.become_idle(slot);
                }
                if let Some(frame) = frame {
                    job.completion.resolve_frame(frame);
                }
            }
            Answer::Done(_) | Answer::Partial(_) => {
                job.completion.resolve_err(answer::wrong_task(job.id));
                self.replace(slot, false);
            }
            Answer::Garbage(why) => {
                job.completion.resolve_err(answer::garbage(&why, self.asked(&job)));
                self.replace(slot, false);
            }
            Answer::TimedOut => {
                job.completion.resolve_err(Error::TimedOut);
                self.replace(slot, false);
            }
            Answer::Died => {
                // Its exit (on the pidfd) says how it died. A worker that
                // closed its connection but lives on is killed.
                job.control.set(Place::InProcess { slot, pool: Arc::downgrade(self.shared) });
                self.dying(slot, Dying::Task(job));
            }
        }
    }

    /// Wait for the slot's worker to exit (killing it: one that closed its
    /// connection but runs on no longer speaks the protocol; one that died
    /// keeps the status it died with).
    pub(super) fn dying(&mut self, slot: usize, dying: Dying) {
        self.slots[slot].work = Work::Dying(dying);
        let Some(live) = &self.slots[slot].live else { return };
        let _ = live.child.kill();
        // Its pidfd fires when it is gone; it may be gone already (and its
        // pidfd no longer watched, see `exited`).
        if self.worker_exited(slot) {
            self.exited(slot);
        }
    }

    fn worker_exited(&self, slot: usize) -> bool {
        self.slots[slot].live.as_ref().is_some_and(|l| l.child.has_exited())
    }

    /// The slot's worker exited.
    fn exited(&mut self, slot: usize) {
        match self.set_work(slot, Work::Idle) {
            Work::Idle => match lanes::close(self.shared, slot, false) {
                // It died idle: replace it before a task meets it.
                Closed::Idle => self.replace(slot, false),
                // A task was sent on its lane: judge it.
                Closed::Taken(flight) => {
                    self.adopt(slot, flight);
                    if !matches!(self.slots[slot].work, Work::Idle) {
                        self.exited(slot);
                    }
                }
                // Its joiner sees the death too, and rings when it is done
                // reading; stop watching the pidfd (it would fire on and on).
                Closed::Busy => {
                    if let Some(live) = &self.slots[slot].live {
                        let _ = epoll::delete(&self.epoll, live.child.pidfd());
                    }
                }
            },
            Work::Task { job, .. } => {
                // Its answer may have come whole before the death.
                match self.final_answer(slot, job.id) {
                    Some(Answer::Done(frame)) if crate::task::done_id(&frame) == Some(job.id) => {
                        self.shared.slot(slot).tasks_done += 1;
                        job.control.set(Place::Finished);
                        job.completion.resolve_frame(frame);
                        self.replace(slot, false);
                    }
                    _ => self.died_under(slot, Dying::Task(job)),
                }
            }
            Work::Batch(run) => self.died_under(slot, Dying::Batch(run, batch::Cause::Died)),
            Work::Dying(dying) => self.died_under(slot, dying),
        }
    }

    /// What is left of task `id`'s answer in a dead worker's slot or
    /// socket, read on from where the loop stopped (a result it lent went
    /// with it: a death).
    fn final_answer(&mut self, slot: usize, id: u64) -> Option<Answer> {
        let s = &mut self.slots[slot];
        let live = s.live.as_ref()?;
        let answer = match slot_answer_for(live, id) {
            Some(answer) => answer,
            None => match s.reader.read_ready(live.peer.socket.as_fd(), self.max) {
                Ok(Some(frame)) => Answer::from_read(Ok(frame)),
                Ok(None) => return None,
                Err(e) => Answer::from_read(Err(e)),
            },
        };
        Some(answer.fetch_lent(live.child.pid(), live.child.pidfd().as_fd(), self.max))
    }

    /// Settle the work of a slot whose worker has exited; the slot ends
    /// without a worker, a replacement on its way.
    fn died_under(&mut self, slot: usize, dying: Dying) {
        self.slots[slot].work = Work::Idle;
        let Some(mut live) = self.slots[slot].live.take() else { return };
        self.live -= 1;
        let mut reader = std::mem::take(&mut self.slots[slot].reader);
        let _ = epoll::delete(&self.epoll, &*live.peer.socket);
        let _ = epoll::delete(&self.epoll, live.child.pidfd());
        self.shared.slot(slot).restarts += 1;
        match dying {
            // It died before it took the task left in its slot: the task
            // never reached it (as a failed send): a fresh worker runs it,
            // not counted as a try.
            Dying::Task(job) => {
                let never_reached = live.peer.mailbox.as_ref().is_some_and(|m| m.untaken(job.id));
                let err = answer::died(&mut live.child, self.asked(&job))
                    .with_output_tail(live.stderr.as_ref())
                    .over_memory(memory::kill_of(&live), self.shared.config.resident_limit);
                self.again(never_reached, job, err);
            }
            Dying::Batch(run, cause) => batch::settle(self, &mut live, &mut reader, *run, cause),
        }
        let Live { child, peer, cgroup, .. } = live;
        self.reap_later(child, cgroup, peer.mailbox);
        if !self.shared.lock().terminating {
            self.start(slot);
        }
    }

    /// The slot's live worker.
    pub(super) fn live(&mut self, slot: usize) -> &mut Live {
        self.slots[slot].live.as_mut().expect("the slot has a worker")
    }

    /// Set the slot's work; the work it had.
    pub(super) fn set_work(&mut self, slot: usize, work: Work) -> Work {
        std::mem::replace(&mut self.slots[slot].work, work)
    }

    /// Whether a worker runs work under a resident-memory limit that the
    /// loop samples (not a cgroup's, which the kernel keeps).
    fn samples_memory(&self) -> bool {
        self.shared.backend.memory.samples() && self.any_running()
    }

    /// Some worker runs a task or a batch.
    fn any_running(&self) -> bool {
        self.slots.iter().any(|s| matches!(s.work, Work::Task { .. } | Work::Batch(_)))
    }

    /// Time-outs that are due, and workers past the memory limit.
    fn expire(&mut self) {
        if self.samples_memory() {
            for s in &mut self.slots {
                if let (Work::Task { .. } | Work::Batch(_), Some(live)) = (&s.work, &mut s.live) {
                    memory::enforce(live, self.shared.config.resident_limit);
                }
            }
        }
        if self.shared.config.task_timeout.is_none() {
            return;
        }
        for slot in 0..self.slots.len() {
            let Some(deadline) = self.deadline_of(&self.slots[slot]) else { continue };
            // Now after the deadline: a batch item's deadline is computed
            // from the present, and an earlier `now` would never reach it.
            if deadline > Instant::now() {
                continue;
            }
            match &self.slots[slot].work {
                Work::Task { .. } => {
                    let Work::Task { job, .. } = std::mem::replace(&mut self.slots[slot].work, Work::Idle)
                    else {
                        unreachable!()
                    };
                    job.control.set(Place::Finished);
                    job.completion.resolve_err(Error::TimedOut);
                    self.replace(slot, false);
                }
                Work::Batch(_) => batch::expire(self, slot),
                _ => {}
            }
        }
    }

    // ----- the pool's end -----

    /// Closed, with nothing queued, running or starting: time to end.
    fn all_done(&mut self) -> bool {
        if self.shared.queued.load(Ordering::SeqCst) > 0 || starter::pending(self.shared) {
            return false;
        }
        for slot in 0..self.slots.len() {
            if !matches!(self.slots[slot].work, Work::Idle) {
                return false;
            }
            if self.slots[slot].live.is_none() {
                continue;
            }
            // A task sent on the lane but not joined: the loop reads it.
            match lanes::close(self.shared, slot, false) {
                Closed::Idle => {}
                Closed::Taken(flight) => {
                    self.adopt(slot, flight);
                    return false;
                }
                Closed::Busy => return false,
            }
        }
        true
    }

    /// End the loop: retire every worker (killing them when `terminating`,
    /// whose tasks resolve `Cancelled`), then wait for every child.
    fn end(&mut self, terminating: bool) {
        starter::stop(self.shared);
        for slot in 0..self.slots.len() {
            if self.slots[slot].live.is_some() {
                if terminating && let Some(live) = &self.slots[slot].live {
                    let _ = live.child.kill();
                }
                if let Closed::Taken(flight) = lanes::close(self.shared, slot, true) {
                    flight.job.control.set(Place::Finished);
                    flight.job.completion.resolve_err(Error::Cancelled);
                }
            }
            match std::mem::replace(&mut self.slots[slot].work, Work::Idle) {
                Work::Task { job, .. } | Work::Dying(Dying::Task(job)) => {
                    job.control.set(Place::Finished);
                    job.completion.resolve_err(Error::Cancelled);
                }
                Work::Batch(run) | Work::Dying(Dying::Batch(run, _)) => {
                    // Its results so far stand once its worker is dead.
                    let mut live = self.slots[slot].live.take();
                    self.live -= usize::from(live.is_some());
                    if let Some(l) = &mut live {
                        let _ = epoll::delete(&self.epoll, &*l.peer.socket);
                        let _ = epoll::delete(&self.epoll, l.child.pidfd());
                        let _ = l.child.kill();
                        let _ = l.child.wait();
                    }
                    let reader = std::mem::take(&mut self.slots[slot].reader);
                    batch::cancel(self, live.as_mut(), reader, *run);
                }
                Work::Idle => {}
            }
            self.retire(slot, !terminating);
        }
        // Starts under way end soon (a start waits for its process, which
        // never takes long); their workers are retired as they come.
        while starter::pending(self.shared) {
            let bell = &self.shared.backend.bell;
            bell.asleep.store(true, Ordering::SeqCst);
            if !starter::pending_done(self.shared) {
                wait_readable(bell.fd.as_fd(), Duration::from_millis(50));
            }
            bell.asleep.store(false, Ordering::SeqCst);
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&bell.fd, &mut buf);
            for (_, started) in starter::take_done(self.shared) {
                if let Ok(Live { mut child, peer, cgroup, .. }) = started {
                    if terminating {
                        let _ = child.kill();
                    }
                    drop(peer);
                    let _ = child.wait();
                    drop(cgroup);
                }
            }
        }
        for (_, Retiring { mut child, cgroup, .. }) in self.retiring.drain() {
            let _ = child.wait();
            drop(cgroup);
        }
        // Every worker is reaped: the pool's memory cgroups go.
        if let Some(tree) = self.shared.backend.memory.tree() {
            tree.sweep();
        }
        // Jobs queued after the end (a requeue racing it) still resolve.
        let rest: Vec<_> = self.shared.lock().queue.drain(..).collect();
        self.shared.queued.store(0, Ordering::SeqCst);
        for job in rest {
            job.completion.resolve_err(if terminating { Error::Cancelled } else { Error::Closed });
        }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, limit: Duration) {
    let timeout = rustix::event::Timespec::try_from(limit).ok();
    crate::child::poll_ready(fd, timeout);
}

/// Task `id`'s answer if `live` left it in its slot (`None` if nothing is
/// there or it went on the socket).
fn slot_answer_for(live: &Live, id: u64) -> Option<Answer> {
    Answer::from_mailbox(live.peer.look(id))
}
