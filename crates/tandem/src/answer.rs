//! A worker's answer, and what it means for the task that asked: the one
//! place where what came back from a worker (a frame, a death, a time-out,
//! garbage) becomes a task's result or [`Error`], for the pool and for
//! one-off process units alike.

use crate::child::{self, ChildProcess};
use crate::wire::{Frame, Kind, RecvError};
use crate::{Error, task};

/// The next lent result is read only once its worker has exited (tests:
/// a worker gone before its parent read what it lent, without a race).
#[cfg(feature = "fuzzing")]
pub(crate) static READ_NEXT_LENT_AFTER_EXIT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// What a read from a worker's socket brought.
#[derive(Debug)]
pub(crate) enum Answer {
    /// A task's (or a batch's) outcome.
    Done(Frame),
    /// Some results of the running map batch.
    Partial(Frame),
    /// The connection ended: the worker died (or closed it, which is the
    /// same to us); its exit status tells how.
    Died,
    /// Nothing came in time.
    TimedOut,
    /// Something that is not the protocol.
    Garbage(String),
}

impl Answer {
    /// What a worker's slot holds, as an answer: `None` while it is empty
    /// or says the answer went on the socket.
    pub(crate) fn from_mailbox(held: crate::mailbox::Held) -> Option<Answer> {
        use crate::mailbox::Held;
        match held {
            Held::Empty | Held::OnSocket => None,
            Held::Answer(payload) => {
                Some(Answer::Done(Frame { kind: Kind::Done, payload, fds: Vec::new(), lent: None }))
            }
            Held::Bad(why) => Some(Answer::Garbage(why)),
        }
    }

    /// This answer with a lent result ([`codec::lend`](crate::codec::lend))
    /// read out of worker `pid`'s memory into its frame, at most `max`
    /// bytes, then released; any other answer as it is. A worker gone
    /// before its result was read is a death (judged as one: retries
    /// apply); a reference that does not hold is garbage.
    pub(crate) fn fetch_lent(self, pid: u32, pidfd: std::os::fd::BorrowedFd<'_>, max: u64) -> Answer {
        let Answer::Done(mut frame) = self else { return self };
        let reference = match task::done_lent(&frame, max) {
            None => return Answer::Done(frame),
            Some(Ok(reference)) => reference,
            Some(Err(e)) => return Answer::Garbage(e.to_string()),
        };
        #[cfg(feature = "fuzzing")]
        if READ_NEXT_LENT_AFTER_EXIT.swap(false, std::sync::atomic::Ordering::SeqCst) {
            crate::child::poll_ready(pidfd, Some(rustix::event::Timespec { tv_sec: 10, tv_nsec: 0 }));
        }
        let mut bytes = Vec::new();
        match crate::sys::remote::read_from(pid, pidfd, reference.addr, reference.len, &mut bytes) {
            Ok(()) => {
                crate::sys::remote::write_to(pid, pidfd, reference.flag, &crate::codec::lend::RELEASED);
                frame.lent = Some(bytes);
                Answer::Done(frame)
            }
            Err(crate::sys::remote::ReadError::Gone) => Answer::Died,
            Err(crate::sys::remote::ReadError::Failed(e)) => {
                Answer::Garbage(format!("its result could not be read out of its memory where it said ({e})"))
            }
        }
    }

    /// Classify the outcome of reading one frame.
    pub(crate) fn from_read(read: Result<Frame, RecvError>) -> Answer {
        match read {
            Ok(frame) if frame.kind == Kind::Done => Answer::Done(frame),
            Ok(frame) if frame.kind == Kind::Partial => Answer::Partial(frame),
            Ok(frame) => Answer::Garbage(format!("an unexpected {:?} message", frame.kind)),
            Err(RecvError::Closed) | Err(RecvError::Truncated(_)) => Answer::Died,
            Err(RecvError::TimedOut) => Answer::TimedOut,
            Err(RecvError::Malformed(why)) => Answer::Garbage(why),
            Err(RecvError::Io(e)) => Answer::Garbage(e.to_string()),
        }
    }
}

/// What enforces an address-space limit, for the error.
pub(crate) const ADDRESS_SPACE_CAP: &str =
    "an address-space cap, RLIMIT_AS: worker_address_space_limit or process::Builder::memory_limit";

/// Which task an error is about, for its message: none for a one-off unit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Asked {
    pub task: Option<u64>,
    /// The worker's address-space limit in bytes (0 for none), named by a
    /// death so a user can tell an out-of-memory kill.
    pub memory_limit: u64,
}

/// The task's result from a Done frame, at most `max` bytes decoded: the
/// frame must answer this task (a worker answering another is broken, and
/// the error says so).
pub(crate) fn result<R: serde::de::DeserializeOwned + 'static>(
    frame: Frame,
    asked: Asked,
    max: u64,
) -> Result<R, Error> {
    if let Some(id) = asked.task
        && task::done_id(&frame) != Some(id)
    {
        return Err(wrong_task(id));
    }
    task::decode_done_within(frame, max)
}

/// The error of a worker that answered another task than `id`.
pub(crate) fn wrong_task(id: u64) -> Error {
    Error::Codec(format!(
        "the worker answered a different task than task {id}: its protocol state is broken, so it was replaced"
    ))
}

/// The error of a worker whose answer made no sense (`why`).
pub(crate) fn garbage(why: &str, asked: Asked) -> Error {
    match asked.task {
        Some(id) => Error::Codec(format!(
            "the worker's answer to task {id} could not be read ({why}); the worker was replaced"
        )),
        None => Error::Codec(format!("the worker's answer could not be read: {why}")),
    }
}

/// The error of a worker that died under the task: how it ended (reaped
/// here; one that closed its connection but lingers gets [`child::EXIT_GRACE`],
/// then SIGKILL).
pub(crate) fn died(child: &mut ChildProcess, asked: Asked) -> Error {
    let status =
        child.wait_or_kill(child::EXIT_GRACE).unwrap_or(child::ExitStatus { signal: None, code: None });
    died_with(child.pid(), status, asked)
}

/// The error of a worker `pid` that died under the task with `status`.
pub(crate) fn died_with(pid: u32, status: child::ExitStatus, asked: Asked) -> Error {
    let mut err = Error::died(pid, status.signal, status.code);
    if let Some(id) = asked.task {
        err = err.in_task(id);
    }
    if let Error::WorkerDied { memory_limit, .. } = &mut err
        && asked.memory_limit > 0
    {
        *memory_limit = Some(asked.memory_limit);
    }
    err
}
