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

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32, AtomicU64,
    AtomicUsize,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::codec::{RecvFd, SendFd};
use crate::sys::shm::Region;

mod sealed {
    pub trait Sealed {}
}

/// Types that may live in plain shared memory: fixed-size, no pointers, no
/// destructor, valid for every bit pattern (including all zeros), and
/// `Sync`.
///
/// Why these rules: the memory is mapped by other processes at other
/// addresses (so a pointer would mean nothing there), starts zeroed, may be
/// left half-written by a process killed in the middle of a store, and is
/// never dropped in any one process. Integers, floats, the integer atomics
/// and arrays of them qualify; `bool`, `char`, references, `String` and
/// anything with a `Drop` do not. The trait is sealed: tandem decides which
/// types are sound here.
///
/// Atomics are how units *change* shared memory concurrently; plain numbers
/// in a [`SharedSlice`] are read-only once it is made (build it with
/// [`SharedSlice::from_slice`]), and a [`crate::sync::Mutex`] hands out
/// `&mut T` only to the unit holding the lock.
///
/// ```
/// fn needs_plain<T: tandem::shm::Plain>() {}
/// needs_plain::<u64>();
/// needs_plain::<std::sync::atomic::AtomicU32>();
/// needs_plain::<[f64; 4]>();
/// ```
///
/// Heap-owning types are refused at compile time:
///
/// ```compile_fail
/// let s = tandem::shm::SharedSlice::<String>::new(1);
/// ```
///
/// ```compile_fail
/// let m = tandem::sync::Mutex::new(vec![1u8]);
/// ```
pub trait Plain: sealed::Sealed + Send + Sync + 'static {}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Plain for $t {}
    )*};
}

plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
plain!(
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize
);
impl<T: Plain, const N: usize> sealed::Sealed for [T; N] {}
impl<T: Plain, const N: usize> Plain for [T; N] {}

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
        let bytes = len.checked_mul(size_of::<T>()).ok_or_else(|| {
            Error::os("making a shared slice", std::io::Error::from(std::io::ErrorKind::OutOfMemory))
        })?;
        let region =
            Region::create(bytes).map_err(|e| Error::os("making a shared slice (memfd + mmap)", e))?;
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
        (SendFd(self.region.fd()), self.len as u64).serialize(serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SharedSlice<T>, D::Error> {
        use serde::de::Error as _;
        let (RecvFd(fd), len) = <(RecvFd, u64)>::deserialize(deserializer)?;
        let region =
            Region::open(fd).map_err(|e| D::Error::custom(format!("mapping a shared slice: {e}")))?;
        let len = len as usize;
        if len.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > region.len()) {
            return Err(D::Error::custom("a shared slice claims more elements than its memory holds"));
        }
        Ok(SharedSlice { region: Arc::new(region), len, _t: PhantomData })
    }
}
