//! The agent: serves a cluster's tasks on this machine with a local process
//! pool.
//!
//! Two threads, each with its own broker connection: the *reader* (the
//! caller of [`Agent::serve`]) takes new task entries while the agent has
//! room (twice its workers), checks each frame's tag, build and driver, and
//! submits it to the local pool; the *answerer* sends each local outcome to
//! its driver (answer, acknowledge, delete: one round trip for all that are
//! ready), and renews the leases of the running tasks a few times per
//! lease, cancelling the local task of a lease it no longer holds or of a
//! driver that is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::broker::build_id::build_id;
use crate::broker::frame::{Address, AnswerFrame, Key, Reply, TaskFrame, WireBatch, WireEnd, WireError};
use crate::broker::{Broker, Outgoing};
use crate::pool::{BatchEnd, RawBatch, Resolve, cancel_task};
use crate::wire::Frame;
use crate::{Error, Mode, Pool, PoolBuilder};

/// How long a broker command may take before the agent counts it failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the agent beats its heartbeat and reads the stop counter.
const BEAT: Duration = Duration::from_secs(1);

/// Serves a cluster's tasks on this machine: the same program as the
/// driver, started on each machine (by systemd, Slurm's `srun`, a
/// Kubernetes Deployment; see the README).
///
/// ```no_run
/// tandem::init(); // first, as for any process pool: workers are this program
/// tandem::cluster::Agent::connect("redis://10.0.0.5:6379/0")
///     .unwrap()
///     .key(b"secret")
///     .name("node-a")
///     .workers(8)
///     .serve()
///     .unwrap();
/// ```
#[derive(Debug)]
pub struct Agent {
    url: String,
    key: Option<Key>,
    name: String,
    workers: usize,
    pool: PoolBuilder,
}

impl Agent {
    /// An agent of the broker at `url` (`redis://HOST:PORT/DB` or
    /// `redis+unix:///PATH`), checked now.
    ///
    /// ```
    /// assert!(tandem::cluster::Agent::connect("redis://127.0.0.1:1/0").is_err());
    /// ```
    pub fn connect(url: &str) -> Result<Agent, Error> {
        Broker::connect(url, COMMAND_TIMEOUT)?;
        let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Agent { url: url.to_owned(), key: None, name, workers, pool: Pool::builder() })
    }

    /// The key the driver's frames must be signed with. Required.
    ///
    /// ```no_run
    /// let agent = tandem::cluster::Agent::connect("redis://127.0.0.1:6379/0").unwrap().key(b"secret");
    /// ```
    pub fn key(mut self, key: &[u8]) -> Agent {
        self.key = Some(Key::new(key));
        self
    }

    /// The node's name in errors and in the broker (default: the host
    /// name). Each agent needs its own: [`serve`](Agent::serve) fails with
    /// `Error::Io` while another agent of the same name serves the broker
    /// (after waiting up to 4 s for the claim of one that just died).
    ///
    /// ```no_run
    /// let agent = tandem::cluster::Agent::connect("redis://127.0.0.1:6379/0").unwrap().name("node-a");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Agent {
        self.name = name.into();
        self
    }

    /// Local process workers (default: the available parallelism), as
    /// [`PoolBuilder::workers`].
    ///
    /// ```no_run
    /// let agent = tandem::cluster::Agent::connect("redis://127.0.0.1:6379/0").unwrap().workers(8);
    /// ```
    pub fn workers(mut self, n: usize) -> Agent {
        self.workers = n.max(1);
        self
    }

    /// The local pool's other settings (sandbox, memory limits, start
    /// method, capture of output...): the agent builds its pool from this
    /// builder in process mode with [`workers`](Agent::workers) workers and
    /// the driver's `task_timeout` (one local pool per distinct time-out).
    ///
    /// ```no_run
    /// use tandem::sandbox::Sandbox;
    /// let local = tandem::Pool::builder().sandbox(Sandbox::new()).worker_memory_limit(1 << 30);
    /// let agent = tandem::cluster::Agent::connect("redis://127.0.0.1:6379/0").unwrap().pool(local);
    /// ```
    pub fn pool(mut self, builder: PoolBuilder) -> Agent {
        self.pool = builder;
        self
    }

    /// Serve until [`Cluster::stop_agents`](super::Cluster::stop_agents),
    /// or until the process is killed. While the broker cannot be reached
    /// the agent keeps trying; its running tasks are cancelled once their
    /// leases run out (their drivers send them again). An error only if it
    /// cannot start (no key, no broker, no local pool).
    pub fn serve(self) -> Result<(), Error> {
        let key = self.key.clone().ok_or_else(|| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an agent needs the cluster's key: call Agent::key(secret) with the driver's key",
            ))
        })?;
        let build = build_id()?;
        let mut reader = Broker::connect(&self.url, COMMAND_TIMEOUT)?;
        let answerer = Broker::connect(&self.url, COMMAND_TIMEOUT)?;
        self.claim_name(&mut reader)?;
        let stop_at_start = reader.agent_beat(&self.name, self.workers, BEAT * 3)?;
        let state = Arc::new(Served::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let node = Node { key, build, name: self.name.clone(), url: self.url.clone() };
        let answering = {
            let (state, node) = (state.clone(), node.clone());
            std::thread::Builder::new()
                .name("tandem-agent-answer".into())
                .spawn(move || answer_loop(&node, &state, answerer, rx))
                .map_err(|e| Error::os("starting the agent's answer thread", e))?
        };
        let mut local = Pools::default();
        let mut next_beat = Instant::now() + BEAT;
        let result = loop {
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + BEAT;
                match reader.agent_beat(&self.name, self.workers, BEAT * 3) {
                    Ok(stop) if stop != stop_at_start => break Ok(()),
                    Ok(_) => {}
                    Err(_) => reconnect(&mut reader, &self.url),
                }
            }
            let room = (2 * self.workers).saturating_sub(state.running());
            if room == 0 {
                state.wait_for_room(Duration::from_millis(100));
                continue;
            }
            let entries = match reader.read_tasks(&self.name, room, Duration::from_millis(250)) {
                Ok(entries) => entries,
                Err(_) => {
                    reconnect(&mut reader, &self.url);
                    continue;
                }
            };
            if entries.is_empty() {
                continue;
            }
            if let Err(e) = self.take(&node, &state, &mut reader, &mut local, &tx, entries) {
                if let Error::Io(_) = e {
                    reconnect(&mut reader, &self.url);
                } else {
                    break Err(e);
                }
            }
        };
        state.stopping.store(true, Ordering::SeqCst);
        for (_, pool) in local.pools.drain() {
            pool.terminate();
        }
        drop(tx);
        let _ = answering.join();
        let _ = reader.agent_leaves(&self.name);
        result
    }

    /// Take this agent's name, waiting out the claim of an agent of the
    /// same name that just died (it lasts `3 x BEAT`).
    fn claim_name(&self, broker: &mut Broker) -> Result<(), Error> {
        let mut token = [0u8; 16];
        let _ = rustix::rand::getrandom(&mut token, rustix::rand::GetRandomFlags::empty());
        let token = u128::from_le_bytes(token);
        let deadline = Instant::now() + BEAT * 4;
        while !broker.claim_name(&self.name, token, BEAT * 3)? {
            if Instant::now() >= deadline {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "an agent named {:?} is already serving this broker: give each agent its own name (Agent::name)",
                        self.name
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Check and start the entries read.
    fn take(
        &self,
        node: &Node,
        state: &Arc<Served>,
        broker: &mut Broker,
        local: &mut Pools,
        tx: &Sender<(String, Local)>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Error> {
        let mut frames = Vec::with_capacity(entries.len());
        let mut refusals = Vec::new();
        let mut garbage = Vec::new();
        for (entry, bytes) in entries {
            match TaskFrame::decode(&bytes, &node.key) {
                Ok(frame) if frame.build != node.build => {
                    let why = "the task comes from a different build of the program than this agent runs: deploy the same build everywhere".to_owned();
                    refusals.push(node.refusal(frame.to, why, true, entry)?);
                }
                Ok(frame) => frames.push((entry, frame)),
                Err((Some(to), why)) => refusals.push(node.refusal(to, why, false, entry)?),
                Err((None, _)) => garbage.push(entry),
            }
        }
        if !refusals.is_empty() {
            broker.answer(&refusals, Duration::from_secs(600))?;
        }
        // A driver seen alive within the last beat is not asked again (a
        // round trip off every task's path); the renewals look again.
        let mut unknown: Vec<u128> = frames
            .iter()
            .map(|(_, f)| f.to.driver)
            .filter(|d| local.seen_alive.get(d).is_none_or(|at| at.elapsed() >= BEAT))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let now = Instant::now();
            for (driver, alive) in unknown.iter().zip(broker.drivers_alive(&unknown)?) {
                if alive {
                    local.seen_alive.insert(*driver, now);
                } else {
                    local.seen_alive.remove(driver);
                }
            }
            local.seen_alive.retain(|_, at| at.elapsed() < BEAT * 10);
        }
        for (entry, frame) in frames {
            if !local.seen_alive.contains_key(&frame.to.driver) {
                garbage.push(entry); // its driver is gone: nobody waits for it
                continue;
            }
            let pool = match local.pools.entry(frame.timeout_ms) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let mut builder = self.pool.clone().mode(Mode::Process).workers(self.workers);
                    if frame.timeout_ms > 0 {
                        builder = builder.task_timeout(Duration::from_millis(frame.timeout_ms));
                    }
                    v.insert(builder.build()?)
                }
            };
            let sink = Arc::new(Sink {
                entry: entry.clone(),
                tx: Mutex::new(tx.clone()),
                done: AtomicBool::new(false),
            });
            let lease = Duration::from_millis(u64::from(frame.lease_ms).max(50));
            state
                .lock()
                .insert(entry.clone(), Running { to: frame.to, lease, control: None, sink: sink.clone() });
            let (control, id) = pool.submit_frame(frame.header, frame.payload, frame.items, sink)?;
            if let Some(r) = state.lock().get_mut(&entry) {
                r.control = Some((control, id));
            }
        }
        if !garbage.is_empty() {
            broker.withdraw(&garbage)?;
        }
        Ok(())
    }
}

/// The reader's own: local pools by task time-out (ms, 0 for none), and
/// when each driver was last seen alive.
#[derive(Default)]
struct Pools {
    pools: HashMap<u64, Pool>,
    seen_alive: HashMap<u128, Instant>,
}

/// What the agent's two threads know of the node.
#[derive(Clone)]
struct Node {
    key: Key,
    build: [u8; 32],
    name: String,
    url: String,
}

impl Node {
    /// A refusal of entry `entry` for its driver (signed only if the frame
    /// verified: an agent cannot sign for a key it does not have).
    fn refusal(&self, to: Address, why: String, signed: bool, entry: String) -> Result<Outgoing, Error> {
        let frame = AnswerFrame { to, node: self.name.clone(), reply: Reply::Refused(why) };
        Ok((to.driver, frame.encode(signed.then_some(&self.key))?, entry))
    }
}

/// A local task's outcome.
enum Local {
    Frame(Frame),
    Batch(RawBatch),
    Failed(Error),
}

/// Where the local pool resolves a task from the broker: it passes the
/// outcome to the answer thread, once.
struct Sink {
    entry: String,
    tx: Mutex<Sender<(String, Local)>>,
    done: AtomicBool,
}

impl Sink {
    fn finish(&self, outcome: Local) -> bool {
        if self.done.swap(true, Ordering::SeqCst) {
            return false;
        }
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send((self.entry.clone(), outcome));
        true
    }
}

impl Resolve for Sink {
    fn resolve_frame(&self, frame: Frame) -> bool {
        self.finish(Local::Frame(frame))
    }
    fn resolve_batch(&self, raw: RawBatch) -> bool {
        self.finish(Local::Batch(raw))
    }
    fn resolve_err(&self, err: Error) -> bool {
        self.finish(Local::Failed(err))
    }
    fn is_resolved(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

/// A task running here, by stream entry.
struct Running {
    to: Address,
    lease: Duration,
    /// The local task's control and id, once submitted.
    control: Option<(Arc<crate::pool::TaskControl>, u64)>,
    sink: Arc<Sink>,
}

impl Running {
    fn cancel(&self) {
        if let Some((control, id)) = &self.control {
            cancel_task(control, *id, || self.sink.resolve_err(Error::Cancelled));
        } else {
            self.sink.resolve_err(Error::Cancelled);
        }
    }
}

#[derive(Default)]
struct Served {
    running: Mutex<HashMap<String, Running>>,
    room: Condvar,
    stopping: AtomicBool,
}

impl Served {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn running(&self) -> usize {
        self.lock().len()
    }
    fn wait_for_room(&self, at_most: Duration) {
        let running = self.lock();
        let _ = self.room.wait_timeout(running, at_most);
    }
}

fn reconnect(broker: &mut Broker, url: &str) {
    std::thread::sleep(Duration::from_millis(100));
    if let Ok(again) = Broker::connect(url, COMMAND_TIMEOUT) {
        *broker = again;
    }
}

/// The answer thread: answers, renewals, lost leases.
fn answer_loop(node: &Node, state: &Served, mut broker: Broker, rx: Receiver<(String, Local)>) {
    let mut last_renewed = Instant::now();
    let mut next_renew = Instant::now();
    let mut unsent: Vec<(Instant, Outgoing)> = Vec::new();
    loop {
        let mut ready = Vec::new();
        match rx.recv_timeout(next_renew.saturating_duration_since(Instant::now())) {
            Ok(first) => {
                ready.push(first);
                ready.extend(rx.try_iter().take(1023));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if state.lock().is_empty() || state.stopping.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
        let mut keep = Duration::from_secs(60);
        for (entry, outcome) in ready {
            let Some(running) = state.lock().remove(&entry) else { continue }; // given up: dropped
            keep = keep.max(running.lease * 10);
            let reply = reply_of(outcome, crate::wire::DEFAULT_MAX_MESSAGE);
            let frame = AnswerFrame { to: running.to, node: node.name.clone(), reply };
            match frame.encode(Some(&node.key)) {
                Ok(bytes) => unsent.push((Instant::now(), (running.to.driver, bytes, entry))),
                Err(e) => {
                    let failed = AnswerFrame {
                        to: running.to,
                        node: node.name.clone(),
                        reply: Reply::Failed(WireError::from_error(&e)),
                    };
                    if let Ok(bytes) = failed.encode(Some(&node.key)) {
                        unsent.push((Instant::now(), (running.to.driver, bytes, entry)));
                    }
                }
            }
        }
        state.room.notify_all();
        if !unsent.is_empty() {
            let answers: Vec<_> = unsent.iter().map(|(_, a)| a.clone()).collect();
            match broker.answer(&answers, keep) {
                Ok(()) => unsent.clear(),
                Err(_) => {
                    // Kept for the next round; past a lease the driver has
                    // sent the task again, so they are of no use.
                    unsent.retain(|(at, _)| at.elapsed() < Duration::from_secs(60));
                    reconnect(&mut broker, &node.url);
                }
            }
        }
        if Instant::now() >= next_renew {
            let shortest = state.lock().values().map(|r| r.lease).min().unwrap_or(Duration::from_secs(3));
            next_renew =
                Instant::now() + (shortest / 3).clamp(Duration::from_millis(10), Duration::from_secs(1));
            match renew(node, state, &mut broker) {
                Ok(()) => last_renewed = Instant::now(),
                Err(_) => {
                    if last_renewed.elapsed() >= shortest {
                        // The leases ran out while the broker was away: the
                        // drivers give these tasks to others.
                        let all: Vec<_> = state.lock().drain().map(|(_, r)| r).collect();
                        all.iter().for_each(Running::cancel);
                        state.room.notify_all();
                    }
                    reconnect(&mut broker, &node.url);
                }
            }
        }
    }
}

/// Renew the running tasks' leases; cancel those no longer ours or whose
/// driver is gone.
fn renew(node: &Node, state: &Served, broker: &mut Broker) -> Result<(), Error> {
    let (ids, drivers): (Vec<String>, Vec<u128>) = {
        let running = state.lock();
        running.iter().filter(|(_, r)| r.control.is_some()).map(|(id, r)| (id.clone(), r.to.driver)).unzip()
    };
    if ids.is_empty() {
        return Ok(());
    }
    let lost = broker.renew(&node.name, &ids)?;
    let mut unique = drivers.clone();
    unique.sort_unstable();
    unique.dedup();
    let alive: HashMap<u128, bool> = unique.iter().copied().zip(broker.drivers_alive(&unique)?).collect();
    let orphaned: Vec<String> = ids
        .iter()
        .zip(&drivers)
        .filter(|(_, d)| !alive.get(d).copied().unwrap_or(false))
        .map(|(id, _)| id.clone())
        .collect();
    let gone: Vec<Running> = {
        let mut running = state.lock();
        lost.iter().chain(&orphaned).filter_map(|id| running.remove(id)).collect()
    };
    gone.iter().for_each(Running::cancel);
    if !orphaned.is_empty() {
        broker.withdraw(&orphaned)?;
    }
    if !gone.is_empty() {
        state.room.notify_all();
    }
    Ok(())
}

/// A local outcome as the driver's answer.
fn reply_of(outcome: Local, max: u64) -> Reply {
    match outcome {
        Local::Frame(frame) => match crate::task::done_inline(frame, max) {
            Ok(payload) => Reply::Done(payload),
            Err(e) => Reply::Failed(WireError::from_error(&e)),
        },
        Local::Failed(e) => Reply::Failed(WireError::from_error(&e)),
        Local::Batch(raw) => {
            let mut chunks = Vec::with_capacity(raw.chunks.len());
            for chunk in raw.chunks {
                match chunk.into_wire() {
                    Ok((count, data)) => chunks.push((count, serde_bytes::ByteBuf::from(data))),
                    Err(_) => {
                        return Reply::Failed(WireError::Codec(
                            "map results holding shared-memory objects (ipc, shm, sync) cannot cross machines".into(),
                        ));
                    }
                }
            }
            let end = match raw.end {
                BatchEnd::Complete { nanos } => WireEnd::Complete { nanos },
                BatchEnd::Unstarted => WireEnd::Unstarted,
                BatchEnd::Failed(e) => WireEnd::Failed(WireError::from_error(&e)),
                BatchEnd::RestFail(e) => WireEnd::RestFail(WireError::from_error(&e)),
            };
            Reply::Batch(WireBatch { done: raw.done, chunks, end })
        }
    }
}
