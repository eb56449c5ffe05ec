//! A robust, process-shared `pthread_mutex_t` living in a shared [`Region`].
//!
//! Why glibc's mutex and not a home-made futex lock: the kernel releases a
//! dead owner's lock only through the owner thread's robust list, which
//! glibc already manages for every thread. A `PTHREAD_MUTEX_ROBUST` +
//! `PTHREAD_PROCESS_SHARED` mutex is on that list while held, so when its
//! owner dies (even by SIGKILL) the kernel marks it and wakes a waiter, whose
//! lock call returns `EOWNERDEAD`. We then mark it consistent at once and
//! tell the caller, who decides what the death means (poison, or nothing).

use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use super::plain::Plain;
use super::shm::Region;

/// How a locker spends the moments before it sleeps in the kernel: poll
/// `ready` until it says `true` (then return `true`) or the budget is spent
/// (`false`). The crate's policy, `crate::backoff::Backoff::MEMORY`, implements
/// it; it is passed in so that this layer depends on nothing above it.
pub trait Spin {
    /// Poll `ready` within the budget; whether it said `true`.
    fn spin_until(&self, ready: impl FnMut() -> bool) -> bool;
}

/// Bytes a mutex takes in a region (rounded up to a cache line).
pub const MUTEX_BYTES: usize = 64;
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= MUTEX_BYTES);

/// How a lock was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The previous owner unlocked normally.
    Clean,
    /// The previous owner died holding the lock; it is ours now and marked
    /// consistent.
    OwnerDied,
}

/// A robust mutex at a fixed place in a region.
#[derive(Clone, Copy)]
pub struct RobustMutex<'r> {
    region: &'r Region,
    offset: usize,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::Error::from_raw_os_error(rc).kind(),
            format!("{what}: {}", io::Error::from_raw_os_error(rc)),
        ))
    }
}

impl<'r> RobustMutex<'r> {
    /// The mutex at `offset` (which must hold one made by
    /// [`RobustMutex::init`]); bounds and alignment checked, no system call.
    pub fn at(region: &'r Region, offset: usize) -> RobustMutex<'r> {
        region.ptr(offset, MUTEX_BYTES, align_of::<libc::pthread_mutex_t>());
        RobustMutex { region, offset }
    }

    fn raw(&self) -> *mut libc::pthread_mutex_t {
        self.region.ptr(self.offset, MUTEX_BYTES, align_of::<libc::pthread_mutex_t>()).cast()
    }

    /// Initialise the mutex, process-shared and robust:
    /// `pthread_mutexattr_init(3)`, `pthread_mutexattr_setpshared(3)`,
    /// `pthread_mutexattr_setrobust(3)`, `pthread_mutex_init(3)`. Only
    /// before the region is shared.
    pub fn init(&self) -> io::Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is initialised by pthread_mutexattr_init before any
        // other use and destroyed at the end; the mutex memory is in bounds,
        // aligned, and not yet visible to any other unit.
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()), "pthread_mutexattr_init")?;
            let result = (|| {
                check(
                    libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED),
                    "pthread_mutexattr_setpshared",
                )?;
                check(
                    libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST),
                    "pthread_mutexattr_setrobust",
                )?;
                check(libc::pthread_mutex_init(self.raw(), attr.as_ptr()), "pthread_mutex_init")
            })();
            libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
            result
        }
    }

    /// Judge a lock call's result; on `EOWNERDEAD`, `pthread_mutex_consistent(3)`.
    fn after(&self, rc: libc::c_int) -> io::Result<Option<Acquired>> {
        match rc {
            0 => Ok(Some(Acquired::Clean)),
            libc::EBUSY => Ok(None),
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex (EOWNERDEAD means it is ours).
                check(unsafe { libc::pthread_mutex_consistent(self.raw()) }, "pthread_mutex_consistent")?;
                Ok(Some(Acquired::OwnerDied))
            }
            libc::ENOTRECOVERABLE => Err(io::Error::other(
                "a shared lock is unrecoverable: its owner died and it was never made consistent",
            )),
            rc => check(rc, "locking a shared mutex").map(|_| None),
        }
    }

    /// Take the lock without blocking: `None` if someone holds it
    /// (`pthread_mutex_trylock(3)`).
    pub fn try_lock(&self) -> io::Result<Option<Acquired>> {
        // SAFETY: the mutex was initialised in shared memory that outlives `self`.
        self.after(unsafe { libc::pthread_mutex_trylock(self.raw()) })
    }

    /// Take the lock: try it while `spin` lasts, then sleep in the kernel
    /// (`pthread_mutex_trylock(3)`, then `pthread_mutex_lock(3)`). A futex
    /// sleep and wake-up across CPUs costs tens of microseconds here, far
    /// more than a typical critical section.
    pub fn lock(&self, spin: &impl Spin) -> io::Result<Acquired> {
        let mut got = Ok(None);
        spin.spin_until(|| {
            got = self.try_lock();
            !matches!(got, Ok(None))
        });
        if let Some(how) = got? {
            return Ok(how);
        }
        // SAFETY: as in try_lock.
        let rc = unsafe { libc::pthread_mutex_lock(self.raw()) };
        self.after(rc).map(|how| how.expect("a blocking lock does not return EBUSY"))
    }

    /// Release the lock (`pthread_mutex_unlock(3)`). glibc checks ownership for robust mutexes, so a
    /// wrong unlock is an error (EPERM), not undefined behaviour.
    pub fn unlock(&self) {
        // SAFETY: as in try_lock.
        let rc = unsafe { libc::pthread_mutex_unlock(self.raw()) };
        debug_assert_eq!(rc, 0, "unlocking a shared mutex we do not hold");
    }
}

/// A `T` in a region, reachable only while its robust mutex is held.
pub struct LockedValue<'r, T> {
    mutex: RobustMutex<'r>,
    value_at: usize,
    // Not Send: a pthread mutex must be unlocked by the thread that locked it.
    _t: PhantomData<(*mut T, &'r mut T)>,
}

impl<'r, T: Plain> LockedValue<'r, T> {
    /// Lock the mutex at `mutex_at` guarding the `T` at `value_at`, as
    /// [`RobustMutex::lock`].
    pub fn lock(
        region: &'r Region,
        mutex_at: usize,
        value_at: usize,
        spin: &impl Spin,
    ) -> io::Result<(Self, Acquired)> {
        let mutex = RobustMutex::at(region, mutex_at);
        region.ptr(value_at, size_of::<T>(), align_of::<T>());
        let how = mutex.lock(spin)?;
        Ok((LockedValue { mutex, value_at, _t: PhantomData }, how))
    }

    /// Like [`LockedValue::lock`] without blocking (`pthread_mutex_trylock(3)`).
    pub fn try_lock(
        region: &'r Region,
        mutex_at: usize,
        value_at: usize,
    ) -> io::Result<Option<(Self, Acquired)>> {
        let mutex = RobustMutex::at(region, mutex_at);
        region.ptr(value_at, size_of::<T>(), align_of::<T>());
        Ok(mutex.try_lock()?.map(|how| (LockedValue { mutex, value_at, _t: PhantomData }, how)))
    }

    fn ptr(&self) -> *mut T {
        self.mutex.region.ptr(self.value_at, size_of::<T>(), align_of::<T>()).cast()
    }
}

impl<T: Plain> Deref for LockedValue<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: in bounds and aligned (checked when locked); we hold the
        // mutex, which is the only way to reach this value, so no other unit
        // reads or writes it meanwhile; `Plain` is valid for any bytes a dead
        // holder may have left half-written.
        unsafe { &*self.ptr() }
    }
}

impl<T: Plain> DerefMut for LockedValue<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref; `&mut self` makes this the only reference.
        unsafe { &mut *self.ptr() }
    }
}

impl<T> Drop for LockedValue<'_, T> {
    /// `pthread_mutex_unlock(3)`.
    fn drop(&mut self) {
        self.mutex.unlock();
    }
}
