//! Map batches in the pool: what a batch resolves to in either mode, and how
//! one runs on a pool thread.
//!
//! A batch is many map items sent as one task, but each item keeps a task's
//! semantics: a batch ends with the results of its first `done` items and
//! says what became of the rest ([`BatchEnd`]): all done, the running item
//! failed (its worker died, it timed out), or the rest never started (a stop
//! request, a worker that died between items). `map` turns that into one
//! result per item and sends the unstarted items again.

use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::de::DeserializeOwned;

use super::handle::{Completion, Resolve};
use crate::batch::Chunk;
use crate::codec::fixed;
use crate::wire::Frame;
use crate::{Error, batch, codec, task};

/// How a batch ended after its first `done` items.
#[derive(Debug)]
pub(crate) enum BatchEnd {
    /// Every item ran; the batch took this long inside its unit.
    Complete { nanos: u64 },
    /// The items after `done` never started: a stop request, or a worker
    /// that died between two items or before the first.
    Unstarted,
    /// Item `done` failed with this error (its worker died under it, it ran
    /// past the time limit, it was cancelled); the items after it never started.
    Failed(Error),
    /// Every item from `done` on fails with this error (the pool was
    /// terminated, the worker's answer could not be read).
    RestFail(Error),
}

/// Why one map item has no value: smaller than an [`Error`], which
/// matters at millions of items.
pub(crate) enum ItemFail {
    Panicked(String),
    Codec(String),
}

impl ItemFail {
    pub(crate) fn into_error(self) -> Error {
        match self {
            ItemFail::Panicked(message) => Error::Panicked { message },
            ItemFail::Codec(why) => Error::Codec(why),
        }
    }
}

/// A stretch of a batch's results: consecutive items that returned, or one
/// that did not.
pub(crate) enum Part<R> {
    Values(Vec<R>),
    Fail(ItemFail),
}

/// The results of a batch's first `done` items, in order: runs of plain
/// values with the (rare) item that has none between them, so the common
/// case is one `Vec<R>` that `map` hands out without looking at each item.
pub(crate) struct Results<R> {
    parts: Vec<Part<R>>,
    /// The values after the last part.
    run: Vec<R>,
    /// Items in `parts`.
    before: usize,
}

impl<R> Results<R> {
    pub(crate) fn with_capacity(n: usize) -> Results<R> {
        Results { parts: Vec::new(), run: Vec::with_capacity(n), before: 0 }
    }

    /// The next item returned `value`.
    #[inline]
    pub(crate) fn value(&mut self, value: R) {
        self.run.push(value);
    }

    /// The next items returned these values (written in place: the length
    /// is known, so no capacity check per item).
    #[inline]
    pub(crate) fn values(&mut self, values: impl ExactSizeIterator<Item = R>) {
        self.run.extend(values);
    }

    /// The next item has no value.
    #[cold]
    pub(crate) fn fail(&mut self, why: ItemFail) {
        if !self.run.is_empty() {
            let room = self.run.capacity() - self.run.len();
            let run = std::mem::replace(&mut self.run, Vec::with_capacity(room));
            self.before += run.len();
            self.parts.push(Part::Values(run));
        }
        self.before += 1;
        self.parts.push(Part::Fail(why));
    }

    pub(crate) fn push(&mut self, result: Result<R, ItemFail>) {
        match result {
            Ok(value) => self.value(value),
            Err(why) => self.fail(why),
        }
    }

    /// Items with a result.
    pub(crate) fn len(&self) -> usize {
        self.before + self.run.len()
    }

    /// The parts, in item order.
    pub(crate) fn into_parts(mut self) -> Vec<Part<R>> {
        if !self.run.is_empty() || self.parts.is_empty() {
            self.parts.push(Part::Values(self.run));
        }
        self.parts
    }
}

/// What came back of the items that never ran.
pub(crate) enum Rest<A> {
    /// Thread mode: the items after the failed one (`Failed`), or from
    /// `done` on (`Unstarted`).
    Local(Vec<A>),
    /// Process mode: the batch's whole argument (bytes and descriptors),
    /// which `map` cuts at its items' offsets; `None` when it completed.
    Remote(Option<(Vec<u8>, Vec<OwnedFd>)>),
}

/// What a batch's handle resolves to.
pub(crate) struct BatchOutcome<A, R> {
    pub done: usize,
    pub results: Results<R>,
    pub end: BatchEnd,
    pub rest: Rest<A>,
}

/// A process batch's outcome as the loop knows it, before types.
pub(crate) struct RawBatch {
    pub done: u32,
    pub chunks: Vec<Chunk>,
    pub end: BatchEnd,
    /// The batch's argument, given back unless it completed.
    pub argument: Option<(Vec<u8>, Vec<OwnedFd>)>,
}

impl<A: Send + 'static, R: DeserializeOwned + Send + 'static> Resolve for Completion<BatchOutcome<A, R>> {
    fn resolve_frame(&self, _frame: Frame) -> bool {
        self.resolve(Err(Error::Codec("a map batch was answered like a single task".into())))
    }
    fn resolve_batch(&self, raw: RawBatch) -> bool
    where
        R: DeserializeOwned,
    {
        if self.is_resolved() {
            return false;
        }
        // Decoded here, on the loop's thread, not on the one reading the map.
        let results = decode_records(raw.chunks, raw.done as usize);
        self.resolve(Ok(BatchOutcome {
            done: raw.done as usize,
            results,
            end: raw.end,
            rest: Rest::Remote(raw.argument),
        }))
    }
    fn resolve_err(&self, err: Error) -> bool {
        self.resolve(Err(err))
    }
    fn is_resolved(&self) -> bool {
        self.resolved()
    }
}

/// A process batch's records as results, `count` per chunk: a record that
/// cannot be read fails its item and the rest of its chunk.
fn decode_records<R: DeserializeOwned>(chunks: Vec<Chunk>, done: usize) -> Results<R> {
    let mut out = Results::with_capacity(done);
    let nested = codec::decoding_elsewhere();
    for mut chunk in chunks {
        let fds = std::mem::take(&mut chunk.fds);
        let count = chunk.count as usize;
        let first = out.len();
        if fds.is_empty() {
            chunk.take_fixed(count, |kind, bits| match fixed::decode_bits(kind, bits) {
                Ok(value) => {
                    out.value(value);
                    true
                }
                Err(_) => false,
            });
        }
        let mut fds = Some(fds);
        while out.len() - first < count {
            let result = match chunk.pop() {
                // The common case first: a plain value, no descriptors.
                Ok((batch::STATUS_VALUE, body)) if !nested && fds.as_ref().is_none_or(Vec::is_empty) => {
                    match codec::decode_plain(body) {
                        Ok(value) => {
                            out.value(value);
                            continue;
                        }
                        Err(e) => Err(ItemFail::Codec(e.codec_detail())),
                    }
                }
                Ok((batch::STATUS_FIXED, body)) => match batch::fixed_value(body) {
                    Ok(value) => {
                        out.value(value);
                        continue;
                    }
                    Err(why) => Err(ItemFail::Codec(format!(
                        "the worker's result for this item is unreadable: {why}"
                    ))),
                },
                Ok((batch::STATUS_VALUE, body)) => match fds.take().filter(|f| !f.is_empty()) {
                    None if !nested => codec::decode_plain(body),
                    None => codec::decode(body, Vec::new()),
                    Some(fds) => codec::decode(body, fds),
                }
                .map_err(|e| ItemFail::Codec(e.codec_detail())),
                Ok((batch::STATUS_PANICKED, body)) => {
                    Err(ItemFail::Panicked(String::from_utf8_lossy(body).into_owned()))
                }
                Ok((_, body)) => Err(ItemFail::Codec(String::from_utf8_lossy(body).into_owned())),
                Err(why) => {
                    let why = format!("the worker's result for this item is unreadable: {why}");
                    for _ in out.len() - first..count {
                        out.fail(ItemFail::Codec(why.clone()));
                    }
                    break;
                }
            };
            out.push(result);
        }
    }
    out
}

/// What the thread pool's time-out supervisor needs of a timed batch.
pub(crate) trait ItemClock: Send + Sync {
    /// When the running item started, if one is running.
    fn item_started(&self) -> Option<Instant>;
    /// End the batch now: the running item fails with `err`, finished
    /// items keep their results, the rest come back unrun. False if the
    /// batch had already ended.
    fn interrupt(&self, err: Error) -> bool;
}

/// Run `items` on this thread, back to back; a stop request ends the batch
/// before the next stretch of items (one item in a batch of fewer than 128,
/// 1/64 of it in bigger ones: a few microseconds of a batch sized by time).
/// No per-item bookkeeping: a batch on a pool thread can only be
/// interrupted by a time limit, which uses [`Timed`].
pub(crate) fn run_untimed<A, R>(f: fn(A) -> R, items: Vec<A>, stop: &AtomicBool) -> BatchOutcome<A, R> {
    let start = Instant::now();
    let stretch = (items.len() / 64).clamp(1, 256);
    let mut results = Results::with_capacity(items.len());
    let mut items = items.into_iter();
    // One unwind guard per run of stretches, not one per item: a panic ends
    // it, fails the item that was running (the one taken last; the values
    // before it are kept) and the next run starts after it.
    let finished = loop {
        let stretch = catch_unwind(AssertUnwindSafe(|| {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                if items.len() == 0 {
                    return true;
                }
                results.values(items.by_ref().take(stretch).map(f));
            }
        }));
        match stretch {
            Ok(finished) => break finished,
            Err(payload) => results.fail(ItemFail::Panicked(task::panic_message(payload.as_ref()))),
        }
    };
    let (done, end, rest) = if finished {
        (results.len(), BatchEnd::Complete { nanos: start.elapsed().as_nanos() as u64 }, Vec::new())
    } else {
        (results.len(), BatchEnd::Unstarted, items.collect())
    };
    BatchOutcome { done, results, end, rest: Rest::Local(rest) }
}

/// A batch on a pool thread under a time limit: each item's start and
/// result are published under a lock, so the supervisor can fail the one
/// item that runs too long and hand back the rest.
pub(crate) struct Timed<A, R> {
    state: Mutex<TimedState<A, R>>,
    completion: Arc<Completion<BatchOutcome<A, R>>>,
}

struct TimedState<A, R> {
    rest: std::vec::IntoIter<A>,
    results: Results<R>,
    since: Option<Instant>,
    /// The batch has its outcome (finished, stopped or interrupted).
    over: bool,
}

impl<A: Send + 'static, R: Send + 'static> Timed<A, R> {
    pub(crate) fn new(items: Vec<A>, completion: Arc<Completion<BatchOutcome<A, R>>>) -> Arc<Timed<A, R>> {
        let results = Results::with_capacity(items.len());
        let state = TimedState { rest: items.into_iter(), results, since: None, over: false };
        Arc::new(Timed { state: Mutex::new(state), completion })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimedState<A, R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run the items; the outcome, unless the supervisor interrupted the
    /// batch (then it has resolved it already).
    pub(crate) fn run(&self, f: fn(A) -> R, stop: &AtomicBool) -> Option<BatchOutcome<A, R>> {
        let start = Instant::now();
        let mut last: Option<Result<R, ItemFail>> = None;
        loop {
            let item = {
                let mut s = self.lock();
                if s.over {
                    return None;
                }
                if let Some(last) = last.take() {
                    s.results.push(last);
                }
                s.since = None;
                let next = if stop.load(Ordering::Relaxed) { None } else { s.rest.next() };
                match next {
                    Some(item) => {
                        s.since = Some(Instant::now());
                        item
                    }
                    None => {
                        s.over = true;
                        let results = std::mem::replace(&mut s.results, Results::with_capacity(0));
                        let rest: Vec<A> = s.rest.by_ref().collect();
                        let end = if rest.is_empty() {
                            BatchEnd::Complete { nanos: start.elapsed().as_nanos() as u64 }
                        } else {
                            BatchEnd::Unstarted
                        };
                        return Some(BatchOutcome {
                            done: results.len(),
                            results,
                            end,
                            rest: Rest::Local(rest),
                        });
                    }
                }
            };
            last = Some(task::run_caught(f, item).map_err(ItemFail::Panicked));
        }
    }
}

impl<A: Send + 'static, R: Send + 'static> ItemClock for Timed<A, R> {
    fn item_started(&self) -> Option<Instant> {
        self.lock().since
    }

    fn interrupt(&self, err: Error) -> bool {
        let outcome = {
            let mut s = self.lock();
            if s.over {
                return false;
            }
            s.over = true;
            let results = std::mem::replace(&mut s.results, Results::with_capacity(0));
            BatchOutcome {
                done: results.len(),
                results,
                end: BatchEnd::Failed(err),
                rest: Rest::Local(s.rest.by_ref().collect()),
            }
        };
        self.completion.resolve(Ok(outcome))
    }
}

/// What a completion of a plain task does with a batch's answer: it cannot
/// be one (a protocol mix-up), so it fails the task.
pub(crate) fn not_a_batch<R: DeserializeOwned + Send + 'static>(completion: &Completion<R>) -> bool {
    completion.resolve(Err(Error::Codec("a single task was answered like a map batch".into())))
}
