//! The channel: many senders, one receiver, frames on a Unix socket pair.
//!
//! Senders in different processes share one robust lock (in a small shared
//! region) held while a frame is written, so frames never interleave; a
//! sender killed mid-frame leaves the region marked torn, and both ends
//! then report the channel broken instead of misreading the stream.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DEFAULT_MAX_MESSAGE;
use super::err::{RecvError, RecvTimeoutError, SendError, TryRecvError};
use crate::Error;
use crate::backoff::Backoff;
use crate::codec::{self, RecvFd, SendFd};
use crate::shared;
use crate::sys::robust::{Acquired, MUTEX_BYTES, RobustMutex};
use crate::sys::shm::Region;
use crate::watch::{Readiness, WATCHER};
use crate::wire::{self, Kind};

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
    let region = shared::make_region(SENDERS_LEN, "channel")?;
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
        match lock.lock(&Backoff::MEMORY) {
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
        shared::serialize(&self.shared.region, SendFd(self.shared.sock.as_fd()), serializer)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Sender<T>, D::Error> {
        let (region, RecvFd(sock)) =
            shared::deserialize(deserializer, "channel", shared::at_least(SENDERS_LEN, "channel"))?;
        Ok(Sender { shared: Arc::new(SenderShared { sock, region }), _t: PhantomData })
    }
}

/// The receiving end of a channel. One receiver; it can be moved to another
/// thread or sent to a process, but not shared (`Send`, not `Sync`).
///
/// ```
/// tandem::init();
/// let (tx, rx) = tandem::ipc::channel::<u32>().unwrap();
/// // The receiver goes to a process; the answer comes back on another channel.
/// let (back_tx, back_rx) = tandem::ipc::channel::<u32>().unwrap();
/// let h = tandem::process::spawn((rx, back_tx), |(rx, back)| {
///     back.send(rx.iter().sum()).unwrap();
/// })
/// .unwrap();
/// for i in 1..=3 {
///     tx.send(i).unwrap();
/// }
/// drop(tx); // ends the worker's iter()
/// assert_eq!(back_rx.recv().unwrap(), 6);
/// h.join().unwrap();
/// ```
pub struct Receiver<T> {
    sock: OwnedFd,
    max: u64,
    broken: Cell<bool>,
    _t: PhantomData<fn() -> T>, // `broken` (a Cell) keeps it !Sync, as std's Receiver
}

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
        // a sender on another CPU need not wake this one (see `backoff`).
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
    ///
    /// ```
    /// let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
    /// tx.send(1).unwrap();
    /// tx.send(2).unwrap();
    /// drop(tx);
    /// assert_eq!(rx.iter().collect::<Vec<_>>(), [1, 2]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }

    /// Wait for the next message without blocking the executor: a future
    /// with [`recv`](Self::recv)'s output. While it waits, one shared
    /// background thread watches the socket (no thread per receiver); a
    /// sender that dies or drops its end ends the wait with
    /// `Err(RecvError::Disconnected)` once every sender is gone.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// tandem::init();
    /// let (tx, rx) = tandem::ipc::channel::<u32>().unwrap();
    /// let h = tandem::process::spawn(tx, |tx| tx.send(7).unwrap()).unwrap();
    /// assert_eq!(rx.recv_async().await.unwrap(), 7);
    /// h.await.unwrap();
    /// assert!(matches!(rx.recv_async().await, Err(tandem::ipc::RecvError::Disconnected)));
    /// # });
    /// ```
    pub fn recv_async(&self) -> RecvFuture<'_, T> {
        RecvFuture { rx: self, watch: None }
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

/// The future of [`Receiver::recv_async`].
#[must_use = "a future does nothing unless awaited"]
pub struct RecvFuture<'a, T> {
    rx: &'a Receiver<T>,
    /// The watcher's registration while it waits: key and readiness.
    watch: Option<(u64, Arc<Readiness>)>,
}

impl<T: DeserializeOwned> Future for RecvFuture<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some((_, ready)) = &this.watch {
                if !ready.fired() {
                    ready.update(cx.waker());
                    // Fired between the look and the update: look again.
                    if !ready.fired() {
                        return Poll::Pending;
                    }
                }
                this.watch = None;
            }
            match this.rx.try_recv() {
                Ok(value) => return Poll::Ready(Ok(value)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(Err(RecvError::Disconnected)),
                Err(TryRecvError::Failed(e)) => return Poll::Ready(Err(RecvError::Failed(e))),
                Err(TryRecvError::Empty) => {}
            }
            // Level-triggered: a message that came after the look above
            // fires the registration at once.
            let ready = Arc::new(Readiness::new(cx.waker()));
            match WATCHER.watch_ready(ready.clone(), this.rx.sock.as_fd()) {
                Ok(key) => this.watch = Some((key, ready)),
                Err(e) => return Poll::Ready(Err(RecvError::Failed(e))),
            }
        }
    }
}

impl<T> Drop for RecvFuture<'_, T> {
    fn drop(&mut self) {
        if let Some((key, ready)) = &self.watch
            && !ready.fired()
        {
            WATCHER.unwatch(*key);
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
