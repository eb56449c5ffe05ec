//! Channels and queues between threads and processes: the
//! `multiprocessing.Pipe` / `Queue` analogues.
//!
//! - [`channel`]: many senders, one receiver, any `Serialize` message (even
//!   ones carrying other shareable tandem objects). Messages travel as frames
//!   on an anonymous Unix socket pair. The std/crossbeam shape: `send`,
//!   `recv`, `recv_timeout`, `try_recv`, and a receiver whose senders are all
//!   gone — dropped, or their processes died — gets `Disconnected`.
//! - [`Queue`]: bounded, many producers and many consumers, any mix of
//!   threads and processes, items serialized into a ring in anonymous shared
//!   memory. A unit killed in the middle of `put` or `get` leaves it
//!   consistent and blocks nobody.
//!
//! ```
//! tandem::init();
//! let (tx, rx) = tandem::ipc::channel::<String>().unwrap();
//! let h = tandem::process::spawn(tx, |tx| tx.send("hello".into()).unwrap()).unwrap();
//! assert_eq!(rx.recv().unwrap(), "hello");
//! h.join().unwrap();
//! assert!(rx.recv().is_err()); // the only sender is gone: disconnected
//! ```

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::codec::{self, RecvFd, SendFd};
use crate::sys::ring::{Ring, RingError};
use crate::sys::robust::{Acquired, MUTEX_BYTES, RobustMutex};
use crate::sys::shm::Region;
use crate::wire::{self, Kind};

/// The default largest channel message: 1 GiB (as for task arguments).
pub const DEFAULT_MAX_MESSAGE: usize = wire::DEFAULT_MAX_MESSAGE as usize;
/// The default largest queue item, serialized: 4 KiB.
pub const DEFAULT_MAX_ITEM: usize = 4096;

// ---------------------------------------------------------------- channel

/// Make a channel with the default message limit ([`DEFAULT_MAX_MESSAGE`]).
///
/// ```
/// let (tx, rx) = tandem::ipc::channel::<u32>().unwrap();
/// tx.send(7).unwrap();
/// assert_eq!(rx.recv().unwrap(), 7);
/// ```
pub fn channel<T: Serialize + DeserializeOwned>() -> Result<(Sender<T>, Receiver<T>), Error> {
    channel_with_max_message(DEFAULT_MAX_MESSAGE)
}

/// Make a channel whose messages may be at most `max_message` bytes,
/// serialized. A bigger message fails in [`Sender::send`] with
/// [`Error::TooLarge`]; it is never sent, so the receiver never allocates it.
///
/// ```
/// use tandem::ipc::SendError;
/// let (tx, _rx) = tandem::ipc::channel_with_max_message::<Vec<u8>>(100).unwrap();
/// match tx.send(vec![0; 1000]) {
///     Err(SendError::Failed(v, tandem::Error::TooLarge { .. })) => assert_eq!(v.len(), 1000),
///     other => panic!("{other:?}"),
/// }
/// ```
pub fn channel_with_max_message<T: Serialize + DeserializeOwned>(
    max_message: usize,
) -> Result<(Sender<T>, Receiver<T>), Error> {
    let (send_end, recv_end) =
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
            .map_err(|e| Error::os("making a channel (socketpair)", e))?;
    // The receiver only reads and the senders only write: shutting the
    // unused directions makes a dead peer show up as EOF / EPIPE at once.
    let _ = rustix::net::shutdown(&recv_end, rustix::net::Shutdown::Write);
    let _ = rustix::net::shutdown(&send_end, rustix::net::Shutdown::Read);
    let region = Region::create(SENDERS_LEN).map_err(|e| Error::os("making a channel (memfd + mmap)", e))?;
    RobustMutex::at(&region, 0).init().map_err(|e| Error::os("making a channel's lock", e))?;
    region.atomic_u64(MAX_MESSAGE).store(max_message as u64, Ordering::Release);
    let sender = Sender { shared: Arc::new(SenderShared { sock: send_end, region }), _t: PhantomData };
    let receiver =
        Receiver { sock: recv_end, max: max_message as u64, broken: Cell::new(false), _t: PhantomData };
    Ok((sender, receiver))
}

// The senders' shared block: a lock held while one frame is written, so
// frames from senders in different processes never interleave on the stream.
const WRITING: usize = MUTEX_BYTES;
const TORN: usize = WRITING + 4;
const MAX_MESSAGE: usize = WRITING + 8;
const SENDERS_LEN: usize = MAX_MESSAGE + 8;

struct SenderShared {
    sock: OwnedFd,
    region: Region,
}

/// The sending end of a channel. Clone it for more senders (in any threads
/// or processes); all clones feed the same receiver.
///
/// ```
/// tandem::init();
/// let (tx, rx) = tandem::ipc::channel::<u64>().unwrap();
/// let a = tandem::process::spawn(tx.clone(), |tx| tx.send(1).unwrap()).unwrap();
/// let b = tandem::thread::spawn(tx, |tx| tx.send(2).unwrap()).unwrap();
/// a.join().unwrap();
/// b.join().unwrap();
/// let mut got: Vec<u64> = rx.iter().collect(); // ends when every sender is gone
/// got.sort();
/// assert_eq!(got, [1, 2]);
/// ```
pub struct Sender<T> {
    shared: Arc<SenderShared>,
    _t: PhantomData<fn(T)>,
}

/// Why a message was not sent. The message comes back.
///
/// `Debug` does not print the message, so `unwrap()` works for any `T`.
pub enum SendError<T> {
    /// The receiver is gone (dropped, or its process died).
    Disconnected(T),
    /// The message could not be sent: over the size limit
    /// ([`Error::TooLarge`]), not serializable ([`Error::Codec`]), the
    /// channel broken by a sender killed mid-message ([`Error::Broken`]), or
    /// an OS failure.
    Failed(T, Error),
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Disconnected(v) | SendError::Failed(v, _) => v,
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => {
                write!(f, "sending on a channel whose receiver is gone (dropped, or its process died)")
            }
            SendError::Failed(_, e) => write!(f, "the message was not sent: {e}"),
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => write!(f, "Disconnected(..)"),
            SendError::Failed(_, e) => f.debug_tuple("Failed").field(&"..").field(e).finish(),
        }
    }
}

impl<T> std::error::Error for SendError<T> {}

impl<T: Serialize> Sender<T> {
    /// Send `value`. Blocks only while the channel's buffer is full.
    ///
    /// ```
    /// let (tx, rx) = tandem::ipc::channel::<u32>().unwrap();
    /// drop(rx);
    /// assert!(matches!(tx.send(5), Err(tandem::ipc::SendError::Disconnected(5))));
    /// ```
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let encoded = match codec::encode(&value) {
            Ok(e) => e,
            Err(e) => return Err(SendError::Failed(value, e)),
        };
        let region = &self.shared.region;
        let max = region.atomic_u64(MAX_MESSAGE).load(Ordering::Acquire);
        if encoded.bytes.len() as u64 > max {
            return Err(SendError::Failed(value, Error::TooLarge { size: encoded.bytes.len() as u64, max }));
        }
        let lock = RobustMutex::at(region, 0);
        match lock.lock() {
            Ok(Acquired::Clean) => {}
            Ok(Acquired::OwnerDied) => {
                // A sender died holding the lock; if it was mid-frame, the
                // stream now ends in half a message and cannot be resynced.
                if region.atomic_u32(WRITING).load(Ordering::Acquire) != 0 {
                    region.atomic_u32(TORN).store(1, Ordering::Release);
                }
            }
            Err(e) => return Err(SendError::Failed(value, Error::os("locking a channel for sending", e))),
        }
        if region.atomic_u32(TORN).load(Ordering::Acquire) != 0 {
            lock.unlock();
            return Err(SendError::Failed(
                value,
                Error::Broken(
                    "the channel is broken: a sender was killed in the middle of a message, so the stream cannot be read past it; make a new channel".into(),
                ),
            ));
        }
        region.atomic_u32(WRITING).store(1, Ordering::Release);
        let sent = wire::send(
            self.shared.sock.as_fd(),
            Kind::Message,
            &[&encoded.bytes],
            &codec::borrowed(&encoded.fds),
        );
        region.atomic_u32(WRITING).store(0, Ordering::Release);
        lock.unlock();
        match sent {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) => {
                Err(SendError::Disconnected(value))
            }
            Err(e) => Err(SendError::Failed(value, Error::os("sending on a channel", e))),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender { shared: self.shared.clone(), _t: PhantomData }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sender<{}>", std::any::type_name::<T>())
    }
}

impl<T> Serialize for Sender<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (SendFd(self.shared.sock.as_fd()), SendFd(self.shared.region.fd())).serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Sender<T>, D::Error> {
        use serde::de::Error as _;
        let (RecvFd(sock), RecvFd(region)) = <(RecvFd, RecvFd)>::deserialize(deserializer)?;
        let region = Region::open(region).map_err(|e| D::Error::custom(format!("mapping a channel: {e}")))?;
        if region.len() < SENDERS_LEN {
            return Err(D::Error::custom("a channel sender arrived with too little shared memory"));
        }
        Ok(Sender { shared: Arc::new(SenderShared { sock, region }), _t: PhantomData })
    }
}

/// The receiving end of a channel. One receiver; it can be moved to another
/// thread or sent to a process, but not shared (`Send`, not `Sync`).
pub struct Receiver<T> {
    sock: OwnedFd,
    max: u64,
    broken: Cell<bool>,
    _t: PhantomData<fn() -> T>, // `broken` (a Cell) keeps it !Sync, as std's Receiver
}

/// Why [`Receiver::recv`] returned no message.
#[derive(Debug)]
pub enum RecvError {
    /// Every sender is gone (dropped, or its process died) and no message is
    /// left.
    Disconnected,
    /// A message arrived but could not be read: not decodable as `T`, or the
    /// stream was cut by a sender killed mid-message ([`Error::Broken`]).
    Failed(Error),
}

/// Why [`Receiver::recv_timeout`] returned no message.
#[derive(Debug)]
pub enum RecvTimeoutError {
    /// No message came within the time limit.
    Timeout,
    /// Every sender is gone and no message is left.
    Disconnected,
    /// As [`RecvError::Failed`].
    Failed(Error),
}

/// Why [`Receiver::try_recv`] returned no message.
#[derive(Debug)]
pub enum TryRecvError {
    /// No message is waiting.
    Empty,
    /// Every sender is gone and no message is left.
    Disconnected,
    /// As [`RecvError::Failed`].
    Failed(Error),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => write!(
                f,
                "receiving on a channel whose senders are all gone (dropped, or their processes died)"
            ),
            RecvError::Failed(e) => write!(f, "a message could not be received: {e}"),
        }
    }
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => write!(f, "no message arrived within the time limit"),
            RecvTimeoutError::Disconnected => fmt::Display::fmt(&RecvError::Disconnected, f),
            RecvTimeoutError::Failed(e) => write!(f, "a message could not be received: {e}"),
        }
    }
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => write!(f, "no message is waiting"),
            TryRecvError::Disconnected => fmt::Display::fmt(&RecvError::Disconnected, f),
            TryRecvError::Failed(e) => write!(f, "a message could not be received: {e}"),
        }
    }
}

impl std::error::Error for RecvError {}
impl std::error::Error for RecvTimeoutError {}
impl std::error::Error for TryRecvError {}

impl<T: DeserializeOwned> Receiver<T> {
    /// Wait for the next message.
    ///
    /// ```
    /// let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
    /// tx.send(1).unwrap();
    /// drop(tx);
    /// assert_eq!(rx.recv().unwrap(), 1);
    /// assert!(matches!(rx.recv(), Err(tandem::ipc::RecvError::Disconnected)));
    /// ```
    pub fn recv(&self) -> Result<T, RecvError> {
        if self.broken.get() {
            return Err(RecvError::Failed(torn("an earlier message was cut")));
        }
        // Once the first byte is here the sender is writing the whole frame
        // under its lock, so the rest is read without a deadline: giving up
        // halfway would lose the stream's framing. A message often follows
        // within microseconds: try the read for a moment before sleeping, so
        // a sender on another CPU need not wake this one (`wire::SPIN`).
        match wire::recv_spin_then_block(self.sock.as_fd(), self.max) {
            Ok(frame) if frame.kind == Kind::Message => {
                codec::decode(&frame.payload, frame.fds).map_err(RecvError::Failed)
            }
            Ok(frame) => {
                self.broken.set(true);
                Err(RecvError::Failed(torn(&format!("unexpected frame {:?}", frame.kind))))
            }
            Err(wire::RecvError::Closed) => Err(RecvError::Disconnected),
            Err(wire::RecvError::Malformed(why)) | Err(wire::RecvError::Truncated(why)) => {
                self.broken.set(true);
                Err(RecvError::Failed(torn(&why)))
            }
            Err(wire::RecvError::TimedOut) => unreachable!("no deadline was given"),
            Err(wire::RecvError::Io(e)) => Err(RecvError::Failed(Error::os("receiving on a channel", e))),
        }
    }

    /// Wait at most `limit` for the next message.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tandem::ipc::RecvTimeoutError;
    /// let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
    /// assert!(matches!(rx.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Timeout)));
    /// tx.send(3).unwrap();
    /// assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), 3);
    /// ```
    pub fn recv_timeout(&self, limit: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.readable(Some(left)) {
                Ok(true) => break,
                Ok(false) if left.is_zero() => return Err(RecvTimeoutError::Timeout),
                Ok(false) => continue,
                Err(e) => return Err(RecvTimeoutError::Failed(e)),
            }
        }
        self.recv().map_err(|e| match e {
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
            RecvError::Failed(e) => RecvTimeoutError::Failed(e),
        })
    }

    /// Take a message if one is waiting, without blocking.
    ///
    /// ```
    /// let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
    /// assert!(matches!(rx.try_recv(), Err(tandem::ipc::TryRecvError::Empty)));
    /// tx.send(4).unwrap();
    /// assert_eq!(rx.try_recv().unwrap(), 4);
    /// ```
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.readable(Some(Duration::ZERO)) {
            Ok(true) => {}
            Ok(false) => return Err(TryRecvError::Empty),
            Err(e) => return Err(TryRecvError::Failed(e)),
        }
        self.recv().map_err(|e| match e {
            RecvError::Disconnected => TryRecvError::Disconnected,
            RecvError::Failed(e) => TryRecvError::Failed(e),
        })
    }

    /// Messages until every sender is gone (or a message fails).
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    fn readable(&self, wait: Option<Duration>) -> Result<bool, Error> {
        let timeout = wait.map(|d| Timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos() as i64 });
        let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(Error::os("waiting on a channel", e)),
        }
    }
}

fn torn(why: &str) -> Error {
    Error::Broken(format!(
        "the channel is broken: {why} (a sender was probably killed in the middle of a message); make a new channel"
    ))
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receiver<{}>", std::any::type_name::<T>())
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (SendFd(self.sock.as_fd()), self.max).serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Receiver<T>, D::Error> {
        let (RecvFd(sock), max) = <(RecvFd, u64)>::deserialize(deserializer)?;
        Ok(Receiver { sock, max, broken: Cell::new(false), _t: PhantomData })
    }
}

// ---------------------------------------------------------------- Queue

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
    ring: Arc<Ring>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue holding at most `capacity` items of up to
    /// [`DEFAULT_MAX_ITEM`] bytes each, serialized.
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
        Ok(Queue { ring: Arc::new(ring), _t: PhantomData })
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
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the queue is empty now (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items it holds.
    pub fn capacity(&self) -> usize {
        self.ring.capacity() as usize
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { ring: self.ring.clone(), _t: PhantomData }
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
        SendFd(self.ring.region().fd()).serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Queue<T>, D::Error> {
        use serde::de::Error as _;
        let RecvFd(fd) = RecvFd::deserialize(deserializer)?;
        let ring = Region::open(fd)
            .and_then(Ring::open)
            .map_err(|e| D::Error::custom(format!("mapping a shared queue: {e}")))?;
        Ok(Queue { ring: Arc::new(ring), _t: PhantomData })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StartMethod;

    fn send_huge(tx: Sender<Vec<u8>>) {
        // Far bigger than the socket buffer: blocks mid-frame until read.
        tx.send(vec![1u8; 4 << 20]).unwrap();
    }

    #[test]
    fn a_sender_killed_mid_message_breaks_the_channel_clearly() {
        let (tx, rx) = channel::<Vec<u8>>().unwrap();
        let h = crate::process::Builder::new()
            .start_method(StartMethod::ForkServer)
            .spawn(tx.clone(), send_huge)
            .unwrap();
        // Readable means the huge frame has begun: its sender is mid-message.
        let mut fds = [PollFd::new(&rx.sock, PollFlags::IN)];
        rustix::event::poll(&mut fds, None).unwrap();
        h.kill().unwrap();
        assert!(h.join().is_err());
        match tx.send(vec![2]) {
            Err(SendError::Failed(v, Error::Broken(why))) => {
                assert_eq!(v, [2]);
                assert!(why.contains("killed in the middle of a message"), "{why}");
            }
            other => panic!("expected Broken, got {other:?}"),
        }
        drop(tx);
        match rx.recv() {
            Err(RecvError::Failed(Error::Broken(why))) => {
                assert!(why.contains("make a new channel"), "{why}")
            }
            other => panic!("expected Broken, got {:?}", other.map(|v| v.len())),
        }
        assert!(matches!(rx.recv(), Err(RecvError::Failed(Error::Broken(_)))), "stays broken");
    }
}
