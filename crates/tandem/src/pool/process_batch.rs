//! A map batch in a process worker, driven by the slot's driver: send it,
//! gather results as the worker publishes them, keep the running item's
//! deadline, pass on a stop request, and when the worker dies or is killed,
//! judge from its board which item was running (see `crate::batch`).
//!
//! The driver never re-runs a batch itself: it resolves the batch with what
//! happened to each item, and `map` re-sends the items that never started
//! and counts retries per item.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::batch::{BatchEnd, RawBatch};
use super::handle::Place;
use super::job::ProcessWork;
use super::processes::{Answer, Live, await_answer, death, retire, undelivered};
use super::processes::{Job, Processes};
use crate::batch::{self, Collector};
use crate::sys::board::Board;
use crate::wire::{self, Kind};
use crate::{Error, task};

type Shared = super::shared::Shared<Processes>;

/// Run the batch `job` on the slot's live worker and resolve it.
pub(super) fn run(shared: &Shared, slot: usize, live: &mut Option<Live>, job: Job, wake: &Arc<OwnedFd>) {
    let worker = live.as_mut().expect("the driver started a worker for the batch");
    if worker.board.is_none() {
        match give_board(worker) {
            Ok(board) => worker.board = Some(board),
            Err(BoardError::Os(e)) => {
                job.control.set(Place::Finished);
                job.completion.resolve_err(Error::os("making a map batch's shared board", e));
                return;
            }
            Err(BoardError::Gone) => return undelivered(shared, slot, live, job),
        }
    }
    let ProcessWork { header, bytes, fds } = &job.work;
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    if wire::send(worker.peer.socket.as_fd(), Kind::Batch, &[header, bytes], &borrowed).is_err() {
        return undelivered(shared, slot, live, job);
    }
    let batch = job.batch.as_ref().expect("a batch job");
    let mut results = Collector::new(job.id, batch.items);
    let max = shared.config.max_message_or_default();
    let timeout = shared.config.task_timeout;
    let mut stop_sent = false;
    let ending = loop {
        let worker = live.as_mut().expect("alive while the batch runs");
        let board = worker.board.as_ref().expect("given above");
        let deadline = timeout.map(|t| item_deadline(board, job.id, t));
        match await_answer(worker, wake, deadline, max) {
            Answer::Partial(frame) => {
                if let Err(why) = results.partial(frame) {
                    break Ending::Garbage(why);
                }
            }
            Answer::Done(frame) => break Ending::Done(frame),
            Answer::Died => break Ending::Died,
            Answer::TimedOut => {
                let t = timeout.expect("a deadline only with a time limit");
                if item_deadline(board, job.id, t) <= Instant::now() {
                    break Ending::TimedOut;
                }
                // The item that was running finished; another runs now.
            }
            Answer::Woken => {
                if shared.lock().terminating || job.control.cancelled.load(Ordering::SeqCst) {
                    break Ending::Cancelled;
                }
                if !stop_sent && batch.stop.load(Ordering::SeqCst) {
                    batch::request_stop(board, job.id);
                    stop_sent = true;
                }
            }
            Answer::Garbage(why) => break Ending::Garbage(why),
        }
    };
    let raw = match ending {
        Ending::Done(frame) => match read_done(&mut results, live, &job, frame) {
            Ok((done, end)) => {
                shared.slot(slot).tasks_done += 1;
                let worker = live.as_mut().expect("alive after its answer");
                worker.tasks += 1;
                if shared.config.max_tasks_per_worker.is_some_and(|n| worker.tasks >= n) {
                    retire(live.take(), true);
                    shared.slot(slot).restarts += 1;
                }
                RawBatch { done, chunks: results.into_chunks(), end, argument: None }
            }
            Err(why) => broken(shared, slot, live, results, &job, why),
        },
        Ending::Died => {
            let mut dead = live.take().expect("alive until now");
            shared.slot(slot).restarts += 1;
            let err = death(shared, &mut dead, job.id);
            let running = after_death(dead, &mut results);
            ended(results, running.map_or(BatchEnd::Unstarted, |_| BatchEnd::Failed(err)))
        }
        Ending::TimedOut => {
            let running = after_death(kill(shared, slot, live), &mut results);
            ended(results, running.map_or(BatchEnd::Unstarted, |_| BatchEnd::Failed(Error::TimedOut)))
        }
        Ending::Cancelled => {
            after_death(kill(shared, slot, live), &mut results);
            ended(results, BatchEnd::RestFail(Error::Cancelled))
        }
        Ending::Garbage(why) => broken(shared, slot, live, results, &job, why),
    };
    job.control.set(Place::Finished);
    let raw = match raw.end {
        BatchEnd::Complete { .. } => raw,
        _ => RawBatch { argument: give_back(job.work), ..raw },
    };
    job.completion.resolve_batch(raw);
}

enum Ending {
    Done(wire::Frame),
    Died,
    TimedOut,
    Cancelled,
    Garbage(String),
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

fn ended(results: Collector, end: BatchEnd) -> RawBatch {
    RawBatch { done: results.done(), chunks: results.into_chunks(), end, argument: None }
}

/// The batch's Done frame, with what the board holds beyond the frames:
/// how many items are done and how the batch ended.
fn read_done(
    results: &mut Collector,
    live: &Option<Live>,
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
    let board = live.as_ref().and_then(|l| l.board.as_ref()).expect("alive with its board");
    results.read_board(board)?;
    if results.done() != done || (done < items) != stopped {
        return Err(format!(
            "the worker says {done} of {items} items are done but published {}",
            results.done()
        ));
    }
    Ok((done, if stopped { BatchEnd::Unstarted } else { BatchEnd::Complete { nanos } }))
}

/// The worker said something that makes no sense: replace it; the items
/// with valid results keep them, the rest fail with why.
fn broken(
    shared: &Shared,
    slot: usize,
    live: &mut Option<Live>,
    results: Collector,
    job: &Job,
    why: String,
) -> RawBatch {
    let _ = kill(shared, slot, live);
    let err = Error::Codec(format!(
        "the worker's answer to map batch {} could not be read ({why}); the worker was replaced",
        job.id
    ));
    ended(results, BatchEnd::RestFail(err))
}

/// SIGKILL the slot's worker and wait for its death.
fn kill(shared: &Shared, slot: usize, live: &mut Option<Live>) -> Live {
    let mut dead = live.take().expect("alive until now");
    let _ = dead.child.kill();
    let _ = dead.child.wait();
    shared.slot(slot).restarts += 1;
    dead
}

/// Once the worker is dead: take the results still in its socket, then
/// those on its board; the index of the item it was running, if one was.
fn after_death(dead: Live, results: &mut Collector) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Ok(frame) = wire::recv(dead.peer.socket.as_fd(), u64::MAX >> 1, Some(deadline)) {
        if frame.kind != Kind::Partial || results.partial(frame).is_err() {
            break;
        }
    }
    let running = dead.board.as_ref().and_then(|b| results.read_board(b).ok().flatten());
    retire(Some(dead), false);
    running
}

/// A batch's argument, for `map` to cut and send again.
fn give_back(work: ProcessWork) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    Some((work.bytes, work.fds))
}
