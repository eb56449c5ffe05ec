//! [`Semaphore`]: one atomic count with futex waits.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{wait_on, wake_all};
use crate::Error;
use crate::shared;
use crate::sys::shm::Region;

const SEM_COUNT: usize = 0;
const SEM_WAITERS: usize = 4;

/// A counting semaphore for threads and processes.
///
/// Permits are not owned, as in Python and POSIX: any unit may `release`.
/// That also means a process killed while it holds a permit does not give it
/// back (nobody can know it meant to); where that matters, wait with
/// [`Semaphore::acquire_timeout`], or use a [`Mutex`](crate::sync::Mutex), which does notice. A
/// unit killed while *waiting* changes nothing.
///
/// ```
/// let s = tandem::sync::Semaphore::new(2).unwrap();
/// s.acquire();
/// assert!(s.try_acquire());
/// assert!(!s.try_acquire());
/// s.release();
/// assert!(s.try_acquire());
/// ```
#[derive(Clone)]
pub struct Semaphore {
    region: Arc<Region>,
}

impl Semaphore {
    /// A semaphore with `permits` permits.
    ///
    /// ```
    /// let s = tandem::sync::Semaphore::new(3).unwrap();
    /// assert_eq!(s.available(), 3);
    /// ```
    pub fn new(permits: u32) -> Result<Semaphore, Error> {
        let region = shared::make_region(8, "semaphore")?;
        region.atomic_u32(SEM_COUNT).store(permits, Ordering::Release);
        Ok(Semaphore { region: Arc::new(region) })
    }

    fn count(&self) -> &AtomicU32 {
        self.region.atomic_u32(SEM_COUNT)
    }

    /// Take a permit, waiting for one as long as it takes.
    ///
    /// ```
    /// tandem::init();
    /// let s = tandem::sync::Semaphore::new(0).unwrap();
    /// let h = tandem::process::spawn(s.clone(), |s| s.release()).unwrap();
    /// s.acquire(); // waits for the process's release
    /// h.join().unwrap();
    /// ```
    pub fn acquire(&self) {
        self.acquire_until(None);
    }

    /// Take a permit, waiting at most `limit`; `false` if none came.
    ///
    /// ```
    /// let s = tandem::sync::Semaphore::new(0).unwrap();
    /// assert!(!s.acquire_timeout(std::time::Duration::from_millis(1)));
    /// ```
    pub fn acquire_timeout(&self, limit: Duration) -> bool {
        self.acquire_until(Some(Instant::now() + limit))
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.try_acquire() {
                return true;
            }
            if !wait_on(self.count(), 0, Some(self.region.atomic_u32(SEM_WAITERS)), deadline) {
                return self.try_acquire();
            }
        }
    }

    /// Take a permit if one is free, without waiting.
    ///
    /// ```
    /// let s = tandem::sync::Semaphore::new(1).unwrap();
    /// assert!(s.try_acquire());
    /// assert!(!s.try_acquire());
    /// ```
    pub fn try_acquire(&self) -> bool {
        let count = self.count();
        let mut now = count.load(Ordering::Acquire);
        while now > 0 {
            match count.compare_exchange_weak(now, now - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
        false
    }

    /// Give a permit back (or add one).
    ///
    /// ```
    /// let s = tandem::sync::Semaphore::new(0).unwrap();
    /// s.release();
    /// assert!(s.try_acquire());
    /// ```
    pub fn release(&self) {
        self.count().fetch_add(1, Ordering::SeqCst);
        if self.region.atomic_u32(SEM_WAITERS).load(Ordering::SeqCst) > 0 {
            // All, not one: a single woken unit might be killed before it
            // takes the permit, leaving the others asleep beside it.
            wake_all(self.count());
        }
    }

    /// Permits free now (a snapshot).
    ///
    /// ```
    /// let s = tandem::sync::Semaphore::new(2).unwrap();
    /// s.acquire();
    /// assert_eq!(s.available(), 1);
    /// ```
    pub fn available(&self) -> u32 {
        self.count().load(Ordering::Acquire)
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Semaphore {{ available: {} }}", self.available())
    }
}

impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        shared::serialize(&self.region, (), serializer)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Semaphore, D::Error> {
        let (region, ()) = shared::deserialize(deserializer, "semaphore", shared::at_least(8, "semaphore"))?;
        Ok(Semaphore { region: Arc::new(region) })
    }
}
