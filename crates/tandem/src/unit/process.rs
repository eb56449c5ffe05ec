//! A task on its own OS process.

use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::answer::{self, Answer, Asked};
use crate::child::ChildProcess;
use crate::codec;
use crate::launch::{self, StartMethod, Worker, WorkerConfig};
use crate::task;
use crate::watch::{Finish, Outcome, WATCHER};
use crate::wire::{self, Kind};

/// Dropped unjoined, the unit is detached: its child goes to the reaper (see
/// `ChildProcess`'s `Drop`) and runs its task to the end; with our end of
/// the socket closed, its answer has nowhere to go, so it then exits.
pub(crate) struct ProcessUnit<R> {
    child: Option<ChildProcess>,
    socket: Option<OwnedFd>,
    /// Its answer as far as it has come, for a watcher that reads it
    /// without waiting.
    reader: wire::FrameReader,
    config: WorkerConfig,
    /// Set by `JoinHandle::kill_on_drop`: a drop kills the process.
    pub(crate) kill_on_drop: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> Drop for ProcessUnit<R> {
    fn drop(&mut self) {
        if self.kill_on_drop
            && let Some(child) = &self.child
        {
            let _ = child.kill();
        }
    }
}

impl<R> ProcessUnit<R> {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildProcess::pid)
    }

    pub(crate) fn kill(&self) -> Result<(), Error> {
        match &self.child {
            Some(child) => child.kill().map_err(|e| Error::os("killing the worker", e)),
            None => Ok(()),
        }
    }
}

impl<R: DeserializeOwned + 'static> ProcessUnit<R> {
    /// Start a worker by `method`, configured by `config`, sandbox it if
    /// asked (it must apply the sandbox before it gets the task; if it
    /// cannot, it is ended and that is the error), and send it the task.
    pub(crate) fn launch<A>(
        method: StartMethod,
        config: WorkerConfig,
        sandbox: Option<&crate::sandbox::Sandbox>,
        arg: &A,
        f: fn(A) -> R,
    ) -> Result<Self, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize,
    {
        let worker = launch::start(method, config)?;
        if let Some(sandbox) = sandbox
            && let Err(e) = crate::sandbox::impose(worker.socket.as_fd(), sandbox)
        {
            let Worker { socket, mut child, .. } = worker;
            let _ = child.kill();
            drop(socket);
            let _ = child.wait();
            return Err(e);
        }
        Self::start(worker, config, codec::bulk_for(sandbox.is_some()), arg, f)
    }

    /// Send one task to a fresh worker (a big argument where `bulk` says),
    /// then close our writing side so the worker exits after answering.
    pub(crate) fn start<A>(
        worker: Worker,
        config: WorkerConfig,
        bulk: codec::Bulk,
        arg: &A,
        f: fn(A) -> R,
    ) -> Result<Self, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize,
    {
        let Worker { child, socket, .. } = worker;
        let unit = ProcessUnit {
            child: Some(child),
            socket: Some(socket),
            reader: wire::FrameReader::exact(),
            config,
            kill_on_drop: false,
            _result: PhantomData,
        };
        let encoded = codec::encode_message(arg, config.max_message(), bulk)?;
        let header = task::task_header(0, f);
        let sock = unit.socket.as_ref().expect("just set");
        // A worker that died before reading its task is reported by join,
        // with its signal or exit code, so a failed send needs no error here.
        let _ = wire::send(sock.as_fd(), Kind::Task, &[&header, &encoded.bytes], &encoded.descriptors());
        wire::shutdown_write(sock);
        Ok(unit)
    }

    pub(crate) fn is_finished(&self) -> bool {
        let (Some(child), Some(sock)) = (&self.child, &self.socket) else { return true };
        let mut fds = [PollFd::new(sock, PollFlags::IN), PollFd::new(child.pidfd(), PollFlags::IN)];
        matches!(rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
    }

    pub(crate) fn join(self, limit: Option<Duration>) -> Result<R, Error> {
        let deadline = limit.map(|l| Instant::now() + l);
        let socket = self.socket.as_ref().expect("joined once");
        let received = wire::recv(socket.as_fd(), self.config.max_message(), deadline);
        self.judge(received)
    }

    /// The answer if it has come whole (or the connection ended), read
    /// without waiting; `None` while more must come from a live worker.
    fn read_ready(&mut self) -> Option<Result<wire::Frame, wire::RecvError>> {
        let (Some(child), Some(socket)) = (&self.child, &self.socket) else { return None };
        match self.reader.read_ready(socket.as_fd(), self.config.max_message()) {
            Ok(Some(frame)) => Some(Ok(frame)),
            Err(e) => Some(Err(e)),
            // Its process exited but the socket lives on in another (a
            // child it left): nothing more will come from the worker.
            Ok(None) if child.has_exited() => Some(Err(wire::RecvError::Closed)),
            Ok(None) => None,
        }
    }

    /// The unit's result from what its socket gave.
    fn judge(mut self, received: Result<wire::Frame, wire::RecvError>) -> Result<R, Error> {
        let mut child = self.child.take().expect("joined once");
        let socket = self.socket.take().expect("joined once");
        // The socket stays open until the worker is dealt with: closing it
        // first would let the worker exit on its own, racing a kill of its
        // process group (which, for a fork-server worker, is only sent while
        // the worker is still running).
        let socket = Some(socket);
        let asked = Asked { task: None, memory_limit: self.config.memory_limit };
        let max = self.config.max_message();
        match Answer::from_read(received).fetch_lent(child.pid(), child.pidfd().as_fd(), max) {
            Answer::Done(frame) => {
                let result = answer::result(frame, asked, self.config.max_message());
                // The worker exits after answering: it saw our end of file.
                drop(socket);
                child.release().map_err(|e| Error::os("waiting for the worker", e))?;
                result
            }
            Answer::Died => Err(answer::died(&mut child, asked)),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(match other {
                    Answer::TimedOut => Error::TimedOut,
                    Answer::Garbage(why) => answer::garbage(&why, asked),
                    _ => answer::garbage("a message that is not a result", asked),
                })
            }
        }
    }
}

pub(crate) struct Watched<R> {
    unit: Mutex<Option<ProcessUnit<R>>>,
    pub(crate) outcome: Outcome<R>,
    pid: u32,
}

impl<R: DeserializeOwned + Send + 'static> Finish for Watched<R> {
    /// Read what has come; finish once the answer is whole or the worker
    /// is gone. A half-written answer waits for the rest without holding
    /// the watcher's thread, which every awaited unit shares.
    fn finish(&self, again: &dyn Fn(std::os::fd::BorrowedFd<'_>)) -> bool {
        let mut slot = self.unit.lock().unwrap_or_else(|e| e.into_inner());
        let Some(unit) = slot.as_mut() else { return true };
        match unit.read_ready() {
            Some(received) => {
                let unit = slot.take().expect("checked above");
                drop(slot);
                self.outcome.fill(unit.judge(received));
                true
            }
            None => {
                if let Some(socket) = &unit.socket {
                    again(socket.as_fd());
                }
                false
            }
        }
    }
}

/// A `JoinHandle`'s hold on its awaited process unit.
pub(crate) struct WatchedHandle<R> {
    pub(crate) watched: Arc<Watched<R>>,
}

impl<R: DeserializeOwned + Send + 'static> ProcessUnit<R> {
    /// Hand this unit to the watcher thread, which finishes it when its
    /// socket or pidfd is ready; the result comes through the outcome.
    pub(crate) fn watch(self) -> WatchedHandle<R> {
        let pid = self.pid();
        let watched = Arc::new(Watched { unit: Mutex::new(Some(self)), outcome: Outcome::new(), pid });
        {
            let unit = watched.unit.lock().unwrap_or_else(|e| e.into_inner());
            let unit = unit.as_ref().expect("just stored");
            let (Some(child), Some(socket)) = (&unit.child, &unit.socket) else {
                unreachable!("a unit not joined yet holds its child and socket")
            };
            let fds = [socket.as_fd(), child.pidfd().as_fd()];
            WATCHER.watch(watched.clone(), &fds);
        }
        WatchedHandle { watched }
    }
}

impl<R> WatchedHandle<R> {
    pub(crate) fn pid(&self) -> u32 {
        self.watched.pid
    }

    pub(crate) fn kill(&self) -> Result<(), Error> {
        match &*self.watched.unit.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(unit) => unit.kill(),
            None => Ok(()),
        }
    }

    pub(crate) fn set_kill_on_drop(&self) {
        if let Some(unit) = &mut *self.watched.unit.lock().unwrap_or_else(|e| e.into_inner()) {
            unit.kill_on_drop = true;
        }
    }
}

impl<R> Drop for WatchedHandle<R> {
    fn drop(&mut self) {
        // The watcher still holds the unit: kill it if asked, and the
        // watcher finishes (reaps) it when it dies.
        if let Some(unit) = &*self.watched.unit.lock().unwrap_or_else(|e| e.into_inner())
            && unit.kill_on_drop
        {
            let _ = unit.kill();
        }
    }
}
