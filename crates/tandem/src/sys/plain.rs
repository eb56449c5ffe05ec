//! The `Plain` trait: which types may live in plain shared memory.
//!
//! It is defined here, in the OS layer, because the shared-memory code
//! below ([`super::shm`], [`super::robust`]) relies on its rules for
//! soundness; the public path is `tandem::shm::Plain`.

use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32, AtomicU64,
    AtomicUsize,
};

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
/// in a [`SharedSlice`](crate::shm::SharedSlice) are read-only once it is
/// made (build it with
/// [`SharedSlice::from_slice`](crate::shm::SharedSlice::from_slice)), and a
/// [`crate::sync::Mutex`] hands out `&mut T` only to the unit holding the
/// lock.
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
