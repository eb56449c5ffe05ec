//! What each channel operation can fail with, one type per operation (the
//! std / crossbeam shape). A [`Queue`](super::Queue) fails with
//! [`Error`] itself: `TimedOut`, `TooLarge`, `Codec`, `Io`.

use std::fmt;

use crate::Error;

/// Why a message was not sent. The message comes back.
///
/// `Debug` does not print the message, so `unwrap()` works for any `T`.
///
/// ```
/// use tandem::ipc::SendError;
/// let (tx, rx) = tandem::ipc::channel::<String>().unwrap();
/// drop(rx);
/// let err = tx.send("lost".into()).unwrap_err();
/// assert!(matches!(err, SendError::Disconnected(_)));
/// assert!(err.to_string().contains("receiver is gone"));
/// ```
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
    ///
    /// ```
    /// let (tx, rx) = tandem::ipc::channel::<String>().unwrap();
    /// drop(rx);
    /// let back = tx.send("kept".into()).unwrap_err().into_inner();
    /// assert_eq!(back, "kept");
    /// ```
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

/// Why [`Receiver::recv`](crate::ipc::Receiver::recv) returned no message.
///
/// ```
/// use tandem::ipc::RecvError;
/// let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
/// drop(tx);
/// let err = rx.recv().unwrap_err();
/// assert!(matches!(err, RecvError::Disconnected));
/// assert!(err.to_string().contains("senders are all gone"));
/// ```
#[derive(Debug)]
pub enum RecvError {
    /// Every sender is gone (dropped, or its process died) and no message is
    /// left.
    Disconnected,
    /// A message arrived but could not be read: not decodable as `T`, or the
    /// stream was cut by a sender killed mid-message ([`Error::Broken`]).
    Failed(Error),
}

/// Why [`Receiver::recv_timeout`](crate::ipc::Receiver::recv_timeout) returned no message.
///
/// ```
/// use std::time::Duration;
/// use tandem::ipc::RecvTimeoutError;
/// let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
/// assert!(matches!(rx.recv_timeout(Duration::ZERO), Err(RecvTimeoutError::Timeout)));
/// drop(tx);
/// assert!(matches!(rx.recv_timeout(Duration::ZERO), Err(RecvTimeoutError::Disconnected)));
/// ```
#[derive(Debug)]
pub enum RecvTimeoutError {
    /// No message came within the time limit.
    Timeout,
    /// Every sender is gone and no message is left.
    Disconnected,
    /// As [`RecvError::Failed`].
    Failed(Error),
}

/// Why [`Receiver::try_recv`](crate::ipc::Receiver::try_recv) returned no message.
///
/// ```
/// use tandem::ipc::TryRecvError;
/// let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
/// assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
/// drop(tx);
/// assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
/// ```
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
