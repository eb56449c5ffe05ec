//! [`Mutex`]: glibc's robust process-shared mutex around a [`Plain`] value,
//! poisoned by a holder that panicked or died.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LockResult, PoisonError, TryLockError, TryLockResult};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::backoff::Backoff;
use crate::shared;
use crate::sys::plain::Plain;
use crate::sys::robust::{Acquired, LockedValue, MUTEX_BYTES, RobustMutex};
use crate::sys::shm::Region;

const POISON: usize = MUTEX_BYTES;

fn value_at<T>() -> usize {
    (MUTEX_BYTES + 64).next_multiple_of(align_of::<T>())
}

/// A mutual-exclusion lock around a `T` in shared memory, for threads and
/// processes alike. The std `Mutex` API: `lock()` returns
/// [`LockResult`]`<`[`MutexGuard`]`>`.
///
/// **Poisoning.** As in std, a holder that panics poisons the lock. So does a
/// holder *process that dies* holding it (killed by SIGKILL, aborted,
/// exited): the next `lock()` returns promptly with `Err(PoisonError)`, whose
/// guard is usable ([`PoisonError::into_inner`]) and holds whatever the dead
/// holder last wrote. The lock stays poisoned until [`Mutex::clear_poison`].
///
/// `T` is [`Plain`] data (numbers, atomics, arrays of them): it lives in the
/// shared memory itself, so it cannot own heap memory. For anything else,
/// keep a `Mutex<()>` beside a [`crate::ipc::Queue`] or a channel.
///
/// ```
/// use tandem::sync::Mutex;
/// let m = Mutex::new([0u32; 4]).unwrap();
/// m.lock().unwrap()[1] = 7;
/// let m2 = m.clone(); // the same lock
/// assert_eq!(m2.lock().unwrap()[1], 7);
/// ```
pub struct Mutex<T: Plain> {
    region: Arc<Region>,
    _t: PhantomData<T>,
}

/// The lock held: dereferences to the `T`. Unlocks when dropped.
///
/// Like std's guard, it is not `Send`: the thread that locked must unlock.
///
/// ```
/// let m = tandem::sync::Mutex::new(0u32).unwrap();
/// {
///     let mut g: tandem::sync::MutexGuard<'_, u32> = m.lock().unwrap();
///     *g = 3;
/// } // unlocked here
/// assert_eq!(*m.try_lock().unwrap(), 3);
/// ```
pub struct MutexGuard<'a, T: Plain> {
    value: LockedValue<'a, T>,
    poison: &'a AtomicU32,
}

impl<T: Plain> Mutex<T> {
    /// A new lock holding `value`.
    ///
    /// ```
    /// let m = tandem::sync::Mutex::new(5i64).unwrap();
    /// assert_eq!(*m.lock().unwrap(), 5);
    /// ```
    pub fn new(value: T) -> Result<Mutex<T>, Error> {
        let mut region = shared::make_region(value_at::<T>() + size_of::<T>(), "mutex")?;
        RobustMutex::at(&region, 0).init().map_err(|e| Error::os("making a shared mutex", e))?;
        region.init_value(value_at::<T>(), value);
        Ok(Mutex { region: Arc::new(region), _t: PhantomData })
    }

    fn guard<'a>(&'a self, (value, how): (LockedValue<'a, T>, Acquired)) -> LockResult<MutexGuard<'a, T>> {
        let poison = self.region.atomic_u32(POISON);
        if how == Acquired::OwnerDied {
            poison.store(1, Ordering::Release);
        }
        let guard = MutexGuard { value, poison };
        if poison.load(Ordering::Acquire) != 0 { Err(PoisonError::new(guard)) } else { Ok(guard) }
    }

    /// Wait for the lock and take it.
    ///
    /// `Err(PoisonError)` if a holder panicked or died holding it; the guard
    /// inside is usable. Panics only if the OS refuses the lock operation
    /// itself, which does not happen with a lock made by tandem.
    ///
    /// ```
    /// let m = tandem::sync::Mutex::new(1u8).unwrap();
    /// *m.lock().unwrap() += 1;
    /// assert_eq!(*m.lock().unwrap(), 2);
    /// ```
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        let locked = LockedValue::lock(&self.region, 0, value_at::<T>(), &Backoff::MEMORY)
            .unwrap_or_else(|e| panic!("locking a tandem::sync::Mutex failed: {e}"));
        self.guard(locked)
    }

    /// Take the lock if it is free, without waiting.
    ///
    /// ```
    /// let m = tandem::sync::Mutex::new(0u32).unwrap();
    /// let g = m.lock().unwrap();
    /// assert!(matches!(m.try_lock(), Err(std::sync::TryLockError::WouldBlock)));
    /// drop(g);
    /// assert!(m.try_lock().is_ok());
    /// ```
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        match LockedValue::try_lock(&self.region, 0, value_at::<T>()) {
            Ok(Some(locked)) => self.guard(locked).map_err(TryLockError::Poisoned),
            Ok(None) => Err(TryLockError::WouldBlock),
            Err(e) => panic!("locking a tandem::sync::Mutex failed: {e}"),
        }
    }

    /// Whether a holder panicked or died while holding the lock.
    ///
    /// ```
    /// use tandem::sync::Mutex;
    /// // A process that dies holding the lock poisons it.
    /// fn die_holding(m: Mutex<u8>) {
    ///     let _g = m.lock().unwrap();
    ///     std::process::abort();
    /// }
    /// tandem::init();
    /// let m = Mutex::new(0u8).unwrap();
    /// let h = tandem::process::spawn(m.clone(), die_holding).unwrap();
    /// assert!(h.join().is_err());
    /// assert!(m.lock().is_err());
    /// assert!(m.is_poisoned());
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.region.atomic_u32(POISON).load(Ordering::Acquire) != 0
    }

    /// Forget the poison: the data has been checked or repaired.
    ///
    /// ```
    /// let m = tandem::sync::Mutex::new(0u8).unwrap();
    /// m.clear_poison();
    /// assert!(!m.is_poisoned());
    /// ```
    pub fn clear_poison(&self) {
        self.region.atomic_u32(POISON).store(0, Ordering::Release);
    }
}

impl<T: Plain> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Plain> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Plain> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.poison.store(1, Ordering::Release);
        }
        // `value` unlocks when it drops, after this.
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Plain> Clone for Mutex<T> {
    fn clone(&self) -> Self {
        Mutex { region: self.region.clone(), _t: PhantomData }
    }
}

impl<T: Plain> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mutex<{}> {{ poisoned: {} }}", std::any::type_name::<T>(), self.is_poisoned())
    }
}

impl<T: Plain> Serialize for Mutex<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        shared::serialize(&self.region, (), serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Mutex<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Mutex<T>, D::Error> {
        let (region, ()) = shared::deserialize(
            deserializer,
            "mutex",
            shared::at_least(value_at::<T>() + size_of::<T>(), "mutex"),
        )?;
        Ok(Mutex { region: Arc::new(region), _t: PhantomData })
    }
}
