//! The Queue: items serialized into the fixed slots of a [`Ring`] in
//! shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DEFAULT_MAX_ITEM;
use super::ring::{Ring, RingError};
use crate::Error;
use crate::codec;
use crate::shared;

/// A bounded multi-producer, multi-consumer queue for any mix of threads and
/// processes: the `multiprocessing.Queue` analogue.
///
/// Items are serialized (postcard) into fixed slots of a ring in anonymous
/// shared memory, [`DEFAULT_MAX_ITEM`] bytes each unless made with
/// [`Queue::with_max_item`]; a bigger item fails in `put` with
/// [`Error::TooLarge`]. Every change happens under a robust process-shared
/// mutex and commits with a single store, so a unit killed at any point —
/// even by SIGKILL inside `put` or `get` — leaves the queue consistent, and
/// the others carry on (an item a killed getter had already taken is gone
/// with it). Waiting uses futexes in the shared memory after a short spin.
/// Items may not carry shareable tandem objects (channels, locks, shared
/// slices): send those through a channel.
///
/// ```
/// tandem::init();
/// let q = tandem::ipc::Queue::<u64>::bounded(16).unwrap();
/// let h = tandem::process::spawn(q.clone(), |q| {
///     for i in 0..10 {
///         q.put(i).unwrap();
///     }
/// })
/// .unwrap();
/// let sum: u64 = (0..10).map(|_| q.get().unwrap()).sum();
/// assert_eq!(sum, 45);
/// h.join().unwrap();
/// ```
pub struct Queue<T> {
    pub(super) ring: Arc<Ring>,
    /// This process's pending `get_async`s and their watcher.
    pub(super) getters: Arc<super::queue_async::Getters>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue holding at most `capacity` items of up to
    /// [`DEFAULT_MAX_ITEM`] bytes each, serialized.
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<String>::bounded(8).unwrap();
    /// assert_eq!(q.capacity(), 8);
    /// assert!(tandem::ipc::Queue::<u8>::bounded(0).is_err());
    /// ```
    pub fn bounded(capacity: usize) -> Result<Queue<T>, Error> {
        Queue::with_max_item(capacity, DEFAULT_MAX_ITEM)
    }

    /// A queue holding at most `capacity` items of up to `max_item` bytes
    /// each, serialized. It reserves `capacity × max_item` bytes of address
    /// space; memory is committed only as slots are used.
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<Vec<u8>>::with_max_item(4, 64).unwrap();
    /// assert!(matches!(q.put(vec![0; 100]), Err(tandem::Error::TooLarge { .. })));
    /// q.put(vec![1; 10]).unwrap();
    /// assert_eq!(q.get().unwrap(), vec![1; 10]);
    /// ```
    pub fn with_max_item(capacity: usize, max_item: usize) -> Result<Queue<T>, Error> {
        let bad = |what: &str| {
            Error::os(
                "making a queue",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string()),
            )
        };
        let capacity = u32::try_from(capacity).map_err(|_| bad("the capacity must fit in 32 bits"))?;
        let max_item = u32::try_from(max_item).map_err(|_| bad("the item size must fit in 32 bits"))?;
        let ring =
            Ring::create(capacity, max_item).map_err(|e| Error::os("making a queue (memfd + mmap)", e))?;
        Ok(Queue { ring: Arc::new(ring), getters: Arc::default(), _t: PhantomData })
    }

    fn encode(&self, item: &T) -> Result<Vec<u8>, Error> {
        let encoded = codec::encode(item)?;
        if !encoded.fds.is_empty() {
            return Err(Error::Unsupported(
                "putting a shareable tandem object (channel end, queue, lock, shared slice) into a Queue; send it through a channel or a task argument instead",
            ));
        }
        if encoded.bytes.len() > self.ring.max_item() {
            return Err(Error::TooLarge {
                size: encoded.bytes.len() as u64,
                max: self.ring.max_item() as u64,
            });
        }
        Ok(encoded.bytes)
    }

    fn ring_error(e: RingError) -> Error {
        match e {
            RingError::WouldBlock => Error::TimedOut,
            RingError::Io(e) => Error::os("using a shared queue", e),
        }
    }

    /// Add an item, waiting while the queue is full.
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<(u8, String)>::bounded(2).unwrap();
    /// q.put((1, "one".into())).unwrap();
    /// assert_eq!(q.get().unwrap(), (1, "one".to_string()));
    /// ```
    pub fn put(&self, item: T) -> Result<(), Error> {
        let bytes = self.encode(&item)?;
        self.ring.put(&bytes, None, false).map_err(Self::ring_error)
    }

    /// Add an item, waiting at most `limit` for room; `Err(Error::TimedOut)`
    /// if the queue stayed full.
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<u8>::bounded(1).unwrap();
    /// q.put(1).unwrap();
    /// let full = q.put_timeout(2, std::time::Duration::from_millis(1));
    /// assert!(matches!(full, Err(tandem::Error::TimedOut)));
    /// ```
    pub fn put_timeout(&self, item: T, limit: Duration) -> Result<(), Error> {
        let bytes = self.encode(&item)?;
        self.ring.put(&bytes, Some(Instant::now() + limit), false).map_err(Self::ring_error)
    }

    /// Take the oldest item, waiting while the queue is empty.
    ///
    /// ```
    /// tandem::init();
    /// let q = tandem::ipc::Queue::<u32>::bounded(4).unwrap();
    /// let h = tandem::process::spawn(q.clone(), |q| q.get().unwrap() * 2).unwrap();
    /// q.put(21).unwrap(); // the process waits in get() until this arrives
    /// assert_eq!(h.join().unwrap(), 42);
    /// ```
    pub fn get(&self) -> Result<T, Error> {
        let bytes = self.ring.get(None, false).map_err(Self::ring_error)?;
        codec::decode(&bytes, Vec::new())
    }

    /// Take the oldest item, waiting at most `limit`; `Err(Error::TimedOut)`
    /// if none came.
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<u8>::bounded(4).unwrap();
    /// assert!(matches!(q.get_timeout(std::time::Duration::from_millis(1)), Err(tandem::Error::TimedOut)));
    /// ```
    pub fn get_timeout(&self, limit: Duration) -> Result<T, Error> {
        let bytes = self.ring.get(Some(Instant::now() + limit), false).map_err(Self::ring_error)?;
        codec::decode(&bytes, Vec::new())
    }

    /// Take the oldest item if there is one, without waiting.
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<u8>::bounded(4).unwrap();
    /// assert_eq!(q.try_get().unwrap(), None);
    /// q.put(9).unwrap();
    /// assert_eq!(q.try_get().unwrap(), Some(9));
    /// ```
    pub fn try_get(&self) -> Result<Option<T>, Error> {
        match self.ring.get(None, true) {
            Ok(bytes) => codec::decode(&bytes, Vec::new()).map(Some),
            Err(RingError::WouldBlock) => Ok(None),
            Err(e) => Err(Self::ring_error(e)),
        }
    }

    /// Items in the queue now (a snapshot; others may change it at once).
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<u8>::bounded(4).unwrap();
    /// q.put(1).unwrap();
    /// q.put(2).unwrap();
    /// assert_eq!(q.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the queue is empty now (a snapshot).
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<u8>::bounded(4).unwrap();
    /// assert!(q.is_empty());
    /// q.put(1).unwrap();
    /// assert!(!q.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items it holds.
    ///
    /// ```
    /// let q = tandem::ipc::Queue::<u8>::bounded(3).unwrap();
    /// assert_eq!(q.capacity(), 3);
    /// ```
    pub fn capacity(&self) -> usize {
        self.ring.capacity() as usize
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { ring: self.ring.clone(), getters: self.getters.clone(), _t: PhantomData }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Queue<{}> {{ len: {}, capacity: {} }}",
            std::any::type_name::<T>(),
            self.ring.len(),
            self.ring.capacity()
        )
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        shared::serialize(self.ring.region(), (), serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Queue<T>, D::Error> {
        use serde::de::Error as _;
        let (region, ()) = shared::deserialize(deserializer, "queue", |_, _| Ok(()))?;
        let ring =
            Ring::open(region).map_err(|e| D::Error::custom(format!("mapping a shared queue: {e}")))?;
        Ok(Queue { ring: Arc::new(ring), getters: Arc::default(), _t: PhantomData })
    }
}
