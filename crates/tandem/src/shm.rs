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
        let bytes = len.checked_mul(size_of::<T>()).ok_or_else(|| {
            Error::os("making a shared slice", std::io::Error::from(std::io::ErrorKind::OutOfMemory))
        })?;
        let region = shared::make_region(bytes, "slice")?;
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
        shared::serialize(&self.region, self.len as u64, serializer)
    }
}

impl<'de, T: Plain> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SharedSlice<T>, D::Error> {
        let (region, len) = shared::deserialize(deserializer, "slice", |region, &len: &u64| {
            match (len as usize).checked_mul(size_of::<T>()) {
                Some(bytes) if bytes <= region.len() => Ok(()),
                _ => Err("a shared slice claims more elements than its memory holds".to_string()),
            }
        })?;
        Ok(SharedSlice { region: Arc::new(region), len: len as usize, _t: PhantomData })
    }
}
