//! `Pool::map` and `Pool::map_unordered`: lazy, bounded, automatically batched.
//!
//! Items go out in batches; each batch is one task that runs `f` on every
//! item (catching each panic on its own) and reports how long it took inside
//! its unit. The next batch is sized so a batch takes about
//! [`TARGET_BATCH_NANOS`]: tiny tasks travel in thousands, slow ones alone.
//! At most `2 x workers` batches are in flight, so memory stays flat however
//! long the input is.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, channel};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Pool, TaskHandle};
use crate::Error;
use crate::task::{self, BatchOut};

/// How long one batch should run inside its unit.
const TARGET_BATCH_NANOS: u64 = 500_000;
const MAX_BATCH: usize = 16_384;

/// Picks batch sizes from what earlier batches measured.
struct Sizer {
    next: usize,
}

impl Sizer {
    fn new() -> Sizer {
        Sizer { next: 1 }
    }

    fn learn(&mut self, items: usize, nanos: u64) {
        if items == 0 {
            return;
        }
        let per_item = (nanos / items as u64).max(1);
        let ideal = (TARGET_BATCH_NANOS / per_item).clamp(1, MAX_BATCH as u64) as usize;
        // Grow at most 4x per step so one fast outlier cannot jump to the cap.
        self.next = ideal.min(self.next.saturating_mul(4)).max(1);
    }
}

fn batch_results<R>(out: Result<BatchOut<R>, Error>, len: usize, sizer: &mut Sizer) -> Vec<Result<R, Error>> {
    match out {
        Ok((results, nanos)) => {
            sizer.learn(results.len(), nanos);
            results.into_iter().map(|r| r.map_err(|message| Error::Panicked { message })).collect()
        }
        Err(e) => (0..len).map(|_| Err(e.duplicate())).collect(),
    }
}

fn submit_batch<A, R>(
    pool: &Pool,
    items: Vec<A>,
    f: fn(A) -> R,
    notify: Option<(std::sync::mpsc::Sender<u64>, u64)>,
) -> TaskHandle<BatchOut<R>>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pool.submit_with(items, f, task::run_batch, task::batch_trampoline::<A, R>, notify)
}

/// The iterator of [`Pool::map`]: results in input order.
pub struct Map<'p, I, A, R> {
    pool: &'p Pool,
    items: I,
    f: fn(A) -> R,
    in_flight: VecDeque<(usize, TaskHandle<BatchOut<R>>)>,
    ready: VecDeque<Result<R, Error>>,
    sizer: Sizer,
    exhausted: bool,
}

impl<'p, I, A, R> Map<'p, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn new(pool: &'p Pool, items: I, f: fn(A) -> R) -> Self {
        Map {
            pool,
            items,
            f,
            in_flight: VecDeque::new(),
            ready: VecDeque::new(),
            sizer: Sizer::new(),
            exhausted: false,
        }
    }

    fn fill(&mut self) {
        let limit = 2 * self.pool.workers();
        while !self.exhausted && self.in_flight.len() < limit {
            let batch: Vec<A> = self.items.by_ref().take(self.sizer.next).collect();
            if batch.is_empty() {
                self.exhausted = true;
                break;
            }
            let len = batch.len();
            self.in_flight.push_back((len, submit_batch(self.pool, batch, self.f, None)));
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

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.fill();
            let (len, handle) = self.in_flight.pop_front()?;
            self.ready.extend(batch_results(handle.join(), len, &mut self.sizer));
            self.fill();
        }
    }
}

/// The iterator of [`Pool::map_unordered`]: `(input index, result)` pairs
/// in the order batches finish.
pub struct MapUnordered<'p, I, A, R> {
    pool: &'p Pool,
    items: I,
    f: fn(A) -> R,
    next_index: usize,
    next_key: u64,
    in_flight: HashMap<u64, (usize, usize, TaskHandle<BatchOut<R>>)>,
    finished: Receiver<u64>,
    notify: std::sync::mpsc::Sender<u64>,
    ready: VecDeque<(usize, Result<R, Error>)>,
    sizer: Sizer,
    exhausted: bool,
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
            pool,
            items,
            f,
            next_index: 0,
            next_key: 0,
            in_flight: HashMap::new(),
            finished,
            notify,
            ready: VecDeque::new(),
            sizer: Sizer::new(),
            exhausted: false,
        }
    }

    fn fill(&mut self) {
        let limit = 2 * self.pool.workers();
        while !self.exhausted && self.in_flight.len() < limit {
            let batch: Vec<A> = self.items.by_ref().take(self.sizer.next).collect();
            if batch.is_empty() {
                self.exhausted = true;
                break;
            }
            let (start, len, key) = (self.next_index, batch.len(), self.next_key);
            self.next_index += len;
            self.next_key += 1;
            let handle = submit_batch(self.pool, batch, self.f, Some((self.notify.clone(), key)));
            self.in_flight.insert(key, (start, len, handle));
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
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.fill();
            if self.in_flight.is_empty() {
                return None;
            }
            let key = self.finished.recv().ok()?;
            let Some((start, len, handle)) = self.in_flight.remove(&key) else { continue };
            let results = batch_results(handle.join(), len, &mut self.sizer);
            self.ready.extend(results.into_iter().enumerate().map(|(i, r)| (start + i, r)));
        }
    }
}
