//! Zero-copy shared memory: the `multiprocessing.Array` analogue.
//!
//! A [`SharedSlice<T>`] is one block of anonymous shared memory (a sealed
//! memfd mapped `MAP_SHARED`, never a name under /dev/shm). Every clone, in
//! this process or in any process it is sent to, maps the *same pages*:
//! nothing is copied when it is handed to a thread or a process.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tandem::shm::SharedSlice;
//! tandem::init();
//! let counts = SharedSlice::<AtomicU64>::new(4).unwrap();
//! let h = tandem::process::spawn(counts.clone(), |c| {
//!     c[2].fetch_add(5, Ordering::SeqCst);
//! })
//! .unwrap();
//! h.join().unwrap();
//! assert_eq!(counts[2].load(Ordering::SeqCst), 5);
//! ```
//!
//! To fill shared memory with plain values (bytes, numbers) without atomics,
//! write it through a [`SharedSliceMut`]: one writer at a time, moved (never
//! cloned) to the unit that fills it, then frozen into a `SharedSlice` with
//! [`SharedSliceMut::into_shared`] for everyone to read.
//!
//! Both allocate and map all their pages at creation, in one system call
//! (`MADV_POPULATE_WRITE`, with huge pages where the kernel enables them for
//! shared memory) instead of a page fault per 4 KiB page; a unit that
//! receives one maps all its pages at once too. Ask for the memory you mean
//! to use: it is all resident from the start.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::shared;
use crate::sys::shm::Region;

pub use crate::sys::plain::Plain;

/// A fixed-length slice of `T` in shared memory, visible to every unit that
/// holds a clone. `Deref<Target = [T]>`.
///
/// Clone it to share it; every clone maps the same memory. Sending it to a
/// process sends only its descriptor. The memory is freed when the last
/// clone in the last process is gone.
///
/// ```
/// use tandem::shm::SharedSlice;
/// tandem::init();
/// let table = SharedSlice::from_slice(&[1u32, 2, 3]).unwrap(); // read-only, shared
/// let h = tandem::process::spawn(table.clone(), |t| t.iter().sum::<u32>()).unwrap();
/// assert_eq!(h.join().unwrap(), 6);
/// ```
pub struct SharedSlice<T: Plain> {
    region: Arc<Region>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> SharedSlice<T> {
    /// `len` elements, all zero.
    ///
    /// ```
    /// let s = tandem::shm::SharedSlice::<u16>::new(3).unwrap();
    /// assert_eq!(&s[..], &[0, 0, 0]);
    /// ```
    pub fn new(len: usize) -> Result<SharedSlice<T>, Error> {
        let bytes = byte_len::<T>(len)?;
        let region = make_populated(bytes)?;
        Ok(SharedSlice { region: Arc::new(region), len, _t: PhantomData })
    }

    /// A shared copy of `values` (made once, here; never copied again).
    ///
    /// ```
    /// let s = tandem::shm::SharedSlice::from_slice(&[1.5f64, 2.5]).unwrap();
    /// assert_eq!(s[1], 2.5);
    /// ```
    pub fn from_slice(values: &[T]) -> Result<SharedSlice<T>, Error>
    where
        T: Copy,
    {
        let shared = SharedSlice::<T>::new(values.len())?;
        let SharedSlice { region, len, .. } = shared;
        let mut region = Arc::into_inner(region).expect("a new region has one owner");
        region.init_slice(0, values);
        Ok(SharedSlice { region: Arc::new(region), len, _t: PhantomData })
    }
}

/// A new region of `bytes`, every page populated (see the module's docs).
fn make_populated(bytes: usize) -> Result<Region, Error> {
    Region::create_populated(bytes).map_err(|e| Error::os("making a shared slice (memfd + mmap)", e))
}

/// A `fits` check for `shared::deserialize`: the region holds `len` values
/// of `T`.
fn holds<T>(region: &Region, &len: &u64) -> Result<(), String> {
    match (len as usize).checked_mul(size_of::<T>()) {
        Some(bytes) if bytes <= region.len() => Ok(()),
        _ => Err("a shared slice claims more elements than its memory holds".to_string()),
    }
}

/// The number of bytes `len` values of `T` take.
fn byte_len<T>(len: usize) -> Result<usize, Error> {
    len.checked_mul(size_of::<T>()).ok_or_else(|| {
        Error::os("making a shared slice", std::io::Error::from(std::io::ErrorKind::OutOfMemory))
    })
}

impl<T: Plain> Deref for SharedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.region.slice(0, self.len)
    }
}

impl<T: Plain> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice { region: self.region.clone(), len: self.len, _t: PhantomData }
    }
}

impl<T: Plain> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSlice<{}>(len {})", std::any::type_name::<T>(), self.len)
    }
}

impl<T: Plain> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        shared::serialize(&self.region, self.len as u64, serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SharedSlice<T>, D::Error> {
        let (region, len) = shared::deserialize(deserializer, "slice", holds::<T>)?;
        Ok(SharedSlice { region: Arc::new(region), len: len as usize, _t: PhantomData })
    }
}

/// A fixed-length slice of `T` in shared memory with one writer:
/// `DerefMut<Target = [T]>`, so plain values (bytes, `u64`, `f32`...) are
/// written in place, at memory speed, with no atomics.
///
/// The rules that make it sound: it is not `Clone`, and moving it (as a
/// task's argument or result, through a channel or queue) moves the right to
/// write: the sender's handle is gone, only the receiver's maps the memory
/// writable. [`into_shared`](SharedSliceMut::into_shared) freezes it into a
/// [`SharedSlice`], which any number of units then read. Like every
/// shareable, it trusts the units it is sent to: a process that kept a
/// copy of the descriptor (only tandem's own code ever gets one) could
/// still write, as it could into any `SharedSlice`.
///
/// Nothing is copied, but new shared memory costs its page faults: on the
/// 2-core test machine, creating 64 MiB, filling it in a worker and summing
/// it in the parent took 72-102 ms, about 40 ms of it creating the memory,
/// against 6 ms for one copy into touched memory (BENCHMARKS.md, "Bulk
/// data"; huge pages for shared memory, where the kernel enables them, cut
/// it to about 30 ms):
///
/// ```
/// use tandem::shm::SharedSliceMut;
/// use tandem::{Mode, Pool};
/// tandem::init();
/// let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
/// let buf = SharedSliceMut::<u8>::new(1 << 20).unwrap();
/// // The worker fills it in place and hands it back; no byte is copied.
/// let buf = pool.submit(buf, |mut b| { b.fill(7); b }).join().unwrap();
/// let frozen = buf.into_shared();
/// assert!(frozen.iter().all(|&x| x == 7));
/// ```
pub struct SharedSliceMut<T: Plain> {
    region: Region,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> SharedSliceMut<T> {
    /// `len` elements, all zero, every page already allocated and mapped.
    ///
    /// ```
    /// let mut s = tandem::shm::SharedSliceMut::<u32>::new(3).unwrap();
    /// s.copy_from_slice(&[1, 2, 3]);
    /// assert_eq!(&s[..], &[1, 2, 3]);
    /// ```
    pub fn new(len: usize) -> Result<SharedSliceMut<T>, Error> {
        let region = make_populated(byte_len::<T>(len)?)?;
        Ok(SharedSliceMut { region, len, _t: PhantomData })
    }

    /// Freeze it: a [`SharedSlice`] of the same memory (nothing is copied),
    /// to clone and read from any unit.
    ///
    /// ```
    /// let mut m = tandem::shm::SharedSliceMut::<u8>::new(4).unwrap();
    /// m[0] = 9;
    /// let s = m.into_shared();
    /// let t = s.clone();
    /// assert_eq!(t[0], 9);
    /// ```
    pub fn into_shared(self) -> SharedSlice<T> {
        SharedSlice { region: Arc::new(self.region), len: self.len, _t: PhantomData }
    }
}

impl<T: Plain> Deref for SharedSliceMut<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.region.slice(0, self.len)
    }
}

impl<T: Plain> std::ops::DerefMut for SharedSliceMut<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.region.slice_mut(0, self.len)
    }
}

impl<T: Plain> fmt::Debug for SharedSliceMut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSliceMut<{}>(len {})", std::any::type_name::<T>(), self.len)
    }
}

impl<T: Plain> Serialize for SharedSliceMut<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        shared::serialize(&self.region, self.len as u64, serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for SharedSliceMut<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SharedSliceMut<T>, D::Error> {
        let (region, len) = shared::deserialize(deserializer, "slice", holds::<T>)?;
        Ok(SharedSliceMut { region, len: len as usize, _t: PhantomData })
    }
}
