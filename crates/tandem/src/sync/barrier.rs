//! [`Barrier`]: a generation count with futex waits, and a table of the
//! processes holding it, checked for liveness while waiting.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::liveness;
use super::{wait_on, wake_all};
use crate::Error;
use crate::shared;
use crate::sys::shm::Region;

const BAR_ARRIVED: usize = 0;
const BAR_GENERATION: usize = 4;
const BAR_BROKEN: usize = 8;
const BAR_PARTIES: usize = 12;
const BAR_DEAD_PID: usize = 16;
const BAR_TABLE: usize = 64;
/// Processes that can hold one barrier at once.
const BAR_SLOTS: usize = 256;
const BAR_LEN: usize = BAR_TABLE + BAR_SLOTS * 16;
/// How often a waiter checks that every process holding the barrier lives.
const LIVENESS_EVERY: Duration = Duration::from_millis(20);

/// Waits until `n` units have called [`Barrier::wait`], then lets them all
/// go: the `threading.Barrier` analogue, across processes too.
///
/// **A dead party breaks it.** Each process holding the barrier is recorded
/// in it (pid and start time). While waiting, a unit checks every 20 ms that
/// all recorded processes still live; if one died without letting go of the
/// barrier (killed, crashed), every waiter — now and later — gets
/// [`Error::Broken`] naming the pid, instead of waiting forever. A process
/// that drops its barrier normally is no longer recorded. Hence `wait`
/// returns a `Result`, unlike std's.
///
/// ```
/// use tandem::sync::Barrier;
/// tandem::init();
/// let b = Barrier::new(2).unwrap();
/// let h = tandem::process::spawn(b.clone(), |b| b.wait().unwrap().is_leader()).unwrap();
/// let here = b.wait().unwrap().is_leader();
/// assert!(here ^ h.join().unwrap()); // exactly one leader
/// ```
#[derive(Clone)]
pub struct Barrier {
    region: Arc<Region>,
    attachment: Arc<Attachment>,
}

/// This process's entry in a barrier's table; cleared on drop.
struct Attachment {
    region: Arc<Region>,
    slot: usize,
}

impl Attachment {
    fn register(region: &Arc<Region>) -> Result<Attachment, String> {
        let pid = std::process::id();
        let start = liveness::start_time(pid).unwrap_or(liveness::UNKNOWN_START);
        for slot in 0..BAR_SLOTS {
            let at = BAR_TABLE + slot * 16;
            if region.atomic_u32(at).compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                region.atomic_u64(at + 8).store(start, Ordering::Release);
                return Ok(Attachment { region: region.clone(), slot });
            }
        }
        Err(format!("more than {BAR_SLOTS} processes hold one barrier; tandem can watch at most {BAR_SLOTS}"))
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let at = BAR_TABLE + self.slot * 16;
        self.region.atomic_u64(at + 8).store(0, Ordering::Release);
        self.region.atomic_u32(at).store(0, Ordering::Release);
    }
}

/// What [`Barrier::wait`] returns: whether this unit was the one that
/// completed the round (exactly one per round is the leader).
///
/// ```
/// let b = tandem::sync::Barrier::new(1).unwrap();
/// let r: tandem::sync::BarrierWaitResult = b.wait().unwrap();
/// assert!(r.is_leader()); // the only party completes every round
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarrierWaitResult {
    leader: bool,
}

impl BarrierWaitResult {
    /// Whether this unit was the leader of its round.
    ///
    /// ```
    /// use tandem::sync::Barrier;
    /// let b = Barrier::new(2).unwrap();
    /// let h = tandem::thread::spawn(b.clone(), |b| b.wait().unwrap().is_leader()).unwrap();
    /// let here = b.wait().unwrap().is_leader();
    /// assert!(here != h.join().unwrap());
    /// ```
    pub fn is_leader(&self) -> bool {
        self.leader
    }
}

impl Barrier {
    /// A barrier for `parties` units (at least 1).
    ///
    /// ```
    /// let b = tandem::sync::Barrier::new(1).unwrap();
    /// assert!(b.wait().unwrap().is_leader());
    /// ```
    pub fn new(parties: u32) -> Result<Barrier, Error> {
        if parties == 0 {
            return Err(Error::os(
                "making a barrier",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "a barrier needs at least 1 party"),
            ));
        }
        let region = Arc::new(shared::make_region(BAR_LEN, "barrier")?);
        region.atomic_u32(BAR_PARTIES).store(parties, Ordering::Release);
        let attachment = Arc::new(Attachment::register(&region).map_err(Error::Broken)?);
        Ok(Barrier { region, attachment })
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        self.region.atomic_u32(at)
    }

    /// Wait for all parties. `Err(Error::Broken)` if a process holding the
    /// barrier died (see the type's documentation); once broken, a barrier
    /// stays broken.
    ///
    /// ```
    /// use tandem::sync::Barrier;
    /// tandem::init();
    /// let b = Barrier::new(3).unwrap();
    /// let hs: Vec<_> =
    ///     (0..2).map(|_| tandem::process::spawn(b.clone(), |b| b.wait().map(|_| ()).unwrap()).unwrap()).collect();
    /// b.wait().unwrap(); // returns once both processes arrived too
    /// hs.into_iter().for_each(|h| h.join().unwrap());
    /// ```
    pub fn wait(&self) -> Result<BarrierWaitResult, Error> {
        let _ = &self.attachment; // held for as long as this handle lives
        if let Some(err) = self.broken() {
            return Err(err);
        }
        let generation = self.word(BAR_GENERATION);
        let seen = generation.load(Ordering::Acquire);
        let arrived = self.word(BAR_ARRIVED).fetch_add(1, Ordering::AcqRel) + 1;
        if arrived >= self.word(BAR_PARTIES).load(Ordering::Acquire) {
            self.word(BAR_ARRIVED).store(0, Ordering::Release);
            generation.fetch_add(1, Ordering::AcqRel);
            wake_all(generation);
            return Ok(BarrierWaitResult { leader: true });
        }
        loop {
            wait_on(generation, seen, None, Some(Instant::now() + LIVENESS_EVERY));
            if generation.load(Ordering::Acquire) != seen {
                return Ok(BarrierWaitResult { leader: false });
            }
            if let Some(err) = self.broken() {
                return Err(err);
            }
            if let Some(pid) = self.dead_holder() {
                self.word(BAR_DEAD_PID).store(pid, Ordering::Release);
                self.word(BAR_BROKEN).store(1, Ordering::Release);
                wake_all(generation);
                return Err(self.broken().expect("just marked broken"));
            }
        }
    }

    fn broken(&self) -> Option<Error> {
        (self.word(BAR_BROKEN).load(Ordering::Acquire) != 0).then(|| {
            Error::Broken(format!(
                "the barrier is broken: process {} holding it died before the round completed, so it can never complete; start the round again with a new barrier",
                self.word(BAR_DEAD_PID).load(Ordering::Acquire)
            ))
        })
    }

    /// A recorded process that no longer runs (gone, a zombie, or its pid
    /// reused by a younger process).
    fn dead_holder(&self) -> Option<u32> {
        (0..BAR_SLOTS).find_map(|slot| {
            let at = BAR_TABLE + slot * 16;
            let pid = self.region.atomic_u32(at).load(Ordering::Acquire);
            let start = self.region.atomic_u64(at + 8).load(Ordering::Acquire);
            if pid == 0 || start == 0 {
                return None; // free, or being filled in
            }
            (!liveness::still_runs(pid, start)).then_some(pid)
        })
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Barrier {{ parties: {} }}", self.word(BAR_PARTIES).load(Ordering::Relaxed))
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        shared::serialize(&self.region, (), serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Barrier, D::Error> {
        use serde::de::Error as _;
        let (region, ()) =
            shared::deserialize(deserializer, "barrier", shared::at_least(BAR_LEN, "barrier"))?;
        let region = Arc::new(region);
        let attachment = Arc::new(Attachment::register(&region).map_err(D::Error::custom)?);
        Ok(Barrier { region, attachment })
    }
}
