//! Cluster mode (feature `cluster`), the driver's side: the pool's queue is
//! sent to the broker's task stream and answered by agents on other
//! machines (see `crate::broker` for the data and `crate::cluster` for the
//! agents).
//!
//! Two threads and two broker connections per pool:
//! - the **dispatcher** takes queued jobs (in bursts, one pipelined round
//!   trip per burst), records each as a *flight* under the pool's lock
//!   before its frame is added, and takes back withdrawn entries (cancels,
//!   terminate);
//! - the **collector** pops answers, resolves the flight an answer is for
//!   when the answer is for the flight's current try (a late answer of a
//!   lost try is dropped), beats the driver's heartbeat, and finds entries
//!   idle past the lease: each is reassigned atomically (`REASSIGN`) as a
//!   new try, or after `node_losses` re-runs resolves `NodeLost`.
//!
//! Every flight resolves exactly once: only the collector resolves answers
//! and lost nodes, and a flight leaves the table under the lock before it is
//! resolved. If the broker cannot be reached for longer than the lease,
//! every queued job and flight resolves with the error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::batch::{BatchEnd, RawBatch};
use super::handle::{Place, Resolve};
use super::job::{Job, ProcessWork};
use super::shared::{Counters, Shared, State};
use crate::Error;
use crate::broker::frame::{Address, AnswerFrame, Key, Reply, TaskFrame, WireEnd, WireError};
use crate::broker::{Broker, build_id::build_id};
use crate::wire::{Frame, Kind};

/// How a driver reaches its cluster (from `cluster::Cluster`).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub url: String,
    pub key: Option<Key>,
    pub lease: Duration,
    pub node_losses: u32,
}

/// Cluster mode's own part of a pool.
pub(crate) struct Remote {
    settings: Settings,
    key: Key,
    /// This driver's name in the broker (random).
    driver: u128,
    build: [u8; 32],
    /// Each send of a task gets a new number; an answer names the send.
    sends: AtomicU32,
    /// Wakes the dispatcher: work queued, something to withdraw, the pool's end.
    work_ready: Condvar,
    /// Since when the broker could not be reached.
    down_since: Mutex<Option<Instant>>,
}

/// What cluster mode keeps under the pool's lock.
#[derive(Default)]
pub(crate) struct Flights {
    flights: HashMap<u64, Flight>,
    /// Stream entry id to task id.
    entries: HashMap<String, u64>,
    /// Entries to take back from the stream (cancelled, terminated).
    withdraw: Vec<String>,
}

struct Flight {
    job: Job<ProcessWork>,
    /// The send whose answer counts.
    send: u32,
    entry: Option<String>,
}

type RShared = Shared<Remote>;

impl Remote {
    pub(crate) fn new(settings: Settings) -> Result<(Remote, Flights), Error> {
        let key = settings.key.clone().ok_or_else(|| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a cluster pool needs the cluster's key: call Cluster::key(secret) with the agents' key",
            ))
        })?;
        let driver = u128::from_le_bytes(rand_bytes());
        let remote = Remote {
            key,
            driver,
            build: build_id()?,
            sends: AtomicU32::new(1),
            work_ready: Condvar::new(),
            down_since: Mutex::new(None),
            settings,
        };
        Ok((remote, Flights::default()))
    }

    fn timeout(&self) -> Duration {
        self.settings.lease.max(Duration::from_millis(100))
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let _ = rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty());
    bytes
}

impl Backend for Remote {
    type Work = ProcessWork;
    type Locked = Flights;

    fn queued(shared: &RShared, state: MutexGuard<'_, State<Remote>>) {
        drop(state);
        shared.backend.work_ready.notify_all();
    }

    fn wake_all(shared: &RShared) {
        shared.backend.work_ready.notify_all();
    }

    fn take_running(state: &mut State<Remote>) -> Vec<Arc<dyn Resolve>> {
        let flights = std::mem::take(&mut state.mode.flights);
        state.mode.entries.clear();
        let mut running = Vec::with_capacity(flights.len());
        for (_, flight) in flights {
            state.mode.withdraw.extend(flight.entry);
            running.push(flight.job.completion);
        }
        running
    }
}

/// The two threads' broker connections, made before the pool exists (so
/// a broker that cannot be reached fails the build, and the agents can be
/// counted for the pool's size on one of them).
pub(crate) struct Links {
    sender: Broker,
    reader: Broker,
}

impl Links {
    pub(crate) fn connect(remote: &Remote) -> Result<Links, Error> {
        let (url, timeout) = (&remote.settings.url, remote.timeout());
        let (mut sender, mut reader) = (Broker::connect(url, timeout)?, Broker::connect(url, timeout)?);
        sender.heartbeat(remote.driver, remote.settings.lease)?;
        reader.set_timeout(timeout + Duration::from_secs(1))?;
        Ok(Links { sender, reader })
    }

    /// Live agents' worker slots now, for the pool's size (at least `at_least`).
    pub(crate) fn agent_workers(&mut self, at_least: usize) -> Result<usize, Error> {
        Ok(self.sender.agent_workers()?.max(at_least))
    }
}

/// Start the dispatcher and the collector on their connections.
pub(crate) fn start(shared: &Arc<RShared>, links: Links) -> Result<(), Error> {
    let mut threads = Vec::new();
    for (name, broker, run) in [
        ("tandem-dispatch", links.sender, dispatch as fn(Arc<RShared>, Broker)),
        ("tandem-collect", links.reader, collect as fn(Arc<RShared>, Broker)),
    ] {
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(shared, broker))
            .map_err(|e| Error::os("starting a cluster pool thread", e))?;
        threads.push((0, handle));
    }
    shared.lock().joinable.extend(threads);
    Ok(())
}

/// `cancel` (or a dropped map's stop) of a task sent to the cluster: take
/// its entry back, so the agent running it cancels it at its next renewal.
pub(crate) fn withdraw(pool: &Weak<RShared>, task: u64) {
    let Some(shared) = pool.upgrade() else { return };
    let mut state = shared.lock();
    if let Some(flight) = state.mode.flights.remove(&task) {
        if let Some(entry) = flight.entry {
            state.mode.entries.remove(&entry);
            state.mode.withdraw.push(entry);
        }
        drop(state);
        flight.job.completion.resolve_err(Error::Cancelled);
        shared.backend.work_ready.notify_all();
    }
}

/// The frame of `job`'s next send.
fn frame_of(remote: &Remote, config: &super::builder::Config, job: &Job<ProcessWork>, send: u32) -> Vec<u8> {
    TaskFrame {
        build: remote.build,
        to: Address { driver: remote.driver, task: job.id, attempt: send },
        lease_ms: remote.settings.lease.as_millis().min(u32::MAX as u128) as u32,
        timeout_ms: config.task_timeout.map_or(0, |t| t.as_millis().clamp(1, u64::MAX as u128) as u64),
        items: job.batch.as_ref().map_or(0, |b| b.items),
        header: job.work.header,
        payload: job.work.bytes.clone(),
    }
    .encode(&remote.key)
}

/// A job's work as it can cross machines: bytes only.
fn inline(job: &mut Job<ProcessWork>, max: u64) -> Result<(), Error> {
    if job.work.descriptors().is_empty() {
        return Ok(());
    }
    if job.batch.is_some() {
        return Err(Error::Codec(
            "map items holding shared-memory objects (ipc, shm, sync) cannot cross machines: map plain data on a cluster pool".into(),
        ));
    }
    let bytes = std::mem::take(&mut job.work.bytes);
    let mut fds = std::mem::take(&mut job.work.fds);
    // A big argument's arena: read here, so this process's own reader
    // releases it; the pin goes with the bytes it kept.
    if let Some(pin) = job.work.pin.take() {
        fds.push(pin.fd().try_clone_to_owned().map_err(|e| Error::os("reading a big argument's arena", e))?);
    }
    job.work.bytes = crate::codec::inline_message(bytes, fds, max)?;
    Ok(())
}

/// The pool's threads are done: it terminates, or it is closed with
/// nothing queued or in flight.
fn ended(state: &State<Remote>) -> bool {
    state.terminating || (state.closed && state.queue.is_empty() && state.mode.flights.is_empty())
}

fn dispatch(shared: Arc<RShared>, mut broker: Broker) {
    let remote = &shared.backend;
    let weak = Arc::downgrade(&shared);
    loop {
        let (jobs, withdraw, ending) = {
            let mut state = shared.lock();
            while !ended(&state) && state.queue.is_empty() && state.mode.withdraw.is_empty() {
                state = remote.work_ready.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let ending = ended(&state);
            let withdraw = std::mem::take(&mut state.mode.withdraw);
            let n = state.queue.len().min(256);
            let jobs: Vec<_> = if state.terminating { Vec::new() } else { state.queue.drain(..n).collect() };
            shared.queued.store(state.queue.len(), Ordering::SeqCst);
            (jobs, withdraw, ending)
        };
        // If this fails the entries are orphans; an agent holding one
        // cancels it when its renewal fails for a lease.
        let _ = broker.withdraw(&withdraw);
        if ending {
            let _ = broker.wake_driver(remote.driver);
            return;
        }
        send(&shared, &weak, &mut broker, jobs);
    }
}

/// Add `jobs` to the stream as flights; on broker trouble put them back.
fn send(shared: &Arc<RShared>, weak: &Weak<RShared>, broker: &mut Broker, jobs: Vec<Job<ProcessWork>>) {
    let remote = &shared.backend;
    let max = shared.config.max_message_or_default();
    let mut frames = Vec::with_capacity(jobs.len());
    let mut ids = Vec::with_capacity(jobs.len());
    {
        let mut state = shared.lock();
        for mut job in jobs {
            if job.completion.is_resolved() {
                continue;
            }
            if let Err(e) = inline(&mut job, max) {
                job.completion.resolve_err(e);
                continue;
            }
            let send = remote.sends.fetch_add(1, Ordering::Relaxed);
            frames.push(frame_of(remote, &shared.config, &job, send));
            ids.push(job.id);
            job.control.set(Place::Remote { pool: weak.clone() });
            state.mode.flights.insert(job.id, Flight { job, send, entry: None });
        }
    }
    if frames.is_empty() {
        return;
    }
    match broker.add_tasks(&frames) {
        Ok(entries) => {
            healthy(remote);
            let mut state = shared.lock();
            for (task, entry) in ids.into_iter().zip(entries) {
                match state.mode.flights.get_mut(&task) {
                    Some(flight) => {
                        flight.entry = Some(entry.clone());
                        state.mode.entries.insert(entry, task);
                    }
                    // Cancelled while it was being added.
                    None => state.mode.withdraw.push(entry),
                }
            }
        }
        Err(err) => {
            let mut state = shared.lock();
            let back: Vec<_> = ids.iter().filter_map(|t| state.mode.flights.remove(t)).collect();
            for flight in back.into_iter().rev() {
                flight.job.control.set(Place::Queued);
                state.queue.push_front(flight.job);
            }
            shared.queued.store(state.queue.len(), Ordering::SeqCst);
            drop(state);
            trouble(shared, broker, err);
        }
    }
}

fn healthy(remote: &Remote) {
    *remote.down_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// The broker failed a command: past a lease of trouble, fail everything;
/// then wait a little and connect again.
fn trouble(shared: &RShared, broker: &mut Broker, err: Error) {
    let remote = &shared.backend;
    let since = *remote.down_since.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
    if since.elapsed() >= remote.settings.lease {
        let why = format!(
            "the cluster's broker could not be reached for longer than the lease ({:?}): {err}",
            remote.settings.lease
        );
        fail_open(shared, &why);
    }
    std::thread::sleep(
        (remote.settings.lease / 10).clamp(Duration::from_millis(5), Duration::from_millis(100)),
    );
    if let Ok(again) = Broker::connect(&remote.settings.url, remote.timeout()) {
        *broker = again;
    }
}

fn collect(shared: Arc<RShared>, mut broker: Broker) {
    let remote = &shared.backend;
    let lease = remote.settings.lease;
    let beat_every = (lease / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut next_beat = Instant::now();
    let mut recovering = false;
    let mut no_agents_since = None;
    loop {
        {
            if ended(&shared.lock()) {
                let _ = broker.leave(remote.driver);
                return;
            }
        }
        if Instant::now() >= next_beat {
            next_beat = Instant::now() + beat_every;
            let checked = broker
                .heartbeat(remote.driver, lease)
                .and_then(|()| if recovering { recheck(&shared, &mut broker) } else { Ok(()) })
                .and_then(|()| check_leases(&shared, &mut broker))
                .and_then(|()| check_agents(&shared, &mut broker, &mut no_agents_since));
            match checked {
                Ok(()) => recovering = false,
                Err(err) => {
                    recovering = true;
                    trouble(&shared, &mut broker, err);
                    continue;
                }
            }
        }
        let wait = next_beat.saturating_duration_since(Instant::now());
        match broker.pop_answers(remote.driver, 1024, wait) {
            Ok(answers) => {
                healthy(remote);
                for bytes in answers {
                    take_answer(&shared, &bytes);
                }
            }
            Err(err) => {
                recovering = true;
                trouble(&shared, &mut broker, err);
            }
        }
    }
}

/// Resolve the flight `bytes` answers, if it is its current try's answer.
fn take_answer(shared: &RShared, bytes: &[u8]) {
    let remote = &shared.backend;
    if bytes.is_empty() {
        return; // the dispatcher's wake-up at the pool's end
    }
    let Ok(answer) = AnswerFrame::decode(bytes, &remote.key) else {
        // Not from an agent with our key: nothing to resolve with it.
        return;
    };
    if answer.to.driver != remote.driver {
        return;
    }
    let flight = {
        let mut state = shared.lock();
        match state.mode.flights.get(&answer.to.task) {
            Some(f) if f.send == answer.to.attempt => {}
            _ => return, // a late answer of a lost try, or of a cancelled task
        }
        let mut flight = state.mode.flights.remove(&answer.to.task).expect("just seen");
        if let Some(entry) = &flight.entry {
            state.mode.entries.remove(entry);
        }
        // A retry goes back in the queue under the same lock that took its
        // flight, so a closing pool never sees it nowhere (and stops early).
        let retry = matches!(&answer.reply, Reply::Failed(WireError::WorkerDied { .. }))
            && flight.job.batch.is_none()
            && flight.job.attempts < shared.config.retries
            && !state.terminating;
        if retry {
            flight.job.attempts += 1;
            Counters::add(&shared.counters.retried, 1);
            flight.job.control.set(Place::Queued);
            state.queue.push_front(flight.job);
            shared.queued.store(state.queue.len(), Ordering::SeqCst);
            drop(state);
            remote.work_ready.notify_all();
            return;
        }
        flight
    };
    let job = flight.job;
    job.control.set(Place::Finished);
    let node = answer.node;
    match answer.reply {
        Reply::Done(payload) => {
            job.completion.resolve_frame(Frame { kind: Kind::Done, payload, fds: Vec::new(), lent: None });
        }
        Reply::Batch(batch) => {
            let items = job.batch.as_ref().map_or(0, |b| b.items);
            if let Err(why) = batch.check(items) {
                job.completion.resolve_err(Error::Codec(format!("agent {node} sent a broken answer: {why}")));
                remote.work_ready.notify_all();
                return;
            }
            let end = match batch.end {
                WireEnd::Complete { nanos } => BatchEnd::Complete { nanos },
                WireEnd::Unstarted => BatchEnd::Unstarted,
                WireEnd::Failed(e) => BatchEnd::Failed(e.into_error(&node)),
                WireEnd::RestFail(e) => BatchEnd::RestFail(e.into_error(&node)),
            };
            let argument = match end {
                BatchEnd::Complete { .. } => None,
                _ => Some((job.work.bytes, Vec::new())),
            };
            let chunks = batch
                .chunks
                .into_iter()
                .map(|(count, data)| crate::batch::Chunk::from_wire(count, data.into_vec()))
                .collect();
            job.completion.resolve_batch(RawBatch { done: batch.done, chunks, end, argument });
        }
        Reply::Failed(e) => {
            job.completion.resolve_err(e.into_error(&node).in_task(job.id));
        }
        Reply::Refused(reason) => {
            job.completion.resolve_err(Error::Refused { node, reason });
        }
    }
    remote.work_ready.notify_all();
}

/// Find this driver's entries idle past the lease and reassign each (a new
/// try), or fail it `NodeLost` once its node was lost `node_losses` times.
fn check_leases(shared: &RShared, broker: &mut Broker) -> Result<(), Error> {
    let remote = &shared.backend;
    let lease = remote.settings.lease;
    let mut foreign = Vec::new();
    for stale in broker.stale(lease, 1000)? {
        let next = {
            let state = shared.lock();
            let flight =
                state.mode.entries.get(&stale.id).and_then(|t| Some((*t, state.mode.flights.get(t)?)));
            let Some((task, flight)) = flight else {
                foreign.push(stale.id);
                continue;
            };
            if flight.job.undelivered < remote.settings.node_losses {
                let send = remote.sends.fetch_add(1, Ordering::Relaxed);
                (task, Some((send, frame_of(remote, &shared.config, &flight.job, send))))
            } else {
                (task, None)
            }
        };
        let (task, again) = next;
        let frame = again.as_ref().map(|(_, f)| f.as_slice());
        let Some(new_entry) = broker.reassign(&stale.id, lease, frame)? else {
            continue; // renewed or answered meanwhile
        };
        let mut state = shared.lock();
        state.mode.entries.remove(&stale.id);
        let Some(flight) = state.mode.flights.get_mut(&task) else {
            // Cancelled while it was being reassigned: take the new try back.
            state.mode.withdraw.extend(new_entry);
            remote.work_ready.notify_all();
            continue;
        };
        match (again, new_entry) {
            (Some((send, _)), Some(entry)) => {
                flight.send = send;
                flight.job.undelivered += 1;
                flight.entry = Some(entry.clone());
                state.mode.entries.insert(entry, task);
            }
            _ => {
                let flight = state.mode.flights.remove(&task).expect("just seen");
                drop(state);
                flight.job.control.set(Place::Finished);
                flight.job.completion.resolve_err(Error::NodeLost { node: stale.node });
                remote.work_ready.notify_all();
            }
        }
    }
    // Entries of other drivers, idle past this lease: those of a driver
    // that is gone (and of an agent that died) would be nobody's to clear,
    // and would crowd the next look at the pending list.
    foreign.truncate(100);
    let orphans = broker.orphaned(&foreign)?;
    broker.withdraw(&orphans)
}

/// With no agent alive for a whole lease nothing can run: fail what is
/// open rather than wait for ever (an agent's heartbeat lasts 3 s).
fn check_agents(shared: &RShared, broker: &mut Broker, since: &mut Option<Instant>) -> Result<(), Error> {
    let remote = &shared.backend;
    if broker.agent_workers()? > 0 {
        *since = None;
        return Ok(());
    }
    let since = *since.get_or_insert_with(Instant::now);
    if since.elapsed() < remote.settings.lease {
        return Ok(());
    }
    let why = format!(
        "no agent has served the broker at {} for longer than the lease ({:?}): start agents (Agent::serve) with this pool's key",
        remote.settings.url, remote.settings.lease
    );
    fail_open(shared, &why);
    Ok(())
}

/// Resolve every queued job and flight with an `Io` error saying `why`.
fn fail_open(shared: &RShared, why: &str) {
    let (queued, flights) = {
        let mut state = shared.lock();
        let queued: Vec<_> = state.queue.drain(..).collect();
        shared.queued.store(0, Ordering::SeqCst);
        state.mode.entries.clear();
        let flights = std::mem::take(&mut state.mode.flights);
        state.mode.withdraw.extend(flights.values().filter_map(|f| f.entry.clone()));
        (queued, flights)
    };
    let err = || Error::Io(std::io::Error::new(std::io::ErrorKind::NotConnected, why.to_owned()));
    for job in queued {
        job.completion.resolve_err(err());
    }
    for flight in flights.into_values() {
        flight.job.completion.resolve_err(err());
    }
    shared.backend.work_ready.notify_all();
}

/// After the broker was out of reach: a flight whose entry is gone from the
/// stream without an answer (the broker restarted empty) is sent again.
fn recheck(shared: &RShared, broker: &mut Broker) -> Result<(), Error> {
    let remote = &shared.backend;
    // Answers already waiting first: an answered entry is gone too.
    for bytes in broker.pop_answers(remote.driver, 100_000, Duration::from_millis(1))? {
        take_answer(shared, &bytes);
    }
    let entries: Vec<String> = shared.lock().mode.entries.keys().cloned().collect();
    let present = broker.entries_present(&entries)?;
    let mut state = shared.lock();
    let mut again = Vec::new();
    for (entry, present) in entries.into_iter().zip(present) {
        if present {
            continue;
        }
        let Some(task) = state.mode.entries.remove(&entry) else { continue };
        if let Some(mut flight) = state.mode.flights.remove(&task) {
            flight.job.undelivered += 1;
            flight.job.control.set(Place::Queued);
            again.push(flight.job);
        }
    }
    for job in again.into_iter().rev() {
        if job.undelivered > remote.settings.node_losses {
            job.completion.resolve_err(Error::NodeLost { node: remote.settings.url.clone() });
        } else {
            state.queue.push_front(job);
        }
    }
    shared.queued.store(state.queue.len(), Ordering::SeqCst);
    drop(state);
    remote.work_ready.notify_all();
    Ok(())
}
