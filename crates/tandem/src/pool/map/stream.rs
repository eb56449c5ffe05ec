//! `Map::into_stream` and `MapUnordered::into_stream`: the same engine as
//! the iterators, with each in-flight batch's handle polled as a future
//! instead of joined. Order, laziness (items are taken from the input only
//! as batches go out) and the bound of `2 x workers` batches in flight are
//! the iterators' own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Indexed, Map, MapUnordered};
use crate::Error;

/// [`Map`] as a [`Stream`]: results in input order, awaited without
/// blocking the executor. Made by [`Map::into_stream`].
///
/// ```
/// use futures::StreamExt;
/// # futures::executor::block_on(async {
/// let pool = tandem::Pool::builder().workers(2).build().unwrap();
/// let squares: Vec<u64> = pool.map(0..100u64, |x| x * x).into_stream().map(Result::unwrap).collect().await;
/// assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
/// # });
/// ```
pub struct MapStream<'p, I: Iterator, A, R> {
    map: Box<Map<'p, I, A, R>>,
}

/// [`MapUnordered`] as a [`Stream`]: `(input index, result)` pairs as
/// batches finish. Made by [`MapUnordered::into_stream`].
///
/// ```
/// use futures::StreamExt;
/// # futures::executor::block_on(async {
/// let pool = tandem::Pool::builder().workers(2).build().unwrap();
/// let mut seen: Vec<usize> = pool.map_unordered(0..100u64, |x| x + 1).into_stream().map(|(i, _)| i).collect().await;
/// seen.sort();
/// assert_eq!(seen, (0..100).collect::<Vec<_>>());
/// # });
/// ```
pub struct MapUnorderedStream<'p, I: Iterator, A, R> {
    map: Box<MapUnordered<'p, I, A, R>>,
}

impl<'p, I, A, R> Map<'p, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// The results as a [`Stream`] (`futures_core::Stream`), in input order:
    /// for async code, where the iterator's `next` would block the executor.
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// let mut s = pool.map(1..4u32, |x| x * 10).into_stream();
    /// assert_eq!(s.next().await.unwrap().unwrap(), 10);
    /// # });
    /// ```
    pub fn into_stream(self) -> MapStream<'p, I, A, R> {
        MapStream { map: Box::new(self) }
    }
}

impl<'p, I, A, R> MapUnordered<'p, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// The `(input index, result)` pairs as a [`Stream`], as batches finish.
    ///
    /// ```
    /// use futures::StreamExt;
    /// # futures::executor::block_on(async {
    /// let pool = tandem::Pool::builder().workers(2).build().unwrap();
    /// assert_eq!(pool.map_unordered(0..10u32, |x| x).into_stream().count().await, 10);
    /// # });
    /// ```
    pub fn into_stream(self) -> MapUnorderedStream<'p, I, A, R> {
        MapUnorderedStream { map: Box::new(self) }
    }
}

impl<I, A, R> Stream for MapStream<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = Result<R, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let map = &mut *self.get_mut().map;
        if let Some(value) = map.fast.next() {
            return Poll::Ready(Some(Ok(value)));
        }
        loop {
            while let Some(run) = map.ready.front_mut() {
                match run.pop() {
                    Some(r) => return Poll::Ready(Some(r)),
                    None => drop(map.ready.pop_front()),
                }
            }
            map.fill();
            let outcome = match map.in_flight.front_mut() {
                None => return Poll::Ready(None),
                Some(Err(_)) => None,
                Some(Ok(segment)) => match Pin::new(&mut segment.handle).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(outcome) => Some(outcome),
                },
            };
            match (map.in_flight.pop_front(), outcome) {
                (Some(Err((_, failed))), _) => return Poll::Ready(Some(failed)),
                (Some(Ok(segment)), Some(outcome)) => {
                    let parts = (segment.start, segment.len, segment.attempts, segment.offsets);
                    let (results, again) = map.engine.settle_with(parts, outcome);
                    map.ready.extend(results);
                    for segment in again.into_iter().rev() {
                        map.in_flight.push_front(Ok(segment));
                    }
                }
                _ => unreachable!("the front was looked at above"),
            }
        }
    }
}

impl<I, A, R> Stream for MapUnorderedStream<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = Indexed<R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let map = &mut *self.get_mut().map;
        loop {
            while let Some(run) = map.ready.front_mut() {
                match run.next() {
                    Some(r) => return Poll::Ready(Some(r)),
                    None => drop(map.ready.pop_front()),
                }
            }
            if let Some(r) = map.failed.pop_front() {
                return Poll::Ready(Some(r));
            }
            map.fill();
            if let Some(r) = map.failed.pop_front() {
                return Poll::Ready(Some(r));
            }
            if map.in_flight.is_empty() {
                return Poll::Ready(None);
            }
            // The iterator's finish notices are not needed here: drop them.
            while map.finished.try_recv().is_ok() {}
            // At most 2 x workers handles: each keeps this poll's waker.
            let done = map.in_flight.iter_mut().find_map(|(key, segment)| {
                match Pin::new(&mut segment.handle).poll(cx) {
                    Poll::Ready(outcome) => Some((*key, outcome)),
                    Poll::Pending => None,
                }
            });
            let Some((key, outcome)) = done else { return Poll::Pending };
            let segment = map.in_flight.remove(&key).expect("found above");
            let parts = (segment.start, segment.len, segment.attempts, segment.offsets);
            let (results, again) = map.engine.settle_with(parts, outcome);
            map.ready.extend(results);
            for segment in again {
                map.in_flight.insert(segment.key, segment);
            }
        }
    }
}
