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

mod channel;
mod err;
mod queue;
mod queue_async;
mod ring;

pub use channel::{Receiver, RecvFuture, Sender, channel, channel_with_max_message};
pub use err::{RecvError, RecvTimeoutError, SendError, TryRecvError};
pub use queue::Queue;
pub use queue_async::GetFuture;

use crate::wire;

/// The default largest channel message: 1 GiB (as for task arguments).
///
/// ```
/// assert_eq!(tandem::ipc::DEFAULT_MAX_MESSAGE, 1 << 30);
/// ```
pub const DEFAULT_MAX_MESSAGE: usize = wire::DEFAULT_MAX_MESSAGE as usize;
/// The default largest queue item, serialized: 4 KiB.
///
/// ```
/// use tandem::ipc::{DEFAULT_MAX_ITEM, Queue};
/// let q = Queue::<Vec<u8>>::bounded(2).unwrap();
/// assert!(q.put(vec![0; DEFAULT_MAX_ITEM]).is_err()); // with its length prefix, too big
/// assert!(q.put(vec![0; DEFAULT_MAX_ITEM - 8]).is_ok());
/// ```
pub const DEFAULT_MAX_ITEM: usize = 4096;
