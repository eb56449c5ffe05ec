//! A bounded ring of byte messages in shared memory, for [`super::Queue`].
//!
//! Layout of the region:
//!
//! | offset | what |
//! |---|---|
//! | 0 | put lock: robust process-shared mutex, held by one putter at a time |
//! | 64 | get lock: the same for getters |
//! | 128 | `head`: u64, items taken so far (moved only under the get lock) |
//! | 192 | `tail`: u64, items put so far (moved only under the put lock) |
//! | 256 | `not_empty`: u32 futex sequence, bumped when an item arrives and someone waits |
//! | 260 | `not_full`: u32 futex sequence, bumped when a slot frees and someone waits |
//! | 264 | `getters_waiting`: u32 |
//! | 268 | `putters_waiting`: u32 |
//! | 272 | `capacity`: u32, slots |
//! | 276 | `max_item`: u32, bytes |
//! | 320 | slots: `capacity` × (u32 length, `max_item` bytes), 8-aligned |
//!
//! Two locks (the classic two-lock queue): putters contend only with
//! putters and getters with getters; between the two lock holders the ring
//! is single-producer single-consumer, ordered by `head` and `tail` alone (a
//! putter fills slot `tail` only after seeing `head` past it, and publishes
//! it by storing `tail + 1`; a getter mirrors that).
//!
//! Why a killed participant cannot corrupt it: every change is made under a
//! robust mutex, and each operation commits with one store (`tail += 1`
//! after the slot is filled, `head += 1` after it is copied out). A unit
//! killed anywhere leaves either the old or the new state, never a mix; the
//! next locker gets `EOWNERDEAD`, and the state needs no repair. An item a
//! getter had committed to taking when it died is lost with it, as it would
//! be if the getter died a moment after returning.
//!
//! Waiting: a blocked unit unlocks, spins and yields a little (the crate's
//! shared-memory budget, [`Backoff::MEMORY`]), then notes
//! itself in `*_waiting`, reads the sequence word, looks once more and
//! `futex_wait`s on that word. The other side, after its commit, bumps the
//! word and wakes *all* sleepers if the count says anyone sleeps: waking
//! one could pick a unit that is then killed before it acts, stranding the
//! rest. A killed sleeper leaves its count raised, which costs later
//! operations a spare wake-up call and nothing else.

//!
//! No `unsafe` here: the slots are reached through `Region`'s small safe
//! byte API (`write_bytes`, `read_into`, `read_bytes`), used only for a slot
//! owned under the matching lock.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::backoff::Backoff;
use crate::sys::futex;
use crate::sys::robust::{MUTEX_BYTES, RobustMutex};
use crate::sys::shm::Region;

const PUT_LOCK: usize = 0;
const GET_LOCK: usize = MUTEX_BYTES;
// `head` and `tail` on cache lines of their own: getters write one, putters
// the other.
const HEAD: usize = 128;
const TAIL: usize = 192;
const NOT_EMPTY: usize = 256;
const NOT_FULL: usize = NOT_EMPTY + 4;
const GETTERS: usize = NOT_FULL + 4;
const PUTTERS: usize = GETTERS + 4;
const CAPACITY: usize = PUTTERS + 4;
const MAX_ITEM: usize = CAPACITY + 4;
const SLOTS: usize = 320;

/// Why an operation did not complete.
#[derive(Debug)]
pub enum RingError {
    /// Full (put) or empty (get), and the caller would not wait (longer).
    WouldBlock,
    /// An OS call failed.
    Io(io::Error),
}

impl From<io::Error> for RingError {
    fn from(e: io::Error) -> RingError {
        RingError::Io(e)
    }
}

/// Handle to a ring in a region.
#[derive(Debug)]
pub struct Ring {
    region: Region,
    capacity: u64,
    max_item: usize,
    stride: usize,
}

fn stride_for(max_item: usize) -> usize {
    (4 + max_item).next_multiple_of(8)
}

impl Ring {
    /// A new ring of `capacity` slots of up to `max_item` bytes each.
    pub fn create(capacity: u32, max_item: u32) -> io::Result<Ring> {
        if capacity == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a queue needs a capacity of at least 1",
            ));
        }
        let stride = stride_for(max_item as usize);
        let len =
            (capacity as usize).checked_mul(stride).and_then(|n| n.checked_add(SLOTS)).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "queue capacity × item size overflows")
            })?;
        let region = Region::create(len)?;
        RobustMutex::at(&region, PUT_LOCK).init()?;
        RobustMutex::at(&region, GET_LOCK).init()?;
        region.atomic_u32(CAPACITY).store(capacity, Ordering::Relaxed);
        region.atomic_u32(MAX_ITEM).store(max_item, Ordering::Relaxed);
        Ring::open(region)
    }

    /// A ring made by [`Ring::create`] in another unit.
    pub fn open(region: Region) -> io::Result<Ring> {
        if region.len() < SLOTS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a shared queue region is too small"));
        }
        let capacity = region.atomic_u32(CAPACITY).load(Ordering::Relaxed) as u64;
        let max_item = region.atomic_u32(MAX_ITEM).load(Ordering::Relaxed) as usize;
        let stride = stride_for(max_item);
        if capacity == 0 || (capacity as usize).saturating_mul(stride).saturating_add(SLOTS) > region.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a shared queue region has a bad header"));
        }
        Ok(Ring { region, capacity, max_item, stride })
    }

    /// The region, for sending.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Largest item in bytes.
    pub fn max_item(&self) -> usize {
        self.max_item
    }

    /// Slots.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Items in the ring now (a snapshot).
    pub fn len(&self) -> usize {
        let head = self.region.atomic_u64(HEAD).load(Ordering::Acquire);
        let tail = self.region.atomic_u64(TAIL).load(Ordering::Acquire);
        tail.saturating_sub(head) as usize
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        self.region.atomic_u32(at)
    }

    /// Bump the sequence word at `seq_at` and wake its sleepers, if the
    /// count at `waiters_at` says anyone may be sleeping.
    fn signal(&self, waiters_at: usize, seq_at: usize) -> Result<(), RingError> {
        if self.word(waiters_at).load(Ordering::SeqCst) > 0 {
            self.word(seq_at).fetch_add(1, Ordering::SeqCst);
            futex::wake_all(self.word(seq_at))?;
        }
        Ok(())
    }

    /// Put `bytes` (at most `max_item`), waiting for room until `deadline`
    /// (`None`: forever). `try_only`: do not wait at all.
    pub fn put(&self, bytes: &[u8], deadline: Option<Instant>, try_only: bool) -> Result<(), RingError> {
        assert!(bytes.len() <= self.max_item, "the caller checks the item size");
        let mutex = RobustMutex::at(&self.region, PUT_LOCK);
        let head = self.region.atomic_u64(HEAD);
        let tail = self.region.atomic_u64(TAIL);
        let has_room =
            || tail.load(Ordering::SeqCst).saturating_sub(head.load(Ordering::SeqCst)) < self.capacity;
        loop {
            mutex.lock(&Backoff::MEMORY)?;
            // Only putters move `tail` (under this lock); `head` only grows.
            let t = tail.load(Ordering::SeqCst);
            if t - head.load(Ordering::SeqCst) < self.capacity {
                let slot = SLOTS + (t % self.capacity) as usize * self.stride;
                self.region.write_bytes(slot, &(bytes.len() as u32).to_le_bytes());
                self.region.write_bytes(slot + 4, bytes);
                tail.store(t + 1, Ordering::SeqCst); // the commit
                mutex.unlock();
                return self.signal(GETTERS, NOT_EMPTY);
            }
            if try_only {
                mutex.unlock();
                return Err(RingError::WouldBlock);
            }
            mutex.unlock();
            self.wait(PUTTERS, NOT_FULL, deadline, has_room)?;
        }
    }

    /// Take the oldest item, waiting until `deadline` (`None`: forever).
    pub fn get(&self, deadline: Option<Instant>, try_only: bool) -> Result<Vec<u8>, RingError> {
        let mutex = RobustMutex::at(&self.region, GET_LOCK);
        let head = self.region.atomic_u64(HEAD);
        let tail = self.region.atomic_u64(TAIL);
        let has_item = || tail.load(Ordering::SeqCst) > head.load(Ordering::SeqCst);
        loop {
            mutex.lock(&Backoff::MEMORY)?;
            // Only getters move `head` (under this lock); `tail` only grows.
            let h = head.load(Ordering::SeqCst);
            if tail.load(Ordering::SeqCst) > h {
                let slot = SLOTS + (h % self.capacity) as usize * self.stride;
                let mut len = [0u8; 4];
                self.region.read_into(slot, &mut len);
                let len = u32::from_le_bytes(len) as usize;
                // A length over the slot can only come from memory corrupted
                // outside tandem; refuse it rather than read past the slot.
                let item = (len <= self.max_item).then(|| self.region.read_bytes(slot + 4, len));
                head.store(h + 1, Ordering::SeqCst); // the commit
                mutex.unlock();
                self.signal(PUTTERS, NOT_FULL)?;
                return item.ok_or_else(|| {
                    RingError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a queue slot holds a bad length",
                    ))
                });
            }
            if try_only {
                mutex.unlock();
                return Err(RingError::WouldBlock);
            }
            mutex.unlock();
            self.wait(GETTERS, NOT_EMPTY, deadline, has_item)?;
        }
    }

    /// Wait until an item may be there or `deadline` passes (false): for
    /// the async getters' watcher, which takes nothing itself.
    pub fn wait_for_item(&self, deadline: Instant) -> Result<bool, RingError> {
        let head = self.region.atomic_u64(HEAD);
        let tail = self.region.atomic_u64(TAIL);
        let has_item = || tail.load(Ordering::SeqCst) > head.load(Ordering::SeqCst);
        match self.wait(GETTERS, NOT_EMPTY, Some(deadline), has_item) {
            Ok(()) => Ok(true),
            Err(RingError::WouldBlock) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait until `ready` may hold (the caller looks again under its lock)
    /// or the deadline passes.
    ///
    /// First spin, then yield, without telling anyone: most waits end here,
    /// and the other side pays for a wake-up call only when someone really
    /// sleeps. Then announce ourselves in `waiters_at`, read the sequence at
    /// `seq_at`, look once more and sleep on the sequence: the other side
    /// stores its commit before reading the waiter count, and we bump the
    /// count before looking, so either our look sees its commit or it sees
    /// us and bumps the sequence, which ends (or prevents) our futex sleep.
    fn wait(
        &self,
        waiters_at: usize,
        seq_at: usize,
        deadline: Option<Instant>,
        ready: impl Fn() -> bool,
    ) -> Result<(), RingError> {
        if Backoff::MEMORY.spin_until(&ready) {
            return Ok(());
        }
        let seq = self.word(seq_at).load(Ordering::SeqCst);
        self.word(waiters_at).fetch_add(1, Ordering::SeqCst);
        let slept = if ready() { Ok(true) } else { futex::wait(self.word(seq_at), seq, deadline) };
        self.word(waiters_at).fetch_sub(1, Ordering::SeqCst);
        match slept {
            Ok(true) => Ok(()),
            Ok(false) => Err(RingError::WouldBlock),
            Err(e) => Err(RingError::Io(e)),
        }
    }
}
