//! Locks and signals that work between threads and between processes: the
//! `multiprocessing.Lock` / `Semaphore` / `Event` / `Barrier` analogues.
//!
//! Each object lives in its own small block of anonymous shared memory (a
//! sealed memfd, never a name under /dev/shm). Clones, and copies sent to a
//! process inside a task's argument, are the same object. None of them can
//! be wedged by a unit that is killed while using it:
//!
//! - [`Mutex`] is glibc's robust, process-shared mutex: a holder's death is
//!   reported to the next locker as poison, like a panicking holder in std.
//! - [`Semaphore`] and [`Event`] are single atomic words with futex waits, so
//!   there is no half-done state for a killed unit to leave behind.
//! - [`Barrier`] watches the processes that hold it: if one dies, the waiters
//!   get [`Error::Broken`] instead of waiting forever.
//!
//! ```
//! use tandem::sync::Mutex;
//! tandem::init();
//! let total = Mutex::new(0u64).unwrap();
//! let h = tandem::process::spawn(total.clone(), |t| *t.lock().unwrap() += 40).unwrap();
//! h.join().unwrap();
//! *total.lock().unwrap() += 2;
//! assert_eq!(*total.lock().unwrap(), 42);
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LockResult, PoisonError, TryLockError, TryLockResult};
use std::time::{Duration, Instant};

use rustix::thread::futex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::codec::{RecvFd, SendFd};
use crate::shm::Plain;
use crate::sys::ring::futex_wait;
use crate::sys::robust::{Acquired, LockedValue, MUTEX_BYTES, RobustMutex};
use crate::sys::shm::Region;

fn make_region(len: usize, what: &str) -> Result<Region, Error> {
    Region::create(len).map_err(|e| Error::os(&format!("making a shared {what} (memfd + mmap)"), e))
}

fn open_region<'de, D: Deserializer<'de>>(
    deserializer: D,
    min_len: usize,
    what: &str,
) -> Result<Region, D::Error> {
    use serde::de::Error as _;
    let RecvFd(fd) = RecvFd::deserialize(deserializer)?;
    let region = Region::open(fd).map_err(|e| D::Error::custom(format!("mapping a shared {what}: {e}")))?;
    if region.len() < min_len {
        return Err(D::Error::custom(format!("a shared {what} arrived with too little memory")));
    }
    Ok(region)
}

fn wake_all(word: &AtomicU32) {
    // A failed wake can only mean a bad address, which the region rules out.
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// Wait while `word` reads `seq`: spin briefly, then announce ourselves in
/// `waiters` (if given) and sleep on the futex. Announcing only after the
/// spin means the waking side makes a wake-up call only for real sleepers;
/// it changes `word` before reading `waiters`, and we count ourselves before
/// the kernel compares `word`, so no wake-up is missed. `false` once the
/// deadline passed.
fn wait_on(word: &AtomicU32, seq: u32, waiters: Option<&AtomicU32>, deadline: Option<Instant>) -> bool {
    for _ in 0..100 {
        if word.load(Ordering::Acquire) != seq {
            return true;
        }
        std::hint::spin_loop();
    }
    if let Some(w) = waiters {
        w.fetch_add(1, Ordering::SeqCst);
    }
    let woke = futex_wait(word, seq, deadline).is_ok();
    if let Some(w) = waiters {
        w.fetch_sub(1, Ordering::SeqCst);
    }
    woke
}

// ---------------------------------------------------------------- Mutex

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
        let mut region = make_region(value_at::<T>() + size_of::<T>(), "mutex")?;
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
        let locked = LockedValue::lock(&self.region, 0, value_at::<T>())
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
        SendFd(self.region.fd()).serialize(serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for Mutex<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Mutex<T>, D::Error> {
        let region = open_region(deserializer, value_at::<T>() + size_of::<T>(), "mutex")?;
        Ok(Mutex { region: Arc::new(region), _t: PhantomData })
    }
}

// ---------------------------------------------------------------- Semaphore

const SEM_COUNT: usize = 0;
const SEM_WAITERS: usize = 4;

/// A counting semaphore for threads and processes.
///
/// Permits are not owned, as in Python and POSIX: any unit may `release`.
/// That also means a process killed while it holds a permit does not give it
/// back (nobody can know it meant to); where that matters, wait with
/// [`Semaphore::acquire_timeout`], or use a [`Mutex`], which does notice. A
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
    pub fn new(permits: u32) -> Result<Semaphore, Error> {
        let region = make_region(8, "semaphore")?;
        region.atomic_u32(SEM_COUNT).store(permits, Ordering::Release);
        Ok(Semaphore { region: Arc::new(region) })
    }

    fn count(&self) -> &AtomicU32 {
        self.region.atomic_u32(SEM_COUNT)
    }

    /// Take a permit, waiting for one as long as it takes.
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
    pub fn release(&self) {
        self.count().fetch_add(1, Ordering::SeqCst);
        if self.region.atomic_u32(SEM_WAITERS).load(Ordering::SeqCst) > 0 {
            // All, not one: a single woken unit might be killed before it
            // takes the permit, leaving the others asleep beside it.
            wake_all(self.count());
        }
    }

    /// Permits free now (a snapshot).
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
        SendFd(self.region.fd()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Semaphore, D::Error> {
        Ok(Semaphore { region: Arc::new(open_region(deserializer, 8, "semaphore")?) })
    }
}

// ---------------------------------------------------------------- Event

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
    pub fn new() -> Result<Event, Error> {
        Ok(Event { region: Arc::new(make_region(8, "event")?) })
    }

    fn flag(&self) -> &AtomicU32 {
        self.region.atomic_u32(EVENT_FLAG)
    }

    /// Set the flag and wake everyone waiting for it.
    pub fn set(&self) {
        self.flag().store(1, Ordering::SeqCst);
        if self.region.atomic_u32(EVENT_WAITERS).load(Ordering::SeqCst) > 0 {
            wake_all(self.flag());
        }
    }

    /// Lower the flag.
    pub fn clear(&self) {
        self.flag().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set now.
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::Acquire) != 0
    }

    /// Wait until the flag is set.
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
        SendFd(self.region.fd()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        Ok(Event { region: Arc::new(open_region(deserializer, 8, "event")?) })
    }
}

// ---------------------------------------------------------------- Barrier

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
        let start = process_start(pid).map(|(_, start)| start).unwrap_or(1);
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

/// A process's state letter and start time (clock ticks after boot), from
/// /proc/PID/stat. `None` if there is no such process.
fn process_start(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?; // field 22 overall
    Some((state, start))
}

/// What [`Barrier::wait`] returns: whether this unit was the one that
/// completed the round (exactly one per round is the leader).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarrierWaitResult {
    leader: bool,
}

impl BarrierWaitResult {
    /// Whether this unit was the leader of its round.
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
        let region = Arc::new(make_region(BAR_LEN, "barrier")?);
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
            match process_start(pid) {
                None => Some(pid),
                Some((state, now)) if matches!(state, 'Z' | 'X' | 'x') || (start != 1 && now != start) => {
                    Some(pid)
                }
                Some(_) => None,
            }
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
        SendFd(self.region.fd()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Barrier, D::Error> {
        use serde::de::Error as _;
        let region = Arc::new(open_region(deserializer, BAR_LEN, "barrier")?);
        let attachment = Arc::new(Attachment::register(&region).map_err(D::Error::custom)?);
        Ok(Barrier { region, attachment })
    }
}
