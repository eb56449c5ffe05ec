//! [`Event`]: one atomic flag with futex waits.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{wait_on, wake_all};
use crate::Error;
use crate::shared;
use crate::sys::shm::Region;

const EVENT_FLAG: usize = 0;
const EVENT_WAITERS: usize = 4;

/// A flag units can wait for: the `threading.Event` analogue, across
/// processes too.
///
/// ```
/// use std::time::Duration;
/// tandem::init();
/// let ready = tandem::sync::Event::new().unwrap();
/// let h = tandem::process::spawn(ready.clone(), |e| e.set()).unwrap();
/// assert!(ready.wait_timeout(Duration::from_secs(30)));
/// assert!(ready.is_set());
/// h.join().unwrap();
/// ```
#[derive(Clone)]
pub struct Event {
    region: Arc<Region>,
}

impl Event {
    /// A new event, not set.
    ///
    /// ```
    /// let e = tandem::sync::Event::new().unwrap();
    /// assert!(!e.is_set());
    /// ```
    pub fn new() -> Result<Event, Error> {
        Ok(Event { region: Arc::new(shared::make_region(8, "event")?) })
    }

    fn flag(&self) -> &AtomicU32 {
        self.region.atomic_u32(EVENT_FLAG)
    }

    /// Set the flag and wake everyone waiting for it.
    ///
    /// ```
    /// let e = tandem::sync::Event::new().unwrap();
    /// let seen = e.clone();
    /// e.set();
    /// assert!(seen.is_set()); // clones are the same event
    /// ```
    pub fn set(&self) {
        self.flag().store(1, Ordering::SeqCst);
        if self.region.atomic_u32(EVENT_WAITERS).load(Ordering::SeqCst) > 0 {
            wake_all(self.flag());
        }
    }

    /// Lower the flag.
    ///
    /// ```
    /// let e = tandem::sync::Event::new().unwrap();
    /// e.set();
    /// e.clear();
    /// assert!(!e.is_set());
    /// ```
    pub fn clear(&self) {
        self.flag().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set now.
    ///
    /// ```
    /// let e = tandem::sync::Event::new().unwrap();
    /// e.set();
    /// assert!(e.is_set());
    /// ```
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::Acquire) != 0
    }

    /// Wait until the flag is set.
    ///
    /// ```
    /// tandem::init();
    /// let go = tandem::sync::Event::new().unwrap();
    /// let h = tandem::process::spawn(go.clone(), |go| {
    ///     go.wait();
    ///     7u8
    /// })
    /// .unwrap();
    /// go.set();
    /// assert_eq!(h.join().unwrap(), 7);
    /// ```
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Wait at most `limit` for the flag; returns whether it is set.
    ///
    /// ```
    /// let e = tandem::sync::Event::new().unwrap();
    /// assert!(!e.wait_timeout(std::time::Duration::from_millis(1)));
    /// e.set();
    /// assert!(e.wait_timeout(std::time::Duration::ZERO));
    /// ```
    pub fn wait_timeout(&self, limit: Duration) -> bool {
        self.wait_until(Some(Instant::now() + limit))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.is_set() {
                return true;
            }
            if !wait_on(self.flag(), 0, Some(self.region.atomic_u32(EVENT_WAITERS)), deadline) {
                return self.is_set();
            }
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Event {{ set: {} }}", self.is_set())
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        shared::serialize(&self.region, (), serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        let (region, ()) = shared::deserialize(deserializer, "event", shared::at_least(8, "event"))?;
        Ok(Event { region: Arc::new(region) })
    }
}
