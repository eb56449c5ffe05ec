//! The one error type of tandem, and the words it uses.

use std::fmt;
use std::io;

/// Everything that can go wrong when running a task on a thread or a process.
///
/// Each message says what happened and what to do about it.
///
/// ```
/// use tandem::Error;
/// let e = Error::TimedOut;
/// assert!(e.to_string().contains("time limit"));
/// ```
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The task panicked; the unit that ran it survives (a process worker
    /// catches the panic and goes on).
    ///
    /// ```
    /// use tandem::{Error, Mode};
    /// tandem::init();
    /// let h = tandem::spawn(Mode::Process, (), |()| -> u8 { panic!("no luck") }).unwrap();
    /// let Err(Error::Panicked { message }) = h.join() else { panic!() };
    /// assert!(message.contains("no luck"));
    /// ```
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The unit running the task died: killed by a signal or exited.
    ///
    /// ```
    /// use tandem::{Error, Mode};
    /// tandem::init();
    /// let h = tandem::spawn(Mode::Process, (), |()| -> u8 { std::process::exit(3) }).unwrap();
    /// let Err(Error::WorkerDied { code, signal, .. }) = h.join() else { panic!() };
    /// assert_eq!((code, signal), (Some(3), None));
    /// ```
    #[non_exhaustive]
    WorkerDied {
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// Its process id.
        pid: u32,
        /// The task it was running, where it has a number (pool tasks).
        task: Option<u64>,
        /// The map item it was running (its index in the input), for a
        /// death during `map` or `map_unordered`.
        item: Option<u64>,
        /// The worker memory limit in force, if one was set: the likely
        /// reason for an abort or a kill.
        memory_limit: Option<u64>,
        /// The last lines the task wrote to stderr (at most 4 KiB), on a
        /// pool with `capture_output(true)`; see [`Error::output_tail`].
        output_tail: Option<Box<str>>,
        /// The memory (bytes) seen when the worker was killed for
        /// exceeding `worker_memory_limit`: the resident memory the pool's
        /// sampler read, or the peak its memory cgroup recorded (v1
        /// `memory.max_usage_in_bytes`, v2 `memory.peak`); `None` when
        /// `memory_limit` is an address-space cap
        /// (`worker_address_space_limit`, `process::Builder::memory_limit`),
        /// the worker was not killed for memory, or the cgroup keeps no peak.
        resident_at_kill: Option<u64>,
        /// What killed the worker for exceeding `worker_memory_limit`
        /// (then `memory_limit` is that limit): its memory cgroup or the
        /// pool's sampler. `None` when it was not killed for the resident
        /// limit.
        memory_limit_by: Option<MemoryLimitBy>,
        /// The machine it ran on, for a task of a cluster pool (the name of
        /// the cluster `Agent` whose local worker died); `None`
        /// on this machine.
        node: Option<Box<str>>,
    },
    /// A cluster pool's task was on a node that was lost (its agent died,
    /// its machine went away, or it fell silent past its lease) more times
    /// than the pool's `node_losses` allows, or the broker could not be
    /// reached for longer than the lease. Its work may have run, in part or
    /// whole, on the lost nodes.
    ///
    /// ```
    /// let e = tandem::Error::NodeLost { node: "node-a".into() };
    /// assert!(e.to_string().contains("node-a"));
    /// ```
    NodeLost {
        /// The last node it was on (an agent's name), or the broker's
        /// address when the broker was lost.
        node: String,
    },
    /// A cluster agent refused the task: a frame without a valid tag for
    /// the agent's key (the driver and the agent were given different
    /// keys), or from a different build of the program. Nothing ran.
    ///
    /// ```
    /// let e = tandem::Error::Refused { node: "node-a".into(), reason: "a different build".into() };
    /// assert!(e.to_string().contains("refused"));
    /// ```
    Refused {
        /// The agent that refused it.
        node: String,
        /// Why, in the agent's words.
        reason: String,
    },
    /// The task ran past its time limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tandem::{Error, Mode};
    /// tandem::init();
    /// let h = tandem::spawn(Mode::Process, (), |()| std::thread::sleep(Duration::from_secs(60))).unwrap();
    /// assert!(matches!(h.join_timeout(Duration::from_millis(10)), Err(Error::TimedOut)));
    /// ```
    TimedOut,
    /// The task was cancelled before it finished.
    ///
    /// ```
    /// use tandem::Error;
    /// assert!(Error::Cancelled.to_string().contains("cancelled"));
    /// ```
    Cancelled,
    /// An argument or result could not be serialized or deserialized.
    ///
    /// ```
    /// use tandem::Error;
    /// tandem::init();
    /// #[derive(Debug, serde::Deserialize)]
    /// struct Refuses;
    /// impl serde::Serialize for Refuses {
    ///     fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
    ///         Err(serde::ser::Error::custom("Refuses refuses"))
    ///     }
    /// }
    /// let result = tandem::process::spawn((), |()| Refuses).unwrap().join();
    /// assert!(matches!(result, Err(Error::Codec(_))), "{result:?}");
    /// ```
    Codec(String),
    /// The pool was shut down.
    ///
    /// ```
    /// use tandem::{Error, Pool};
    /// let pool = Pool::builder().workers(1).build().unwrap();
    /// pool.shutdown();
    /// assert!(matches!(pool.submit(1u8, |x| x).join(), Err(Error::Closed)));
    /// ```
    Closed,
    /// The operation does not exist in this mode.
    ///
    /// ```
    /// use tandem::Error;
    /// let h = tandem::thread::spawn((), |()| ()).unwrap();
    /// assert!(matches!(h.kill(), Err(Error::Unsupported(_))));
    /// ```
    Unsupported(&'static str),
    /// An OS call failed.
    ///
    /// ```
    /// use tandem::Error;
    /// let e = Error::from(std::io::Error::from_raw_os_error(24)); // EMFILE
    /// assert!(matches!(&e, Error::Io(io) if io.raw_os_error() == Some(24)));
    /// assert!(std::error::Error::source(&e).is_some());
    /// ```
    Io(io::Error),
    /// A message or queue item is bigger than the limit set for it; refused
    /// on the sending side, before anything was sent.
    ///
    /// ```
    /// use tandem::Error;
    /// use tandem::ipc::SendError;
    /// let (tx, _rx) = tandem::ipc::channel_with_max_message::<Vec<u8>>(64).unwrap();
    /// let Err(SendError::Failed(_, Error::TooLarge { size, max })) = tx.send(vec![0; 100]) else { panic!() };
    /// assert!(size > max && max == 64);
    /// ```
    TooLarge {
        /// Its size in bytes, serialized.
        size: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// A shared object can no longer work because a unit using it died
    /// (a barrier party was killed before arriving, a channel sender was
    /// killed in the middle of a message).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tandem::Error;
    /// use tandem::sync::{Barrier, Event};
    /// tandem::init();
    /// let (barrier, attached) = (Barrier::new(2).unwrap(), Event::new().unwrap());
    /// let party = tandem::process::spawn((barrier.clone(), attached.clone()), |(_b, attached)| {
    ///     attached.set(); // it holds the barrier now
    ///     std::thread::sleep(Duration::from_secs(60));
    /// });
    /// let party = party.unwrap();
    /// attached.wait();
    /// party.kill().unwrap(); // it will never arrive
    /// assert!(matches!(barrier.wait(), Err(Error::Broken(_))));
    /// let _ = party.join();
    /// ```
    Broken(String),
}

/// What enforced a process pool's resident-memory limit
/// ([`PoolBuilder::worker_memory_limit`](crate::PoolBuilder::worker_memory_limit))
/// when it killed a worker: see [`Error::WorkerDied`]'s `memory_limit_by`.
/// A pool picks one when it starts: a memory cgroup per worker if it can
/// make one (v2, then v1), otherwise sampling.
///
/// ```
/// use tandem::{Error, MemoryLimitBy, Mode, Pool};
/// tandem::init();
/// let pool = Pool::builder().mode(Mode::Process).workers(1).worker_memory_limit(256 << 20).build().unwrap();
/// let err = pool.submit(1usize << 30, |n| vec![1u8; n].len()).join().unwrap_err();
/// let Error::WorkerDied { memory_limit_by: Some(by), .. } = &err else { panic!("{err}") };
/// // A cgroup where the process may make one, the pool's sampler otherwise.
/// assert!(matches!(by, MemoryLimitBy::CgroupV2 | MemoryLimitBy::CgroupV1 | MemoryLimitBy::Sampling));
/// assert!(err.to_string().contains(&by.to_string()));
/// ```
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimitBy {
    /// A cgroup v2 `memory.max` on the worker's own cgroup: the kernel
    /// charges every page the worker and the programs it runs touch, and
    /// its OOM killer kills the worker at the limit (no overshoot).
    CgroupV2,
    /// A cgroup v1 `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`
    /// where swap is accounted) on the worker's own cgroup: as `CgroupV2`,
    /// on a v1 (or hybrid) cgroup layout.
    CgroupV1,
    /// The pool read the worker's resident memory every 5 ms and killed it
    /// past the limit: a fast allocation overshoots between two samples,
    /// and programs the worker runs are not counted. Used when no memory
    /// cgroup can be made.
    Sampling,
}

impl fmt::Display for MemoryLimitBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryLimitBy::CgroupV2 => "a cgroup v2 memory.max on the worker's own cgroup",
            MemoryLimitBy::CgroupV1 => "a cgroup v1 memory.limit_in_bytes on the worker's own cgroup",
            MemoryLimitBy::Sampling => {
                "the pool sampling the worker's resident memory every 5 ms, used when no memory cgroup can be made"
            }
        })
    }
}

impl Error {
    /// A `WorkerDied` error for process `pid`.
    pub(crate) fn died(pid: u32, signal: Option<i32>, code: Option<i32>) -> Error {
        Error::WorkerDied {
            signal,
            code,
            pid,
            task: None,
            item: None,
            memory_limit: None,
            output_tail: None,
            resident_at_kill: None,
            memory_limit_by: None,
            node: None,
        }
    }

    /// For [`WorkerDied`](Error::WorkerDied) on a process pool with
    /// [`capture_output(true)`](crate::PoolBuilder::capture_output): the last
    /// lines the task wrote to stderr before its worker died (at most 4
    /// KiB), also shown in the message. `None` for other errors or when it
    /// wrote nothing.
    ///
    /// ```
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).capture_output(true).build().unwrap();
    /// let err = pool.submit((), |()| -> u8 {
    ///     eprintln!("about to abort");
    ///     std::process::abort()
    /// }).join().unwrap_err();
    /// assert_eq!(err.output_tail(), Some("about to abort"));
    /// assert!(err.to_string().contains("about to abort"));
    /// ```
    pub fn output_tail(&self) -> Option<&str> {
        match self {
            Error::WorkerDied { output_tail, .. } => output_tail.as_deref(),
            _ => None,
        }
    }

    /// The same error as a kill for the resident limit `limit`, if `kill`
    /// says the worker was killed for it (by the pool's sampler or its
    /// memory cgroup; see `pool::processes::memory`) and it died of SIGKILL.
    pub(crate) fn over_memory(mut self, kill: Option<(Option<u64>, MemoryLimitBy)>, limit: u64) -> Error {
        if let (
            Error::WorkerDied {
                signal: Some(libc::SIGKILL),
                memory_limit,
                resident_at_kill,
                memory_limit_by,
                ..
            },
            Some((seen, by)),
        ) = (&mut self, kill)
        {
            *memory_limit = Some(limit);
            *resident_at_kill = seen;
            *memory_limit_by = Some(by);
        }
        self
    }

    /// The same error with the end of the dead task's stderr (a pool with
    /// captured output keeps a copy of each worker's stderr memfd).
    pub(crate) fn with_output_tail(mut self, stderr: Option<&std::os::fd::OwnedFd>) -> Error {
        if let (Error::WorkerDied { output_tail, .. }, Some(fd)) = (&mut self, stderr) {
            *output_tail = crate::output::tail(fd).map(String::into_boxed_str);
        }
        self
    }

    /// The same error, naming the task it happened to.
    pub(crate) fn in_task(mut self, id: u64) -> Error {
        if let Error::WorkerDied { task, .. } = &mut self {
            *task = Some(id);
        }
        self
    }

    /// An `Io` error that says which operation failed, keeping the kind.
    pub(crate) fn os(what: &str, err: impl Into<io::Error>) -> Error {
        let err: io::Error = err.into();
        let hint = match err.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => {
                "; the open-file limit (RLIMIT_NOFILE, `ulimit -n`) is reached: raise it or run fewer units at once"
            }
            Some(libc::EAGAIN) | Some(libc::ENOMEM) => {
                "; the process or memory limit is reached: run fewer units at once"
            }
            _ => "",
        };
        Error::Io(io::Error::new(err.kind(), format!("{what}: {err}{hint}")))
    }

    pub(crate) fn codec(what: &str, err: impl fmt::Display) -> Error {
        Error::Codec(format!("{what}: {err}"))
    }

    /// This error as the failure of map item `index` (a death names it).
    pub(crate) fn for_item(mut self, index: usize) -> Error {
        if let Error::WorkerDied { item, .. } = &mut self {
            *item = Some(index as u64);
        }
        self
    }

    /// A copy of this error, for reporting one failure to several waiters
    /// (every item of a failed map batch).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Panicked { message } => Error::Panicked { message: message.clone() },
            Error::WorkerDied {
                signal,
                code,
                pid,
                task,
                item,
                memory_limit,
                output_tail,
                resident_at_kill,
                memory_limit_by,
                node,
            } => Error::WorkerDied {
                node: node.clone(),
                resident_at_kill: *resident_at_kill,
                memory_limit_by: *memory_limit_by,
                signal: *signal,
                code: *code,
                pid: *pid,
                task: *task,
                item: *item,
                memory_limit: *memory_limit,
                output_tail: output_tail.clone(),
            },
            Error::TimedOut => Error::TimedOut,
            Error::Cancelled => Error::Cancelled,
            Error::Codec(m) => Error::Codec(m.clone()),
            Error::Closed => Error::Closed,
            Error::Unsupported(w) => Error::Unsupported(w),
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::TooLarge { size, max } => Error::TooLarge { size: *size, max: *max },
            Error::Broken(m) => Error::Broken(m.clone()),
            Error::NodeLost { node } => Error::NodeLost { node: node.clone() },
            Error::Refused { node, reason } => Error::Refused { node: node.clone(), reason: reason.clone() },
        }
    }

    /// The bare detail of a `Codec` error, for wrapping in another message.
    pub(crate) fn codec_detail(self) -> String {
        match self {
            Error::Codec(detail) => detail,
            other => other.to_string(),
        }
    }
}

/// The conventional name of a signal number, such as `SIGKILL`.
///
/// ```
/// assert_eq!(tandem::signal_name(9), "SIGKILL");
/// ```
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "an unnamed signal",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Panicked { message } => write!(
                f,
                "the task panicked: {message} (its unit survives; fix the panic or return an error from the task instead)"
            ),
            Error::WorkerDied {
                signal,
                code,
                pid,
                task,
                item,
                memory_limit,
                output_tail,
                resident_at_kill,
                memory_limit_by,
                node,
            } => {
                match node {
                    Some(node) => write!(f, "worker pid {pid} on node {node} ")?,
                    None => write!(f, "worker pid {pid} ")?,
                }
                match (signal, code) {
                    (Some(sig), _) => write!(f, "was killed by signal {sig} ({})", signal_name(*sig))?,
                    (None, Some(code)) => write!(f, "exited with code {code}")?,
                    (None, None) => write!(f, "vanished")?,
                }
                match (item, task) {
                    (Some(i), Some(t)) => write!(f, " while running map item {i} (in task {t})")?,
                    (Some(i), None) => write!(f, " while running map item {i}")?,
                    (None, Some(t)) => write!(f, " while running task {t}")?,
                    (None, None) => write!(f, " while running its task")?,
                }
                if let (Some(limit), Some(by)) = (memory_limit, memory_limit_by) {
                    match (by, resident_at_kill) {
                        (MemoryLimitBy::Sampling, Some(seen)) => write!(
                            f,
                            "; the pool killed it for using {seen} bytes of resident memory, over its memory limit of {limit} bytes (worker_memory_limit, enforced by {by})"
                        )?,
                        (_, Some(peak)) => write!(
                            f,
                            "; the kernel's OOM killer killed it for its memory limit of {limit} bytes (worker_memory_limit, enforced by {by}; peak {peak} bytes charged to its cgroup)"
                        )?,
                        (_, None) => write!(
                            f,
                            "; it was killed for its memory limit of {limit} bytes (worker_memory_limit, enforced by {by})"
                        )?,
                    }
                    write!(f, ": raise the limit or make the task use less memory")?;
                } else if let Some(limit) = memory_limit {
                    write!(
                        f,
                        "; it had a memory limit of {limit} bytes (enforced by {}), which the task probably exceeded: raise the limit or make the task use less memory",
                        crate::answer::ADDRESS_SPACE_CAP
                    )?;
                } else {
                    write!(
                        f,
                        "; the task's work is lost: look for a crash, abort or exit in the task, or run it again (a pool's retries(n) does this)"
                    )?;
                }
                match output_tail {
                    Some(tail) => write!(f, "; the last lines it wrote to stderr:\n{tail}"),
                    None => Ok(()),
                }
            }
            Error::TimedOut => write!(
                f,
                "the task ran past its time limit and was stopped (a process is killed; a thread is left to finish on its own): raise the limit or split the task"
            ),
            Error::Cancelled => write!(f, "the task was cancelled before it finished"),
            Error::Codec(msg) => write!(
                f,
                "an argument or result could not be carried between units: {msg}; check that the type's Serialize and Deserialize agree, or use thread mode, which does not serialize"
            ),
            Error::Closed => write!(f, "the pool is shut down: submit to a pool that is still running"),
            Error::Unsupported(what) => write!(f, "not supported: {what}"),
            Error::Io(err) => write!(f, "an OS call failed: {err}"),
            Error::TooLarge { size, max } => write!(
                f,
                "a message of {size} bytes is over the limit of {max} bytes and was not sent: raise the limit where the channel or queue is made, or send less per message"
            ),
            Error::Broken(what) => write!(f, "{what}"),
            Error::NodeLost { node } => write!(
                f,
                "the task's node {node} was lost (its agent died, its machine went away, or the broker lost sight of it past its lease) more often than the pool's node_losses allows: check that agents are running and can reach the broker, or raise node_losses or the lease"
            ),
            Error::Refused { node, reason } => write!(
                f,
                "agent {node} refused the task ({reason}): give the driver and every agent the same key, and run the same build of the program on every machine"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::Io(err)
    }
}
