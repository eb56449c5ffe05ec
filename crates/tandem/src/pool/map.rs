//! `Pool::map` and `Pool::map_unordered`: lazy, bounded, automatically
//! batched, and each item keeps the semantics of a submitted task.
//!
//! Items go out in batches, sized so a batch takes about
//! [`TARGET_BATCH_NANOS`] inside its unit: tiny tasks travel in thousands,
//! slow ones alone. At most `2 x workers` batches are in flight, so memory
//! stays flat however long the input is.
//!
//! A batch reports item by item (see `batch`): when its worker dies or an
//! item runs past the time limit, only the running item fails, the finished
//! ones keep their results, and the items that never started are sent again
//! (at the front of the queue) without counting as a try. `retries` counts
//! per item: an item whose worker died under it runs again alone.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, Sender, channel};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::backend::Inner;
use super::batch::{BatchEnd, BatchOutcome, ItemClock, ItemFail, Part, Timed, run_untimed};
use super::feed::{Cut, Feeder, MAX_BATCH, MAX_BATCH_BYTES, Offsets, Piece, Remainder};
use super::handle::Completion;
use super::shared::Counters;
use super::{BatchJob, Pool, ProcessWork, TaskHandle, ThreadWork};
use crate::{Error, batch, task};

mod stream;
pub use stream::{MapStream, MapUnorderedStream};

/// A batch in flight: where its items are in the input.
struct Segment<A, R> {
    /// Input index of its first item.
    start: usize,
    len: usize,
    /// Times its items were re-run after a worker died under them (a
    /// re-run item travels alone, so this is per item).
    attempts: u32,
    stop: Arc<AtomicBool>,
    /// Process mode: where each item starts in the argument.
    offsets: Offsets,
    key: u64,
    handle: TaskHandle<BatchOutcome<A, R>>,
}

/// What both kinds of map share: the pool, the input and the function, and
/// how a batch's outcome becomes one result per item.
struct Engine<'p, I: Iterator, A, R> {
    pool: &'p Pool,
    feeder: Feeder<I>,
    f: fn(A) -> R,
    next_index: usize,
    next_key: u64,
    /// map_unordered: told the key of each batch that resolves.
    notify: Option<Sender<u64>>,
    /// This map so far (see [`Progress`]).
    progress: Progress,
    /// The pool's counters, which count this map's items too.
    counters: Arc<Counters>,
}

/// How far a map is: [`Map::progress`], [`MapUnordered::progress`].
///
/// An item is `done` or `failed` once the map has taken its batch's
/// outcome (it is then ready to be yielded, or was), and `in_flight` from
/// when the map pulls it from the input until then. `done + failed +
/// in_flight` is the number of items pulled so far; a retried item stays
/// in flight.
///
/// ```
/// let pool = tandem::Pool::builder().workers(2).build().unwrap();
/// let mut m = pool.map(0..100u32, |x| if x == 5 { panic!("five") } else { x });
/// assert_eq!(m.progress(), tandem::Progress::default()); // nothing pulled yet
/// let first = m.next();
/// assert!(first.unwrap().is_ok());
/// let p = m.progress();
/// assert!(p.done >= 1 && p.done + p.failed + p.in_flight <= 100);
/// m.by_ref().for_each(drop);
/// let p = m.progress();
/// assert_eq!((p.done, p.failed, p.in_flight), (99, 1, 0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Items finished with a value.
    pub done: u64,
    /// Items finished with an error.
    pub failed: u64,
    /// Items pulled from the input and not finished yet: queued, running,
    /// or finished in a batch the map has not taken yet.
    pub in_flight: u64,
}

/// One item's result, by input index.
type Indexed<R> = (usize, Result<R, Error>);

impl<'p, I, A, R> Engine<'p, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn new(pool: &'p Pool, items: I, f: fn(A) -> R, notify: Option<Sender<u64>>) -> Self {
        let counters = pool.counters();
        let progress = Progress::default();
        Engine { pool, feeder: Feeder::new(items), f, next_index: 0, next_key: 0, notify, progress, counters }
    }

    /// `n` items pulled from the input: in flight, for this map and its pool.
    fn pulled(&mut self, n: usize) {
        self.progress.in_flight += n as u64;
        Counters::add(&self.counters.submitted, n as u64);
    }

    /// `ok` items finished with a value and `failed` with an error, for
    /// this map and its pool (every count of a map's finished items).
    fn tally(&mut self, ok: usize, failed: usize) {
        let (ok, failed) = (ok as u64, failed as u64);
        self.progress.done += ok;
        self.progress.failed += failed;
        self.progress.in_flight = self.progress.in_flight.saturating_sub(ok + failed);
        Counters::add(&self.counters.completed, ok);
        Counters::add(&self.counters.failed, failed);
    }

    fn flags(&self) -> u8 {
        if self.pool.config().task_timeout.is_some() { batch::TIMED } else { 0 }
    }

    /// The next batch to send, or an item that failed before it could be.
    fn next_piece(&mut self) -> Option<Result<Segment<A, R>, Indexed<R>>> {
        let config = self.pool.config();
        let max_bytes = MAX_BATCH_BYTES.min((config.max_message_or_default() / 2) as usize);
        let piece = self.feeder.next_piece(config.mode, self.flags(), max_bytes)?;
        let start = self.next_index;
        Some(match piece {
            Piece::Failed(e) => {
                self.next_index += 1;
                self.pulled(1);
                self.tally(0, 1);
                Err((start, Err(e)))
            }
            Piece::Batch(cut) => {
                self.next_index += cut.len();
                self.pulled(cut.len());
                Ok(self.submit(cut, start, 0, false))
            }
        })
    }

    /// Send `cut` (its first item is input item `start`) as one batch.
    fn submit(&mut self, cut: Cut<A>, start: usize, attempts: u32, front: bool) -> Segment<A, R> {
        let pool = self.pool;
        let id = pool.next_task_id();
        let key = self.next_key;
        self.next_key += 1;
        let completion = Arc::new(Completion::new(self.notify.as_ref().map(|tx| (tx.clone(), key))));
        let stop = Arc::new(AtomicBool::new(false));
        let len = cut.len();
        let f = self.f;
        let (handle, offsets) = match (cut, &pool.inner) {
            (Cut::Local(items), Inner::Threads(shared)) => {
                let (work, clock) =
                    local_batch(f, items, &completion, &stop, shared.config.task_timeout.is_some());
                let job = BatchJob { stop: stop.clone(), items: len as u32, clock };
                (super::enqueue(shared, id, completion, work, Some(job), front), Offsets::Listed(Vec::new()))
            }
            (Cut::Remote { argument, fds, offsets }, Inner::Processes(shared)) => {
                let (work, job) = remote_batch(id, f, argument, fds, &stop, len);
                (super::enqueue_process(shared, id, completion, work, Some(job), front), offsets)
            }
            #[cfg(feature = "cluster")]
            (Cut::Remote { argument, fds, offsets }, Inner::Cluster(shared)) => {
                let (work, job) = remote_batch(id, f, argument, fds, &stop, len);
                (super::enqueue(shared, id, completion, work, Some(job), front), offsets)
            }
            // The feeder cuts batches in the pool's own shape; anything else
            // is a bug here, reported on the batch's items, never a panic.
            (_, _) => {
                completion.resolve(Err(Error::Codec(
                    "a map batch in the wrong shape for its pool (a bug in tandem)".into(),
                )));
                (super::handle(id, completion), Offsets::Listed(Vec::new()))
            }
        };
        Segment { start, len, attempts, stop, offsets, key, handle }
    }

    /// The results of a finished batch as runs of consecutive items, in
    /// input order, and the batches sent for its items that must run again
    /// (also in order).
    fn settle(&mut self, segment: Segment<A, R>) -> (Vec<Run<R>>, Vec<Segment<A, R>>) {
        let Segment { start, len, attempts, offsets, handle, .. } = segment;
        self.settle_with((start, len, attempts, offsets), handle.join())
    }

    /// Settle a segment (start, len, attempts, offsets) whose handle gave
    /// `outcome`, joined or awaited.
    fn settle_with(
        &mut self,
        (start, len, attempts, offsets): (usize, usize, u32, Offsets),
        outcome: Result<BatchOutcome<A, R>, Error>,
    ) -> (Vec<Run<R>>, Vec<Segment<A, R>>) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                self.tally(0, len);
                return (vec![Run::same(start, len, e)], Vec::new());
            }
        };
        let BatchOutcome { done, results, end, rest } = outcome;
        let mut out: Vec<Run<R>> = Vec::with_capacity(2);
        let mut next = start;
        let (mut ok, mut failed) = (0, 0);
        for part in results.into_parts() {
            let (len, kind) = match part {
                Part::Values(values) => {
                    ok += values.len();
                    (values.len(), RunKind::Values(values.into_iter()))
                }
                Part::Fail(why) => {
                    failed += 1;
                    (1, RunKind::One(Some(why)))
                }
            };
            out.push(Run { next, kind });
            next += len;
        }
        let mut again = Vec::new();
        match end {
            BatchEnd::Complete { nanos } => self.feeder.sizer.learn(len, nanos),
            BatchEnd::RestFail(e) => {
                failed += len - done;
                out.push(Run::same(start + done, len - done, e))
            }
            BatchEnd::Unstarted => {
                let mut rest = Remainder::new(rest, &offsets, done);
                if let Some(cut) = rest.cut(done, len) {
                    again.push((cut, start + done, attempts));
                }
            }
            BatchEnd::Failed(e) => {
                // Thread mode gives back only the items after the failed one.
                let mut rest = Remainder::new(rest, &offsets, done + 1);
                let retry = matches!(e, Error::WorkerDied { .. }) && attempts < self.pool.config().retries;
                match rest.cut(done, done + 1).filter(|_| retry) {
                    Some(cut) => {
                        Counters::add(&self.counters.retried, 1);
                        again.push((cut, start + done, attempts + 1))
                    }
                    None => {
                        failed += 1;
                        out.push(Run::same(start + done, 1, e.for_item(start + done)))
                    }
                }
                if let Some(cut) = rest.cut(done + 1, len) {
                    again.push((cut, start + done + 1, attempts));
                }
            }
        }
        self.tally(ok, failed);
        // Queued at the front, last first, so they run in input order.
        let mut sent: Vec<Segment<A, R>> =
            again.into_iter().rev().map(|(cut, at, attempts)| self.submit(cut, at, attempts, true)).collect();
        sent.reverse();
        (out, sent)
    }
}

impl<I: Iterator, A, R> Engine<'_, I, A, R> {
    /// The map is dropped: what it had in flight counts as failed (it
    /// stops those batches; nobody will take their outcomes).
    fn stopped(&mut self) {
        let left = std::mem::take(&mut self.progress.in_flight);
        self.progress.failed += left;
        Counters::add(&self.counters.failed, left);
    }
}

/// A batch of `len` encoded items as a worker process's work (here or on
/// a cluster's agent), and what the pool knows of it.
fn remote_batch<A, R>(
    id: u64,
    f: fn(A) -> R,
    argument: Vec<u8>,
    fds: Vec<std::os::fd::OwnedFd>,
    stop: &Arc<AtomicBool>,
    len: usize,
) -> (ProcessWork, BatchJob)
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let header = task::batch_header(id, task::batch_entry::<A, R>, crate::sys::code::offset_of(f));
    let work = ProcessWork { header, bytes: argument, fds, pin: None };
    (work, BatchJob { stop: stop.clone(), items: len as u32, clock: None })
}

/// A map batch's work on a pool thread: run back to back, or under a time
/// limit with each item's start published for the supervisor.
fn local_batch<A: Send + 'static, R: Send + 'static>(
    f: fn(A) -> R,
    items: Vec<A>,
    completion: &Arc<Completion<BatchOutcome<A, R>>>,
    stop: &Arc<AtomicBool>,
    timed: bool,
) -> (ThreadWork, Option<Arc<dyn ItemClock>>) {
    let (stop, done) = (stop.clone(), completion.clone());
    if timed {
        let timed = Timed::new(items, completion.clone());
        let runner = timed.clone();
        let work: ThreadWork = Box::new(move || {
            let out = runner.run(f, &stop);
            Box::new(move || {
                if let Some(out) = out {
                    done.resolve(Ok(out));
                }
            })
        });
        return (work, Some(timed as Arc<dyn ItemClock>));
    }
    let work: ThreadWork = Box::new(move || {
        let out = run_untimed(f, items, &stop);
        Box::new(move || {
            done.resolve(Ok(out));
        })
    });
    (work, None)
}

/// Results of consecutive input items, handed out one at a time (a process
/// batch's records are decoded only when asked for).
struct Run<R> {
    /// Input index of the next result.
    next: usize,
    kind: RunKind<R>,
}

enum RunKind<R> {
    Values(std::vec::IntoIter<R>),
    /// One item without a value.
    One(Option<ItemFail>),
    /// `left` items that all fail with this error.
    Same {
        error: Error,
        left: usize,
    },
}

impl<R: DeserializeOwned> Run<R> {
    fn same(next: usize, left: usize, error: Error) -> Run<R> {
        Run { next, kind: RunKind::Same { error, left } }
    }

    fn pop(&mut self) -> Option<Result<R, Error>> {
        match &mut self.kind {
            RunKind::Values(values) => values.next().map(Ok),
            RunKind::One(why) => why.take().map(|why| Err(why.into_error())),
            RunKind::Same { error, left } => {
                *left = left.checked_sub(1)?;
                Some(Err(if *left == 0 {
                    std::mem::replace(error, Error::Closed)
                } else {
                    error.duplicate()
                }))
            }
        }
    }
}

impl<R> Run<R> {
    /// Results left.
    fn len(&self) -> usize {
        match &self.kind {
            RunKind::Values(values) => values.len(),
            RunKind::One(why) => usize::from(why.is_some()),
            RunKind::Same { left, .. } => *left,
        }
    }
}

impl<R: DeserializeOwned> Iterator for Run<R> {
    type Item = Indexed<R>;

    fn next(&mut self) -> Option<Indexed<R>> {
        let result = self.pop()?;
        self.next += 1;
        Some((self.next - 1, result))
    }
}

/// The iterator of [`Pool::map`]: results in input order.
///
/// ```
/// tandem::init();
/// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(2).build().unwrap();
/// let doubled: Vec<u64> = pool.map(0..1000u64, |x| x * 2).map(Result::unwrap).collect();
/// assert_eq!(doubled[999], 1998);
/// ```
pub struct Map<'p, I: Iterator, A, R> {
    engine: Engine<'p, I, A, R>,
    in_flight: VecDeque<Result<Segment<A, R>, Indexed<R>>>,
    /// The values being handed out now, before anything in `ready`: the
    /// hot path of `next` looks only here.
    fast: std::vec::IntoIter<R>,
    ready: VecDeque<Run<R>>,
}

impl<'p, I, A, R> Map<'p, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(pool: &'p Pool, items: I, f: fn(A) -> R) -> Self {
        Map {
            engine: Engine::new(pool, items, f, None),
            in_flight: VecDeque::new(),
            fast: Vec::new().into_iter(),
            ready: VecDeque::new(),
        }
    }

    /// Send items in batches of exactly `n` (the last may be smaller)
    /// instead of sizing batches by measured run time, like the `chunksize`
    /// of Python's `Pool.map`. Each item still behaves as its own task.
    /// Takes effect for batches not sent yet: call it before the first item.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// let v: Vec<u32> = pool.map(0..10u32, |x| x + 1).batch_size(3).map(Result::unwrap).collect();
    /// assert_eq!(v, (1..=10).collect::<Vec<_>>());
    /// ```
    pub fn batch_size(mut self, n: usize) -> Self {
        self.engine.feeder.fixed = Some(n.clamp(1, MAX_BATCH));
        self
    }

    /// How far this map is (see [`Progress`]). Never blocks.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// let mut m = pool.map(0..10u32, |x| x);
    /// while let Some(r) = m.next() {
    ///     r.unwrap();
    ///     let p = m.progress();
    ///     assert!(p.done >= 1 && p.done + p.in_flight <= 10);
    /// }
    /// assert_eq!(m.progress().done, 10);
    /// ```
    pub fn progress(&self) -> Progress {
        self.engine.progress
    }

    fn fill(&mut self) {
        while self.in_flight.len() < 2 * self.engine.pool.workers() {
            let Some(piece) = self.engine.next_piece() else { break };
            self.in_flight.push_back(piece);
        }
    }

    /// The batch at the front has its outcome: its results are ready, and
    /// its unstarted items go out again before anything else.
    fn settle(&mut self, segment: Segment<A, R>) {
        let (results, again) = self.engine.settle(segment);
        self.ready.extend(results);
        for segment in again.into_iter().rev() {
            self.in_flight.push_front(Ok(segment));
        }
    }
}

impl<I, A, R> Iterator for Map<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = Result<R, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self.fast.next() {
            Some(value) => Some(Ok(value)),
            None => self.next_slow(),
        }
    }

    /// Each input item gives exactly one result: the bounds are those of
    /// what is left of the input plus what is in flight or ready.
    fn size_hint(&self) -> (usize, Option<usize>) {
        let here = self.fast.len()
            + self.ready.iter().map(Run::len).sum::<usize>()
            + self.in_flight.iter().map(|p| p.as_ref().map_or(1, |s| s.len)).sum::<usize>();
        let (low, high) = self.engine.feeder.size_hint();
        (low.saturating_add(here), high.and_then(|h| h.checked_add(here)))
    }
}

impl<I, A, R> Map<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// `next` once the values at hand are used up: the next run, or the
    /// next batch's outcome.
    #[inline(never)]
    fn next_slow(&mut self) -> Option<Result<R, Error>> {
        loop {
            while let Some(run) = self.ready.front_mut() {
                if let RunKind::Values(values) = &mut run.kind {
                    self.fast = std::mem::take(values);
                    self.ready.pop_front();
                    match self.fast.next() {
                        Some(value) => return Some(Ok(value)),
                        None => continue,
                    }
                }
                match run.pop() {
                    Some(r) => return Some(r),
                    None => drop(self.ready.pop_front()),
                }
            }
            self.fill();
            match self.in_flight.pop_front()? {
                Err((_, failed)) => return Some(failed),
                Ok(segment) => self.settle(segment),
            }
        }
    }
}

impl<I, A, R> Map<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// Every value in input order, or the first error in input order (the
    /// items after it are stopped, as when the map is dropped). The same as
    /// `collect::<Result<Vec<R>, Error>>()`, but it takes each batch's values
    /// whole instead of one `next` at a time: for a million tiny items,
    /// several times faster.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// let squares = pool.map(0..1000u64, |x| x * x).try_collect_vec().unwrap();
    /// assert_eq!((squares.len(), squares[999]), (1000, 998_001));
    /// let failed = pool.map(0..10u64, |x| if x == 7 { panic!("seven") } else { x }).try_collect_vec();
    /// assert!(matches!(failed, Err(tandem::Error::Panicked { .. })));
    /// ```
    pub fn try_collect_vec(mut self) -> Result<Vec<R>, Error> {
        let mut out = Vec::with_capacity(self.size_hint().0);
        loop {
            out.extend(std::mem::take(&mut self.fast));
            while let Some(mut run) = self.ready.pop_front() {
                match &mut run.kind {
                    RunKind::Values(values) => out.extend(values),
                    _ => {
                        if let Some(Err(e)) = run.pop() {
                            return Err(e);
                        }
                    }
                }
            }
            self.fill();
            match self.in_flight.pop_front() {
                None => return Ok(out),
                Some(Err((_, failed))) => failed.map(|value| out.push(value))?,
                Some(Ok(segment)) => self.settle(segment),
            }
        }
    }
}

impl<I: Iterator, A, R> Drop for Map<'_, I, A, R> {
    fn drop(&mut self) {
        self.engine.stopped();
        for segment in self.in_flight.iter().flatten() {
            segment.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            segment.handle.stop_batch();
        }
    }
}

/// The iterator of [`Pool::map_unordered`]: `(input index, result)` pairs
/// in the order items finish (a batch's items come together).
///
/// ```
/// let pool = tandem::Pool::builder().workers(2).build().unwrap();
/// let mut seen: Vec<usize> = pool.map_unordered(0..100u64, |x| x * x).map(|(i, _)| i).collect();
/// seen.sort();
/// assert_eq!(seen, (0..100).collect::<Vec<_>>());
/// ```
pub struct MapUnordered<'p, I: Iterator, A, R> {
    engine: Engine<'p, I, A, R>,
    in_flight: HashMap<u64, Segment<A, R>>,
    finished: Receiver<u64>,
    ready: VecDeque<Run<R>>,
    failed: VecDeque<Indexed<R>>,
}

impl<'p, I, A, R> MapUnordered<'p, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(pool: &'p Pool, items: I, f: fn(A) -> R) -> Self {
        let (notify, finished) = channel();
        MapUnordered {
            engine: Engine::new(pool, items, f, Some(notify)),
            in_flight: HashMap::new(),
            finished,
            ready: VecDeque::new(),
            failed: VecDeque::new(),
        }
    }

    /// Send items in batches of exactly `n`; see [`Map::batch_size`].
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// assert_eq!(pool.map_unordered(0..10u32, |x| x).batch_size(4).count(), 10);
    /// ```
    pub fn batch_size(mut self, n: usize) -> Self {
        self.engine.feeder.fixed = Some(n.clamp(1, MAX_BATCH));
        self
    }

    /// How far this map is (see [`Progress`]). Never blocks.
    ///
    /// ```
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// let mut m = pool.map_unordered(0..10u32, |x| x);
    /// m.by_ref().for_each(drop);
    /// assert_eq!(m.progress().done, 10);
    /// ```
    pub fn progress(&self) -> Progress {
        self.engine.progress
    }

    fn fill(&mut self) {
        while self.in_flight.len() < 2 * self.engine.pool.workers() {
            match self.engine.next_piece() {
                None => break,
                Some(Err(failed)) => self.failed.push_back(failed),
                Some(Ok(segment)) => {
                    self.in_flight.insert(segment.key, segment);
                }
            }
        }
    }
}

impl<I, A, R> Iterator for MapUnordered<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = (usize, Result<R, Error>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            while let Some(run) = self.ready.front_mut() {
                match run.next() {
                    Some(r) => return Some(r),
                    None => drop(self.ready.pop_front()),
                }
            }
            if let Some(r) = self.failed.pop_front() {
                return Some(r);
            }
            self.fill();
            if let Some(r) = self.failed.pop_front() {
                return Some(r);
            }
            if self.in_flight.is_empty() {
                return None;
            }
            let key = self.finished.recv().ok()?;
            let Some(segment) = self.in_flight.remove(&key) else { continue };
            let (results, again) = self.engine.settle(segment);
            self.ready.extend(results);
            for segment in again {
                self.in_flight.insert(segment.key, segment);
            }
        }
    }
}

impl<I: Iterator, A, R> Drop for MapUnordered<'_, I, A, R> {
    fn drop(&mut self) {
        self.engine.stopped();
        for segment in self.in_flight.values() {
            segment.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            segment.handle.stop_batch();
        }
    }
}
