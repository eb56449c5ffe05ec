//! Many machines (feature `cluster`): the same [`Pool`](crate::Pool) over a
//! cluster of agents, through a Redis broker.
//!
//! On each machine the same program (the same build) runs an [`Agent`],
//! which takes tasks from the broker and runs each in a local process pool:
//! a crash, a time-out, a memory limit or a sandbox apply there as on one
//! machine. The driver builds its pool with
//! [`PoolBuilder::cluster`](crate::PoolBuilder::cluster); switching is one
//! line, and `submit`, `map`, `map_unordered`, `cancel`, `join`, `.await` and
//! `stats` work as in the other modes.
//!
//! ```no_run
//! use std::time::Duration;
//! use tandem::cluster::{Agent, Cluster};
//!
//! fn main() -> Result<(), tandem::Error> {
//!     tandem::init();
//!     let secret = b"a long random key shared by the driver and its agents";
//!     if std::env::args().nth(1).as_deref() == Some("agent") {
//!         // On each machine: serve until the broker says stop.
//!         return Agent::connect("redis://10.0.0.5:6379/0")?.key(secret).workers(8).serve();
//!     }
//!     let pool = tandem::Pool::builder()
//!         .cluster(Cluster::connect("redis://10.0.0.5:6379/0")?.key(secret).lease(Duration::from_secs(10)))
//!         .task_timeout(Duration::from_secs(60))
//!         .build()?;
//!     let squares: Vec<u64> = pool.map(0..1000u64, |x| x * x).map(Result::unwrap).collect();
//!     assert_eq!(squares[12], 144);
//!     Ok(())
//! }
//! ```
//!
//! **What a lost node costs.** Each task an agent takes is *leased* to it:
//! the agent renews the lease while the task runs. A node that dies, loses
//! its network or stops (SIGSTOP, a hung machine) for longer than the lease
//! loses only its running tasks: the driver sends each again, to any agent,
//! up to `node_losses` times, then resolves it with
//! [`Error::NodeLost`]. An agent that finds its
//! lease gone (it was too slow to renew) cancels its local task; an answer
//! that arrives after its try was given up is dropped. Every handle resolves
//! exactly once; a task runs at least once, and more than once only when a
//! node was judged lost while it ran.
//!
//! **A crash is not a lost node.** A task that kills its local worker fails
//! with [`Error::WorkerDied`] naming the node
//! (`node: Some(name)`), and runs again only as `retries(n)` says.
//!
//! **Trust.** Every task frame carries the build id of the driver's program
//! (the SHA-256 of its executable) and every frame an HMAC-SHA256 tag made
//! with the shared key: an agent refuses a frame without a valid tag or from
//! another build, and the driver's handle resolves with
//! [`Error::Refused`]; nothing runs. A function
//! travels as its offset in the executable, so only the same build can run
//! it. The broker's own protection (ACLs, TLS, a private network) is the
//! operator's: see SECURITY.md.
//!
//! **Broker trouble.** If the broker cannot be reached for longer than the
//! lease, every open handle resolves with `Error::Io`, and new tasks fail
//! until it is back. With no agent alive for longer than the lease (an
//! agent's heartbeat lasts 3 s), every open handle likewise resolves with
//! `Error::Io` saying so: nothing waits for ever, and dropping the pool
//! returns. The driver beats a heartbeat in the broker; agents drop the
//! tasks of a driver whose heartbeat has stopped (it died), and drivers clear
//! the pending entries of drivers that are gone.
//!
//! Arguments and results cross machines as bytes: a value holding a
//! shareable object (`ipc`, `shm`, `sync`) is refused with `Error::Codec`.

mod agent;

use std::time::Duration;

pub use agent::Agent;

use crate::Error;
use crate::broker::Broker;
use crate::broker::frame::Key;
use crate::pool::remote::Settings;

/// The driver's side of a cluster: where the broker is, the key, and how
/// lost nodes are treated. Give it to
/// [`PoolBuilder::cluster`](crate::PoolBuilder::cluster).
///
/// ```no_run
/// use std::time::Duration;
/// let cluster = tandem::cluster::Cluster::connect("redis+unix:///run/redis/redis.sock")
///     .unwrap()
///     .key(b"secret")
///     .lease(Duration::from_secs(10))
///     .node_losses(3);
/// let pool = tandem::Pool::builder().cluster(cluster).build().unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Cluster {
    settings: Settings,
}

impl Cluster {
    /// The broker at `url` (`redis://HOST:PORT/DB` or
    /// `redis+unix:///PATH`), checked now: an error if it cannot be reached
    /// within 5 seconds.
    ///
    /// ```
    /// let refused = tandem::cluster::Cluster::connect("redis://127.0.0.1:1/0");
    /// assert!(matches!(refused, Err(tandem::Error::Io(_))));
    /// ```
    pub fn connect(url: &str) -> Result<Cluster, Error> {
        Broker::connect(url, Duration::from_secs(5))?;
        Ok(Cluster {
            settings: Settings {
                url: url.to_owned(),
                key: None,
                lease: Duration::from_secs(10),
                node_losses: 3,
            },
        })
    }

    /// The key every frame is authenticated with (the agents' key; any
    /// length, best 32 random bytes). Required.
    ///
    /// ```no_run
    /// let cluster = tandem::cluster::Cluster::connect("redis://127.0.0.1:6379/0").unwrap().key(b"secret");
    /// ```
    pub fn key(mut self, key: &[u8]) -> Cluster {
        self.settings.key = Some(Key::new(key));
        self
    }

    /// How long a silent node keeps its tasks (default 10 s): a task whose
    /// agent has not renewed its lease for this long runs again elsewhere.
    /// Also how long the broker may be out of reach before every open
    /// handle fails.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let cluster = tandem::cluster::Cluster::connect("redis://127.0.0.1:6379/0").unwrap().lease(Duration::from_secs(2));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Cluster {
        self.settings.lease = lease.max(Duration::from_millis(50));
        self
    }

    /// How many times a task may run again after its node was lost
    /// (default 3); one more loss resolves it with `Error::NodeLost`.
    ///
    /// ```no_run
    /// let cluster = tandem::cluster::Cluster::connect("redis://127.0.0.1:6379/0").unwrap().node_losses(0);
    /// ```
    pub fn node_losses(mut self, n: u32) -> Cluster {
        self.settings.node_losses = n;
        self
    }

    /// Tell every agent of this broker to stop serving: each finishes
    /// nothing more, cancels its running tasks (their drivers run them
    /// again elsewhere after the lease) and returns from
    /// [`Agent::serve`] with `Ok`.
    ///
    /// ```no_run
    /// tandem::cluster::Cluster::connect("redis://127.0.0.1:6379/0").unwrap().stop_agents().unwrap();
    /// ```
    pub fn stop_agents(&self) -> Result<(), Error> {
        Broker::connect(&self.settings.url, Duration::from_secs(5))?.stop_agents()
    }

    pub(crate) fn settings(self) -> Settings {
        self.settings
    }
}
