//! Starting a worker process: the start-method seam.
//!
//! A start method is a way to get a new process running tandem's worker
//! loop with a socket to us. Each one is a submodule that provides
//!
//! - `fn start() -> Result<Worker, Error>`: a new worker, as a [`Worker`]:
//!   the parent's end of a Unix stream socket whose other end the worker
//!   reads tasks from (`crate::worker::serve` runs there), and a
//!   [`ChildProcess`] that can kill the worker, wait for it and reap it
//!   exactly once; dropped unjoined, it goes to the reaper
//!   ([`crate::child::reaper::REAPER`], handed in here, so the child handle
//!   names no start method and no reaper);
//! - a worker that inherits nothing of the caller but that socket, leads a
//!   process group of its own, and dies with this process however it dies.
//!
//! The methods, like Python's:
//!
//! - [`reexec`] ([`StartMethod::Spawn`]): re-execute `/proc/self/exe`; the
//!   worker takes over before `main` (`sys::bootstrap`) and is tied to us by
//!   a lifeline pipe.
//! - [`forkserver`] ([`StartMethod::ForkServer`]): ask a single-threaded
//!   template, itself started once by [`reexec`], to fork one; the
//!   template's own loop, which runs in that other process, is
//!   [`template`].
//!
//! [`start`] picks the method and sends the worker its [`WorkerConfig`].

pub(crate) mod forkserver;
pub(crate) mod reexec;
pub(crate) mod template;

use std::os::fd::{AsFd, OwnedFd};

use crate::Error;
use crate::child::ChildProcess;
use crate::wire::{self, Kind};

/// How a process unit starts, like Python's start methods.
///
/// ```
/// use tandem::StartMethod;
/// assert_eq!(StartMethod::default(), StartMethod::Spawn);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StartMethod {
    /// Re-execute the running binary; nothing is inherited but what is sent.
    #[default]
    Spawn,
    /// Fork from a single-threaded template process started once: much
    /// faster starts, and still nothing inherited from the caller's threads.
    ForkServer,
}

/// A started worker process and the parent's end of its socket.
///
/// The socket is declared first so it is dropped first: a worker dropped on
/// an error path sees its connection close and exits, so reaping the child
/// (which may block when no watcher thread can be started) always ends.
pub(crate) struct Worker {
    pub socket: OwnedFd,
    pub child: ChildProcess,
    /// With capture on: the parent's copy of the worker's stderr memfd
    /// (see `output`), read when the worker dies under a task.
    pub stderr: Option<OwnedFd>,
}

/// Start a worker by `method` and send it `config`.
pub(crate) fn start(method: StartMethod, config: WorkerConfig) -> Result<Worker, Error> {
    let mut worker = match method {
        StartMethod::Spawn => reexec::start()?,
        StartMethod::ForkServer => forkserver::start()?,
    };
    if config != WorkerConfig::default() {
        let memfds = match config.capture {
            true => Vec::from(
                crate::output::memfds().map_err(|e| Error::os("making a worker's output memfds", e))?,
            ),
            false => Vec::new(),
        };
        let fds: Vec<_> = memfds.iter().map(|f| f.as_fd()).collect();
        wire::send(worker.socket.as_fd(), Kind::Config, &[&config.to_bytes()], &fds)
            .map_err(|e| Error::os("configuring a new worker", e))?;
        worker.stderr = memfds.into_iter().nth(1);
    }
    Ok(worker)
}

/// Worker settings, sent in a Config frame right after the start (only if
/// they differ from the defaults) and applied by the worker loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkerConfig {
    /// Address-space limit in bytes (RLIMIT_AS); 0 for none.
    pub memory_limit: u64,
    /// Largest task message accepted; 0 for the default.
    pub max_message: u64,
    /// Set `PR_SET_NO_NEW_PRIVS`: programs the tasks `exec` gain no
    /// privileges (setuid bits and file capabilities are ignored).
    pub no_new_privs: bool,
    /// Measure each task's CPU time and peak memory and send them with its
    /// result (`PoolBuilder::reports`).
    pub reports: bool,
    /// Capture each task's stdout and stderr in the two memfds that come
    /// with the Config frame (`PoolBuilder::capture_output`; see `output`).
    pub capture: bool,
    /// Keep no arena between tasks (`codec::arena`): where a worker's
    /// memory is limited or measured, which mappings kept would skew.
    pub drop_arenas: bool,
    /// Lend big byte results to the parent, which reads them out of the
    /// worker's memory (`codec::lend`): a pool's workers, where
    /// [`may_lend`] says (a one-off unit's worker exits once it has
    /// answered, before its parent may have read anything).
    pub lend_results: bool,
}

static LENDING_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the workers of a pool built now may lend their results: this
/// process may read its children's memory (tried once), and tests or
/// benches have not turned it off to compare.
pub(crate) fn may_lend() -> bool {
    !LENDING_OFF.load(std::sync::atomic::Ordering::Relaxed) && crate::sys::remote::parent_can_read_children()
}

/// Let the workers of pools built from now on lend their results, or not.
#[cfg(feature = "fuzzing")]
pub(crate) fn allow_lending(on: bool) {
    LENDING_OFF.store(!on, std::sync::atomic::Ordering::Relaxed);
}

impl WorkerConfig {
    pub(crate) fn to_bytes(self) -> [u8; 21] {
        let mut b = [0u8; 21];
        b[..8].copy_from_slice(&self.memory_limit.to_le_bytes());
        b[8..16].copy_from_slice(&self.max_message.to_le_bytes());
        b[16] = u8::from(self.no_new_privs);
        b[17] = u8::from(self.reports);
        b[18] = u8::from(self.capture);
        b[19] = u8::from(self.drop_arenas);
        b[20] = u8::from(self.lend_results);
        b
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<WorkerConfig> {
        Some(WorkerConfig {
            memory_limit: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            max_message: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
            no_new_privs: *b.get(16)? != 0,
            reports: *b.get(17)? != 0,
            capture: *b.get(18)? != 0,
            drop_arenas: *b.get(19)? != 0,
            lend_results: *b.get(20)? != 0,
        })
    }

    pub(crate) fn max_message(self) -> u64 {
        if self.max_message == 0 { wire::DEFAULT_MAX_MESSAGE } else { self.max_message }
    }
}
