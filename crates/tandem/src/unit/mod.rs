//! One-off units: a task on its own thread or its own process.

pub(crate) mod process;
pub(crate) mod thread;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::launch::WorkerConfig;
// Defined beside the start methods (`launch`), public here.
pub use crate::launch::StartMethod;

/// Where a unit of work runs.
///
/// ```
/// use tandem::Mode;
/// assert_eq!(Mode::default(), Mode::Thread);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// An OS thread in this process: shares memory, moves values without
    /// serializing them, dies with the process.
    #[default]
    Thread,
    /// An OS process: isolated, values serialized, a crash harms only it.
    Process,
}

/// Which OS unit ran (or runs) a task.
///
/// ```
/// let h = tandem::thread::spawn((), |()| 1u8).unwrap();
/// assert!(matches!(h.id(), tandem::UnitId::Thread(_)));
/// h.join().unwrap();
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnitId {
    /// A thread of this process.
    Thread(std::thread::ThreadId),
    /// A process, by pid.
    Process(u32),
}

/// A running task on a thread or a process; join it for its result.
///
/// Dropping a handle without joining detaches the unit, as std does for
/// threads: it runs to completion and a process is reaped in the background,
/// so no zombie is left. A detached process still dies with its parent.
///
/// ```
/// let h = tandem::spawn(tandem::Mode::Thread, 20u32, |x| x + 1).unwrap();
/// assert_eq!(h.join().unwrap(), 21);
/// ```
pub struct JoinHandle<R> {
    inner: Inner<R>,
}

enum Inner<R> {
    Thread(thread::ThreadUnit<R>),
    Process(process::ProcessUnit<R>),
    /// A process unit that was polled: the watcher thread finishes it.
    Watched(process::WatchedHandle<R>),
    /// Only while a poll moves a process unit to the watcher.
    Moving,
}

impl<R: DeserializeOwned + Send + 'static> JoinHandle<R> {
    /// Wait for the task and return its result, blocking this thread.
    ///
    /// Inside async code this blocks the executor's thread: `.await` the
    /// handle instead (it is a [`Future`] with the same output).
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// tandem::init();
    /// let h = tandem::process::spawn(21u64, |x| x * 2).unwrap();
    /// assert_eq!(h.await.unwrap(), 42);
    /// # });
    /// ```
    ///
    /// A panic comes back as [`Error::Panicked`]; a process that died as
    /// [`Error::WorkerDied`] with its signal or exit code.
    ///
    /// ```
    /// use tandem::{Error, Mode};
    /// tandem::init();
    /// let h = tandem::spawn(Mode::Process, 4u32, |x| x * x).unwrap();
    /// assert_eq!(h.join().unwrap(), 16);
    /// let h = tandem::spawn(Mode::Thread, (), |()| -> u8 { panic!("boom") }).unwrap();
    /// assert!(matches!(h.join(), Err(Error::Panicked { .. })));
    /// ```
    pub fn join(self) -> Result<R, Error> {
        match self.inner {
            Inner::Thread(t) => t.join(),
            Inner::Process(p) => p.join(None),
            Inner::Watched(w) => w.watched.outcome.wait(),
            Inner::Moving => unreachable!("a poll never leaves a handle moving"),
        }
    }

    /// Wait at most `limit`. On time-out a process is killed (and reaped);
    /// a thread cannot be killed, so it is left to finish detached. Either
    /// way the result is `Err(Error::TimedOut)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tandem::{Error, Mode};
    /// tandem::init();
    /// let slow = tandem::spawn(Mode::Process, (), |()| std::thread::sleep(Duration::from_secs(60))).unwrap();
    /// assert!(matches!(slow.join_timeout(Duration::from_millis(50)), Err(Error::TimedOut)));
    /// let quick = tandem::spawn(Mode::Process, 1u8, |x| x + 1).unwrap();
    /// assert_eq!(quick.join_timeout(Duration::from_secs(30)).unwrap(), 2);
    /// ```
    pub fn join_timeout(self, limit: Duration) -> Result<R, Error> {
        match self.inner {
            Inner::Thread(t) => t.join_timeout(limit),
            Inner::Process(p) => p.join(Some(limit)),
            Inner::Watched(w) => match w.watched.outcome.wait_until(std::time::Instant::now() + limit) {
                Some(result) => result,
                None => {
                    let _ = w.kill();
                    let _ = w.watched.outcome.wait();
                    Err(Error::TimedOut)
                }
            },
            Inner::Moving => unreachable!("a poll never leaves a handle moving"),
        }
    }

    /// Kill the unit now: SIGKILL for a process. A thread cannot be killed
    /// safely, so for one this returns `Err(Error::Unsupported)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tandem::{Error, Mode};
    /// tandem::init();
    /// let h = tandem::spawn(Mode::Process, (), |()| std::thread::sleep(Duration::from_secs(60))).unwrap();
    /// h.kill().unwrap();
    /// assert!(matches!(h.join(), Err(Error::WorkerDied { signal: Some(9), .. })));
    /// let t = tandem::spawn(Mode::Thread, (), |()| ()).unwrap();
    /// assert!(matches!(t.kill(), Err(Error::Unsupported(_))));
    /// ```
    pub fn kill(&self) -> Result<(), Error> {
        match &self.inner {
            Inner::Thread(_) => Err(Error::Unsupported("killing a thread (only a process can be killed)")),
            Inner::Process(p) => p.kill(),
            Inner::Watched(w) => w.kill(),
            Inner::Moving => Ok(()),
        }
    }

    /// Whether the task has finished (its result is ready or its unit died).
    /// Never blocks.
    ///
    /// ```
    /// use tandem::Mode;
    /// tandem::init();
    /// let h = tandem::spawn(Mode::Process, 7u8, |x| x).unwrap();
    /// while !h.is_finished() {
    ///     std::thread::yield_now();
    /// }
    /// assert_eq!(h.join().unwrap(), 7); // ready: does not wait
    /// ```
    pub fn is_finished(&self) -> bool {
        match &self.inner {
            Inner::Thread(t) => t.is_finished(),
            Inner::Process(p) => p.is_finished(),
            Inner::Watched(w) => w.watched.outcome.is_filled(),
            Inner::Moving => false,
        }
    }

    /// The thread or process running the task.
    ///
    /// ```
    /// use tandem::{Mode, UnitId};
    /// tandem::init();
    /// let h = tandem::spawn(Mode::Process, (), |()| std::process::id()).unwrap();
    /// let UnitId::Process(pid) = h.id() else { unreachable!() };
    /// assert_eq!(h.join().unwrap(), pid);
    /// ```
    pub fn id(&self) -> UnitId {
        match &self.inner {
            Inner::Thread(t) => UnitId::Thread(t.id()),
            Inner::Process(p) => UnitId::Process(p.pid()),
            Inner::Watched(w) => UnitId::Process(w.pid()),
            Inner::Moving => UnitId::Process(0),
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> JoinHandle<R> {
    /// Make dropping this handle [`kill`](Self::kill) its process: for an
    /// awaited handle whose future is dropped unfinished (a lost `select!`
    /// branch, a `tokio::time::timeout` that expired). Without it a dropped
    /// handle detaches its unit, which runs to the end. A thread cannot be
    /// killed, so for a thread unit this changes nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// tandem::init();
    /// let h = tandem::process::spawn((), |()| std::thread::sleep(Duration::from_secs(60))).unwrap();
    /// let pid = h.id();
    /// drop(h.kill_on_drop()); // SIGKILLed now; the reaper collects it
    /// # let _ = pid;
    /// ```
    pub fn kill_on_drop(mut self) -> JoinHandle<R> {
        match &mut self.inner {
            Inner::Process(p) => p.kill_on_drop = true,
            Inner::Watched(w) => w.set_kill_on_drop(),
            Inner::Thread(_) | Inner::Moving => {}
        }
        self
    }
}

/// Awaiting a unit never blocks the executor and starts no thread per
/// waiter: a thread unit's thread fills its result and wakes the waker; an
/// awaited process unit is watched, with every other awaited one, by one
/// background thread in `epoll` on its socket and pidfd, which reads the
/// answer (or judges the death), reaps the process and wakes the waker.
///
/// ```
/// # futures::executor::block_on(async {
/// tandem::init();
/// let h = tandem::process::spawn((), |()| -> u8 { std::process::abort() }).unwrap();
/// assert!(matches!(h.await, Err(tandem::Error::WorkerDied { signal: Some(6), .. })));
/// let t = tandem::thread::spawn(4u8, |x| x * x).unwrap();
/// assert_eq!(t.await.unwrap(), 16);
/// # });
/// ```
impl<R: DeserializeOwned + Send + 'static> Future for JoinHandle<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if matches!(this.inner, Inner::Process(_)) {
            let Inner::Process(unit) = std::mem::replace(&mut this.inner, Inner::Moving) else {
                unreachable!("checked above")
            };
            this.inner = Inner::Watched(unit.watch());
        }
        match &this.inner {
            Inner::Thread(t) => t.poll(cx),
            Inner::Watched(w) => w.watched.outcome.poll(cx),
            Inner::Process(_) | Inner::Moving => unreachable!("moved to the watcher above"),
        }
    }
}

impl<R> std::fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Thread(t) => write!(f, "JoinHandle(thread {:?})", t.id()),
            Inner::Process(p) => write!(f, "JoinHandle(process {})", p.pid()),
            Inner::Watched(w) => write!(f, "JoinHandle(process {})", w.pid()),
            Inner::Moving => write!(f, "JoinHandle(moving)"),
        }
    }
}

/// Run `f(arg)` on a new thread or a new process.
///
/// The task is a plain function or a closure that captures nothing. In
/// process mode the argument and result are serialized; in thread mode they
/// are moved.
///
/// ```
/// use tandem::Mode;
/// tandem::init();
/// let h = tandem::spawn(Mode::Thread, vec![1u64, 2, 3], |v| v.iter().sum::<u64>()).unwrap();
/// assert_eq!(h.join().unwrap(), 6);
/// ```
pub fn spawn<A, R>(mode: Mode, arg: A, f: fn(A) -> R) -> Result<JoinHandle<R>, Error>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    match mode {
        Mode::Thread => JoinHandle::thread(arg, f),
        Mode::Process => JoinHandle::process(StartMethod::default(), WorkerConfig::default(), None, arg, f),
    }
}

impl<R: Serialize + DeserializeOwned + Send + 'static> JoinHandle<R> {
    /// Run `f(arg)` on a new thread (`tandem::thread::spawn`).
    pub(crate) fn thread<A>(arg: A, f: fn(A) -> R) -> Result<Self, Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        Ok(JoinHandle { inner: Inner::Thread(thread::ThreadUnit::start(arg, f)?) })
    }

    /// Start a worker by `method` with `config` and run `f(arg)` in it
    /// (`tandem::process::Builder::spawn`).
    pub(crate) fn process<A>(
        method: StartMethod,
        config: WorkerConfig,
        sandbox: Option<&crate::sandbox::Sandbox>,
        arg: A,
        f: fn(A) -> R,
    ) -> Result<Self, Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let unit = process::ProcessUnit::launch(method, config, sandbox, &arg, f)?;
        Ok(JoinHandle { inner: Inner::Process(unit) })
    }
}
