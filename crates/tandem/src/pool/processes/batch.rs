//! A map batch in a process worker, as the loop drives it: send it, gather
//! results as the worker publishes them, keep the running item's deadline,
//! pass on a stop request, and when the worker dies or is killed, judge
//! from its board which item was running (see `crate::batch`).
//!
//! The loop never re-runs a batch itself: it resolves the batch with what
//! happened to each item, and `map` re-sends the items that never started
//! and counts retries per item.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::event_loop::{Dying, Loop, Work};
use super::{Job, Live};
use crate::answer::{self, Answer};
use crate::batch::{self, Collector};
use crate::pool::batch::{BatchEnd, RawBatch};
use crate::pool::handle::Place;
use crate::pool::job::ProcessWork;
use crate::sys::board::Board;
use crate::wire::{self, FrameReader, Kind};
use crate::{Error, task};

/// A batch the worker runs, and the results it has published so far.
pub(super) struct Run {
    job: Job,
    results: Collector,
    stop_sent: bool,
}

/// Why a batch's worker is gone before the batch answered.
pub(super) enum Cause {
    Died,
    TimedOut,
    Cancelled,
    Garbage(String),
}

/// Send the batch `job` to the slot's idle worker.
pub(super) fn start(lp: &mut Loop<'_>, slot: usize, job: Job) {
    let live = lp.live(slot);
    if live.board.is_none() {
        match give_board(live) {
            Ok(board) => live.board = Some(board),
            Err(BoardError::Os(e)) => {
                job.control.set(Place::Finished);
                job.completion.resolve_err(Error::os("making a map batch's shared board", e));
                return lp.become_idle(slot);
            }
            Err(BoardError::Gone) => return lp.undelivered(slot, job),
        }
    }
    let ProcessWork { header, bytes, .. } = &job.work;
    let borrowed = job.work.descriptors();
    if wire::send(live.peer.socket.as_fd(), Kind::Batch, &[header, bytes], &borrowed).is_err() {
        return lp.undelivered(slot, job);
    }
    let items = job.batch.as_ref().expect("a batch job").items;
    let results = Collector::new(job.id, items);
    lp.set_work(slot, Work::Batch(Box::new(Run { job, results, stop_sent: false })));
    lp.arm(slot);
}

impl Run {
    /// When the running item's time is up (none without a time limit).
    pub(super) fn deadline(&self, live: Option<&Live>, limit: Option<Duration>) -> Option<Instant> {
        let board = live?.board.as_ref()?;
        Some(item_deadline(board, self.job.id, limit?))
    }
}

fn take_run(lp: &mut Loop<'_>, slot: usize) -> Box<Run> {
    match lp.set_work(slot, Work::Idle) {
        Work::Batch(run) => run,
        _ => unreachable!("the slot runs a batch"),
    }
}

/// The worker published something on its socket.
pub(super) fn answered(lp: &mut Loop<'_>, slot: usize, answer: Answer) {
    let mut run = take_run(lp, slot);
    match answer {
        Answer::Partial(frame) => match run.results.partial(frame) {
            Ok(()) => drop(lp.set_work(slot, Work::Batch(run))),
            Err(why) => lp.dying(slot, Dying::Batch(run, Cause::Garbage(why))),
        },
        Answer::Done(frame) => {
            let Run { job, mut results, .. } = *run;
            match read_done(&mut results, lp.live(slot), &job, frame) {
                Ok((done, end)) => {
                    lp.shared.slot(slot).tasks_done += 1;
                    let most = lp.shared.config.max_tasks_per_worker;
                    let live = lp.live(slot);
                    live.tasks += 1;
                    let recycle = most.is_some_and(|n| live.tasks >= n);
                    resolve(job, RawBatch { done, chunks: results.into_chunks(), end, argument: None });
                    if recycle {
                        lp.replace(slot, true);
                    } else {
                        lp.become_idle(slot);
                    }
                }
                Err(why) => {
                    let run = Box::new(Run { job, results, stop_sent: true });
                    lp.dying(slot, Dying::Batch(run, Cause::Garbage(why)));
                }
            }
        }
        Answer::Died => lp.dying(slot, Dying::Batch(run, Cause::Died)),
        Answer::Garbage(why) => lp.dying(slot, Dying::Batch(run, Cause::Garbage(why))),
        Answer::TimedOut => drop(lp.set_work(slot, Work::Batch(run))),
    }
}

/// A cancel, the pool's end, or the map's stop request.
pub(super) fn look_at(lp: &mut Loop<'_>, slot: usize) {
    let mut run = take_run(lp, slot);
    if lp.shared.lock().terminating || run.job.control.cancelled.load(Ordering::SeqCst) {
        return lp.dying(slot, Dying::Batch(run, Cause::Cancelled));
    }
    let stop = run.job.batch.as_ref().is_some_and(|b| b.stop.load(Ordering::SeqCst));
    if stop
        && !run.stop_sent
        && let Some(board) = &lp.live(slot).board
    {
        batch::request_stop(board, run.job.id);
        run.stop_sent = true;
    }
    lp.set_work(slot, Work::Batch(run));
}

/// The running item's deadline passed (the loop checked).
pub(super) fn expire(lp: &mut Loop<'_>, slot: usize) {
    let run = take_run(lp, slot);
    lp.dying(slot, Dying::Batch(run, Cause::TimedOut));
}

/// The worker has exited (`live` is no longer the slot's): take what it
/// published (its socket, read on from where `reader` stopped, then its
/// board) and resolve the batch.
pub(super) fn settle(lp: &Loop<'_>, live: &mut Live, reader: &mut FrameReader, run: Run, cause: Cause) {
    let Run { job, mut results, .. } = run;
    let mut done_frame = None;
    while let Ok(Some(frame)) = reader.read_ready(live.peer.socket.as_fd(), lp.max) {
        match frame.kind {
            Kind::Partial => {
                if results.partial(frame).is_err() {
                    break;
                }
            }
            Kind::Done => {
                done_frame = Some(frame);
                break;
            }
            _ => break,
        }
    }
    // The batch answered whole before its worker died: it is complete.
    if let (Cause::Died, Some(frame)) = (&cause, done_frame)
        && let Ok((done, end)) = read_done(&mut results, live, &job, frame)
    {
        return resolve(job, RawBatch { done, chunks: results.into_chunks(), end, argument: None });
    }
    let running = live.board.as_ref().and_then(|b| results.read_board(b).ok().flatten());
    let end = match cause {
        Cause::Died => {
            let err = answer::died(&mut live.child, lp.asked(&job))
                .with_output_tail(live.stderr.as_ref())
                .over_memory(super::memory::kill_of(live), lp.shared.config.resident_limit);
            running.map_or(BatchEnd::Unstarted, |_| BatchEnd::Failed(err))
        }
        Cause::TimedOut => running.map_or(BatchEnd::Unstarted, |_| BatchEnd::Failed(Error::TimedOut)),
        Cause::Cancelled => BatchEnd::RestFail(Error::Cancelled),
        Cause::Garbage(why) => BatchEnd::RestFail(Error::Codec(format!(
            "the worker's answer to map batch {} could not be read ({why}); the worker was replaced",
            job.id
        ))),
    };
    resolve(job, RawBatch { done: results.done(), chunks: results.into_chunks(), end, argument: None });
}

/// The pool terminates under a running batch (its worker is dead now).
pub(super) fn cancel(lp: &Loop<'_>, live: Option<&mut Live>, mut reader: FrameReader, run: Run) {
    match live {
        Some(live) => settle(lp, live, &mut reader, run, Cause::Cancelled),
        None => {
            let Run { job, results, .. } = run;
            let raw = RawBatch {
                done: results.done(),
                chunks: results.into_chunks(),
                end: BatchEnd::RestFail(Error::Cancelled),
                argument: None,
            };
            resolve(job, raw);
        }
    }
}

/// Resolve the batch; a batch that did not complete gives its argument
/// back, for `map` to cut and send again.
fn resolve(job: Job, raw: RawBatch) {
    job.control.set(Place::Finished);
    let raw = match raw.end {
        BatchEnd::Complete { .. } => raw,
        _ => RawBatch { argument: give_back(job.work), ..raw },
    };
    job.completion.resolve_batch(raw);
}

enum BoardError {
    Os(std::io::Error),
    Gone,
}

/// Make a board and hand it to the worker (once per worker).
fn give_board(worker: &Live) -> Result<Board, BoardError> {
    let board = batch::new_board().map_err(BoardError::Os)?;
    wire::send(worker.peer.socket.as_fd(), Kind::Board, &[], &[board.fd()]).map_err(|_| BoardError::Gone)?;
    Ok(board)
}

/// When the running item's time is up: never before it started plus the
/// limit. While no item runs (between items, before the first) there is
/// nothing to time out: look again a limit from now.
fn item_deadline(board: &Board, id: u64, limit: Duration) -> Instant {
    let now = Instant::now();
    match batch::running_item(board, id) {
        Some((_, since)) => {
            let ends = since.saturating_add(limit.as_nanos() as u64);
            now + Duration::from_nanos(ends.saturating_sub(batch::now_ns()))
        }
        None => now + limit,
    }
}

/// The batch's Done frame, with what the board holds beyond the frames:
/// how many items are done and how the batch ended.
fn read_done(
    results: &mut Collector,
    live: &Live,
    job: &Job,
    frame: wire::Frame,
) -> Result<(u32, BatchEnd), String> {
    if task::done_id(&frame) != Some(job.id) {
        return Err(format!("an answer to another task than batch {}", job.id));
    }
    let items = job.batch.as_ref().expect("a batch job").items;
    let body = frame.payload.get(9..).unwrap_or_default();
    match frame.payload.get(8) {
        Some(&0) => {}
        // The batch could not run at all (its function is not in the
        // worker's executable): every item fails with why.
        Some(&2) => {
            let why = String::from_utf8_lossy(body).into_owned();
            return Ok((results.done(), BatchEnd::RestFail(Error::Codec(why))));
        }
        _ => return Err("a batch answer with an unknown status".into()),
    }
    let (nanos, done, stopped) = batch::parse_done_body(body).ok_or("a batch answer too short to read")?;
    let board = live.board.as_ref().ok_or("a batch answer from a worker without a board")?;
    results.read_board(board)?;
    if results.done() != done || (done < items) != stopped {
        return Err(format!(
            "the worker says {done} of {items} items are done but published {}",
            results.done()
        ));
    }
    Ok((done, if stopped { BatchEnd::Unstarted } else { BatchEnd::Complete { nanos } }))
}

/// A batch's argument, for `map` to cut and send again.
fn give_back(work: ProcessWork) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    Some((work.bytes, work.fds))
}
