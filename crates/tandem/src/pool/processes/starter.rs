//! Starting workers off the loop: a start (launch, configuration, the
//! pool's initializer, the sandbox) waits on the new process for a
//! millisecond or more, so up to [`STARTERS`] threads do it, each handing
//! its worker (or why it could not start) to the loop. (The loop starts a
//! worker itself only when it has nothing else to watch.) A starter with
//! nothing to do for [`LINGER`] ends; the next start makes a new one.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::lanes::Peer;
use super::{Live, Shared};
use crate::launch::{self, Worker, WorkerConfig};
use crate::wire::{self, Kind};
use crate::{Error, UnitId};

/// Most starter threads at once: enough to overlap the new processes'
/// own start-up on a few CPUs, few enough to stay a fixed cost.
pub(super) const STARTERS: usize = 4;
/// How long an idle starter waits for more work before it ends.
const LINGER: Duration = Duration::from_secs(1);

/// The starts asked for, and what they gave.
#[derive(Default)]
pub(super) struct Starters {
    state: Mutex<StartState>,
    more: Condvar,
}

#[derive(Default)]
struct StartState {
    /// Slots to start a worker for.
    wanted: VecDeque<usize>,
    /// Started workers (or failures) for the loop to take.
    done: Vec<(usize, Result<Live, Error>)>,
    /// Starts asked for whose outcome is not in `done` yet: each one
    /// rings the loop when it gets there.
    owed: usize,
    threads: usize,
    idle: usize,
    /// The loop is gone: starters end.
    stop: bool,
}

impl Starters {
    fn lock(&self) -> std::sync::MutexGuard<'_, StartState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ask for a worker for `slot`; a starter thread is made if none is free.
pub(super) fn request(shared: &Arc<Shared>, slot: usize) {
    let starters = &shared.backend.starters;
    let mut state = starters.lock();
    state.wanted.push_back(slot);
    state.owed += 1;
    if state.idle > 0 {
        starters.more.notify_one();
        return;
    }
    if state.threads >= STARTERS {
        return;
    }
    state.threads += 1;
    drop(state);
    let pool = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("tandem-pool-starter".into())
        .stack_size(256 * 1024)
        .spawn(move || serve(&pool));
    match spawned {
        Ok(handle) => {
            let mut joinable = shared.lock();
            joinable.joinable.retain(|(_, h)| !h.is_finished());
            joinable.joinable.push((usize::MAX, handle));
        }
        Err(e) => {
            // No thread: fail this start (the loop fails a task with why).
            let mut state = starters.lock();
            state.threads -= 1;
            if let Some(slot) = state.wanted.pop_back() {
                state.owed -= 1;
                state.done.push((slot, Err(Error::os("starting a pool starter thread", e))));
            }
            drop(state);
            shared.backend.bell.ring();
        }
    }
}

/// The workers started since the last call.
pub(super) fn take_done(shared: &Shared) -> Vec<(usize, Result<Live, Error>)> {
    std::mem::take(&mut shared.backend.starters.lock().done)
}

/// Starts still asked for or under way.
pub(super) fn pending(shared: &Shared) -> bool {
    let state = shared.backend.starters.lock();
    state.owed > 0 || !state.done.is_empty()
}

/// Started workers wait for the loop to take them.
pub(super) fn pending_done(shared: &Shared) -> bool {
    !shared.backend.starters.lock().done.is_empty()
}

/// The loop ends: starters finish what they do and end.
pub(super) fn stop(shared: &Shared) {
    shared.backend.starters.lock().stop = true;
    shared.backend.starters.more.notify_all();
}

fn serve(shared: &Arc<Shared>) {
    let starters = &shared.backend.starters;
    let mut state = starters.lock();
    loop {
        if let Some(slot) = state.wanted.pop_front() {
            drop(state);
            let started = start_worker(shared, slot);
            state = starters.lock();
            state.owed -= 1;
            state.done.push((slot, started));
            drop(state);
            shared.backend.bell.ring();
            state = starters.lock();
            continue;
        }
        if state.stop {
            break;
        }
        state.idle += 1;
        let (next, waited) = starters.more.wait_timeout(state, LINGER).unwrap_or_else(|e| e.into_inner());
        state = next;
        state.idle -= 1;
        if waited.timed_out() && state.wanted.is_empty() {
            break;
        }
    }
    state.threads -= 1;
}

fn worker_config(shared: &Shared) -> WorkerConfig {
    WorkerConfig {
        memory_limit: shared.config.memory_limit,
        max_message: shared.config.max_message,
        no_new_privs: shared.config.no_new_privs,
        reports: shared.config.reports,
        capture: shared.config.capture,
        // A kept arena and the parent's kept mapped are resident memory of
        // the worker's: they would count against its limits and reports.
        drop_arenas: shared.config.resident_limit != 0
            || shared.config.memory_limit != 0
            || shared.config.reports,
        // Every place the pool reads an answer reads a lent result out of
        // its worker first (`Answer::fetch_lent`).
        lend_results: shared.config.lend_results,
    }
}

/// Start a worker for `slot`, run the initializer in it, then lock it in
/// its sandbox (open what the tasks need, then lock down).
pub(super) fn start_worker(shared: &Shared, slot: usize) -> Result<Live, Error> {
    let started = start_and_initialize(shared, slot);
    let Some(sandbox) = &shared.config.sandbox else { return started };
    let outcome = started.and_then(|live| match crate::sandbox::impose(live.peer.socket.as_fd(), sandbox) {
        Ok(report) => Ok((live, report)),
        Err(e) => {
            kill_now(live);
            Err(e)
        }
    });
    shared.backend.note_sandbox_outcome(outcome.as_ref().map(|(_, report)| report.as_slice()));
    outcome.map(|(live, _)| live)
}

fn kill_now(live: Live) {
    let Live { mut child, peer, cgroup, .. } = live;
    let _ = child.kill();
    drop(peer);
    let _ = child.wait();
    // Reaped: its cgroup can go.
    drop(cgroup);
}

fn start_and_initialize(shared: &Shared, slot: usize) -> Result<Live, Error> {
    // Its answer slot for tasks sent on the lane (see `mailbox`), sent to
    // it by the loop when it installs the worker (`Loop::install`); none
    // where tasks never take the lanes. Made first: a failure then has no
    // process to take down.
    let mailbox = super::lanes::used(shared)
        .then(|| shared.backend.mailboxes.take())
        .transpose()
        .map_err(|e| Error::os("making a new worker's answer slot", e))?;
    let Worker { mut child, socket, stderr } = launch::start(shared.config.method, worker_config(shared))?;
    // Under the memory limit before it is handed anything to run.
    let cgroup = match shared.backend.memory.tree().map(|tree| tree.join(child.pid())).transpose() {
        Ok(cgroup) => cgroup,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    shared.slot(slot).unit = Some(UnitId::Process(child.pid()));
    let pidfd = child.shared_pidfd();
    let peer = Peer { socket: Arc::new(socket), pidfd, pid: child.pid(), mailbox };
    let live = Live { child, peer, tasks: 0, board: None, stderr, over_memory: None, cgroup };
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
            kill_now(live);
            return Err(Error::Panicked {
                message: format!("the pool's initializer failed in a new worker: {e}"),
            });
        }
    }
    Ok(live)
}
