//! Process mode: one driver thread per slot owns one worker process.
//!
//! A driver sends its worker one task at a time and waits, in one `poll`,
//! for the answer on the socket, the worker's death on its pidfd, a cancel
//! or terminate on its eventfd, and the task's deadline. Whatever happens,
//! the task resolves once and a dead, killed or retired worker is replaced
//! before the next task.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

use super::handle::Place;
use super::{Shared, Work};
use crate::child::ChildProcess;
use crate::launch::{self, Worker};
use crate::wire::{self, Frame, Kind, RecvError};
use crate::worker::WorkerConfig;
use crate::{Error, UnitId};

pub(crate) fn new_wake() -> Result<OwnedFd, Error> {
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| Error::os("creating a pool driver's eventfd", e))
}

/// Wake a driver (cancel or terminate).
pub(crate) fn wake(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

pub(crate) fn start(shared: &Arc<Shared>) -> Result<(), Error> {
    for slot in 0..shared.config.workers {
        let pool = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tandem-pool-driver-{slot}"))
            .stack_size(256 * 1024)
            .spawn(move || drive(&pool, slot))
            .map_err(|e| Error::os("starting a pool driver thread", e))?;
        shared.lock().joinable.push((slot, handle));
    }
    Ok(())
}

/// A live worker process and what it has done.
struct Live {
    child: ChildProcess,
    socket: OwnedFd,
    tasks: u64,
}

enum Answer {
    Done(Frame),
    Died,
    TimedOut,
    Woken,
    Garbage(String),
}

fn worker_config(shared: &Shared) -> WorkerConfig {
    WorkerConfig {
        memory_limit: shared.config.memory_limit,
        max_message: shared.config.max_message,
        no_new_privs: shared.config.no_new_privs,
    }
}

fn drive(shared: &Arc<Shared>, slot: usize) {
    let wake = shared.wakes[slot].clone();
    // Start the worker now, as Python's pools do, so the first task does not
    // pay for it; if that fails, the first task tries again and reports it.
    let mut live: Option<Live> = start_worker(shared, slot).ok();
    while let Some(mut job) = shared.next_job(slot, None) {
        // A worker killed while idle is replaced before it can fail a task.
        if live.as_ref().is_some_and(|l| l.child.has_exited()) {
            retire(live.take(), false);
            shared.slot(slot).restarts += 1;
        }
        if live.is_none() {
            match start_worker(shared, slot) {
                Ok(new) => live = Some(new),
                Err(e) => {
                    job.completion.resolve_err(e);
                    continue;
                }
            }
        }
        let worker = live.as_mut().expect("started above");
        let Work::Process { header, bytes, fds } = &job.work else {
            unreachable!("process pools queue process work")
        };
        job.control.set(Place::InProcess(wake.clone()));
        if job.control.cancelled.load(Ordering::SeqCst) {
            job.control.set(Place::Finished);
            continue;
        }
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let sent = wire::send(worker.socket.as_fd(), Kind::Task, &[header, bytes], &borrowed);
        let deadline = shared.config.task_timeout.map(|t| Instant::now() + t);
        let answer = match sent {
            Ok(()) => await_answer(worker, &wake, deadline, shared.config.max_message_or_default()),
            Err(_) => Answer::Died,
        };
        let answer = match answer {
            Answer::Woken if !job.control.cancelled.load(Ordering::SeqCst) && !shared.lock().terminating => {
                // A stale wake-up: keep waiting for this task.
                let worker = live.as_mut().expect("alive");
                loop {
                    match await_answer(worker, &wake, deadline, shared.config.max_message_or_default()) {
                        Answer::Woken
                            if !job.control.cancelled.load(Ordering::SeqCst)
                                && !shared.lock().terminating => {}
                        other => break other,
                    }
                }
            }
            other => other,
        };
        job.control.set(Place::Finished);
        match answer {
            Answer::Done(frame) if crate::task::done_id(&frame) == Some(job.id) => {
                shared.slot(slot).tasks_done += 1;
                job.completion.resolve_frame(frame);
                let worker = live.as_mut().expect("alive");
                worker.tasks += 1;
                if shared.config.max_tasks_per_worker.is_some_and(|n| worker.tasks >= n) {
                    retire(live.take(), true);
                    shared.slot(slot).restarts += 1;
                }
            }
            Answer::Done(_) => {
                retire(live.take(), false);
                shared.slot(slot).restarts += 1;
                job.completion.resolve_err(Error::Codec(format!(
                    "the worker answered a different task than task {}: its protocol state is broken, so it was replaced",
                    job.id
                )));
            }
            Answer::Garbage(why) => {
                retire(live.take(), false);
                shared.slot(slot).restarts += 1;
                job.completion.resolve_err(Error::Codec(format!(
                    "the worker's answer to task {} could not be read ({why}); the worker was replaced",
                    job.id
                )));
            }
            Answer::Died => {
                let mut dead = live.take().expect("alive");
                let status = dead
                    .child
                    .wait_or_kill(crate::child::EXIT_GRACE)
                    .unwrap_or(crate::child::ExitStatus { signal: None, code: None });
                let mut err = Error::died(dead.child.pid(), status.signal, status.code).in_task(job.id);
                if let Error::WorkerDied { memory_limit, .. } = &mut err {
                    if shared.config.memory_limit > 0 {
                        *memory_limit = Some(shared.config.memory_limit);
                    }
                }
                shared.slot(slot).restarts += 1;
                if job.attempts < shared.config.retries && !shared.lock().terminating {
                    job.attempts += 1;
                    job.control.set(Place::Queued);
                    shared.requeue(job);
                } else {
                    job.completion.resolve_err(err);
                }
            }
            Answer::TimedOut => {
                retire(live.take(), false);
                shared.slot(slot).restarts += 1;
                job.completion.resolve_err(Error::TimedOut);
            }
            Answer::Woken => {
                // Cancelled (already resolved by cancel()) or terminating.
                retire(live.take(), false);
                shared.slot(slot).restarts += 1;
                job.completion.resolve_err(Error::Cancelled);
                if shared.lock().terminating {
                    break;
                }
            }
        }
    }
    let terminating = shared.lock().terminating;
    retire(live, !terminating);
}

/// Stop a worker: politely (close its socket; it exits after its loop) or
/// by SIGKILL. Either way it is reaped (or handed to its reaper).
fn retire(live: Option<Live>, polite: bool) {
    let Some(Live { child, socket, .. }) = live else { return };
    if !polite {
        let _ = child.kill();
    }
    drop(socket);
    let mut child = child;
    let _ = child.wait();
}

fn start_worker(shared: &Shared, slot: usize) -> Result<Live, Error> {
    let Worker { child, socket } = launch::start(shared.config.method, worker_config(shared))?;
    {
        let mut stats = shared.slot(slot);
        stats.unit = Some(UnitId::Process(child.pid()));
    }
    let live = Live { child, socket, tasks: 0 };
    if let Some(init) = shared.config.initializer {
        let header =
            crate::task::header_for(0, crate::task::init_trampoline, crate::sys::code::offset_of(init));
        let unit = crate::codec::encode(&()).expect("() encodes");
        let sent = wire::send(live.socket.as_fd(), Kind::Task, &[&header, &unit.bytes], &[]);
        let failure = match sent.map(|()| wire::recv(live.socket.as_fd(), 1 << 20, None)) {
            Ok(Ok(frame)) => crate::task::decode_done::<()>(frame).err(),
            Ok(Err(e)) => {
                Some(Error::Panicked { message: format!("the worker died running the initializer: {e}") })
            }
            Err(e) => Some(Error::os("sending the initializer", e)),
        };
        if let Some(e) = failure {
            retire(Some(live), false);
            return Err(Error::Panicked {
                message: format!("the pool's initializer failed in a new worker: {e}"),
            });
        }
    }
    Ok(live)
}

fn await_answer(live: &mut Live, wake: &OwnedFd, deadline: Option<Instant>, max: u64) -> Answer {
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec::try_from(left).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
        });
        if timeout.is_some_and(|t| t.tv_sec == 0 && t.tv_nsec == 0) {
            return Answer::TimedOut;
        }
        let (socket_ready, died, woken) = {
            let mut fds = [
                PollFd::new(&live.socket, PollFlags::IN),
                PollFd::new(live.child.pidfd(), PollFlags::IN),
                PollFd::new(wake, PollFlags::IN),
            ];
            if wire::spin_until_ready(&mut fds) {
                // Ready within the spin: no sleep, no wake-up.
            } else {
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(0) => return Answer::TimedOut,
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Answer::Garbage(format!("poll failed: {e}")),
                }
            }
            (!fds[0].revents().is_empty(), !fds[1].revents().is_empty(), !fds[2].revents().is_empty())
        };
        if woken {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(wake, &mut buf);
            return Answer::Woken;
        }
        if socket_ready {
            return match wire::recv(live.socket.as_fd(), max, deadline) {
                Ok(frame) if frame.kind == Kind::Done => Answer::Done(frame),
                Ok(frame) => Answer::Garbage(format!("an unexpected {:?} message", frame.kind)),
                Err(RecvError::Closed) | Err(RecvError::Truncated(_)) => Answer::Died,
                Err(RecvError::TimedOut) => Answer::TimedOut,
                Err(RecvError::Malformed(why)) => Answer::Garbage(why),
                Err(RecvError::Io(e)) => Answer::Garbage(e.to_string()),
            };
        }
        if died {
            return Answer::Died;
        }
    }
}
