//! Anonymous shared memory: a sealed memfd mapped `MAP_SHARED`.
//!
//! A [`Region`] is reachable only through its descriptor (no name under
//! /dev/shm), which is close-on-exec and travels to other processes inside
//! task messages. The memfd is sealed against shrinking and growing, so a
//! mapping made from it can never lose pages under a reader (no SIGBUS), even
//! if a peer misbehaves.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use super::plain::Plain;

/// One shared mapping and the memfd behind it. Unmapped on drop.
pub struct Region {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; every access to it
// goes through atomics, `Plain` values, or copies made under a lock, so
// sharing the handle between threads is as sound as sharing between processes.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// A new zero-filled region of `len` bytes: `memfd_create(2)`,
    /// `ftruncate(2)`, `fcntl(2)` `F_ADD_SEALS` (no shrinking or growing),
    /// then `mmap(2)` `MAP_SHARED`.
    pub fn create(len: usize) -> io::Result<Region> {
        let fd = rustix::fs::memfd_create("tandem-shared", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Region::map(fd, len)
    }

    /// Map a region received from another unit: `fcntl(2)` `F_GET_SEALS`
    /// (refused unless sealed against resizing), `fstat(2)` for its size
    /// (the memfd's, which the seals guarantee cannot change), `mmap(2)`.
    pub fn open(fd: OwnedFd) -> io::Result<Region> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the descriptor is not a sealed tandem shared-memory region",
            ));
        }
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        Region::map(fd, len)
    }

    /// `mmap(2)` the whole memfd, shared, read and write.
    fn map(fd: OwnedFd, len: usize) -> io::Result<Region> {
        // mmap refuses length 0; an empty region maps one (never touched) page.
        let map_len = len.max(1);
        // SAFETY: a fresh mapping chosen by the kernel (null hint), so no
        // existing memory is replaced; the memfd is at least `len` bytes and
        // sealed so it cannot shrink while mapped.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Region { fd, base, len })
    }

    /// The memfd, for sending to another unit (no system call; `dup(2)`
    /// happens when it is serialized).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size in bytes (no system call).
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn check(&self, offset: usize, size: usize, align: usize) {
        let end = offset.checked_add(size).expect("shared-memory offset overflow");
        assert!(
            end <= self.len,
            "shared-memory access {offset}..{end} outside a region of {} bytes",
            self.len
        );
        assert!((self.base.as_ptr() as usize + offset) % align == 0, "misaligned shared-memory access");
    }

    /// A raw pointer `offset` bytes into the region (bounds checked; no
    /// system call). Only this layer dereferences it.
    #[inline]
    pub(in crate::sys) fn ptr(&self, offset: usize, size: usize, align: usize) -> *mut u8 {
        self.check(offset, size, align);
        self.base.as_ptr().wrapping_add(offset)
    }

    /// The 32-bit atomic word at `offset` (no system call; a futex word for
    /// [`super::futex`]).
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        &self.slice::<AtomicU32>(offset, 1)[0]
    }

    /// The 64-bit atomic word at `offset` (no system call).
    #[inline]
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        &self.slice::<AtomicU64>(offset, 1)[0]
    }

    /// `count` values of `T` starting at `offset` (no system call).
    #[inline]
    pub fn slice<T: Plain>(&self, offset: usize, count: usize) -> &[T] {
        let size = count.checked_mul(size_of::<T>()).expect("shared slice size overflow");
        if size == 0 {
            return &[];
        }
        let ptr = self.ptr(offset, size, align_of::<T>());
        // SAFETY: the range is inside the mapping (checked) and aligned for T;
        // the mapping lives as long as `&self`. `Plain` types are valid for
        // every bit pattern (the memory starts zeroed and peers may write any
        // bytes), have no destructor, and hold no pointers. Shared references
        // are sound because non-atomic `Plain` values are only ever written
        // before the region is shared (construction) or under a lock that
        // hands out no other reference, and atomics are interior-mutable.
        unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), count) }
    }

    /// Move `value` into the region at `offset`. `&mut self`: only while the
    /// region is still private to its creator, before it is shared (no
    /// system call).
    pub fn init_value<T: Plain>(&mut self, offset: usize, value: T) {
        let ptr = self.ptr(offset, size_of::<T>(), align_of::<T>());
        // SAFETY: in bounds and aligned (checked); `&mut self` means the region is not
        // shared yet, so nothing else reads or writes this memory; `Plain` has no destructor, so
        // overwriting the old bytes leaks nothing.
        unsafe { std::ptr::write(ptr.cast::<T>(), value) }
    }

    /// Copy `values` into the region at `offset`; same contract as
    /// `init_value` (no system call).
    pub fn init_slice<T: Plain + Copy>(&mut self, offset: usize, values: &[T]) {
        let ptr = self.ptr(offset, std::mem::size_of_val(values), align_of::<T>());
        // SAFETY: as in init_value; the source is a distinct local slice.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), ptr.cast::<T>(), values.len()) }
    }

    /// Copy `bytes` into the region at `offset` (no system call).
    ///
    /// Part of the small safe byte API for layers above (the Queue's ring
    /// in `ipc`): no reference into the region is ever made for these
    /// bytes, only raw copies. Callers use this only for memory that no other unit reads or writes
    /// at the same time (a queue slot owned under the queue's lock, or a
    /// region not yet shared), so it races with nothing.
    pub(crate) fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        let ptr = self.ptr(offset, bytes.len(), 1);
        // SAFETY: in bounds (checked); no reference to these bytes exists
        // (see the doc comment), and the source is a distinct local buffer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) }
    }

    /// Fill `out` from the region at `offset`; same contract as
    /// [`Region::write_bytes`] (no system call).
    pub(crate) fn read_into(&self, offset: usize, out: &mut [u8]) {
        let ptr = self.ptr(offset, out.len(), 1);
        // SAFETY: in bounds (checked); nothing writes these bytes meanwhile
        // (see write_bytes); the destination is a distinct local buffer.
        unsafe { std::ptr::copy_nonoverlapping(ptr, out.as_mut_ptr(), out.len()) }
    }

    /// Copy `len` bytes out of the region at `offset`; same contract as
    /// [`Region::write_bytes`] (no system call).
    pub(crate) fn read_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        let ptr = self.ptr(offset, len, 1);
        let mut out = Vec::with_capacity(len);
        // SAFETY: in bounds (checked); the destination has capacity `len`
        // and is initialised by the copy before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, out.as_mut_ptr(), len);
            out.set_len(len);
        }
        out
    }
}

impl Drop for Region {
    /// `munmap(2)`; the memfd closes with `fd` (`close(2)`).
    fn drop(&mut self) {
        // SAFETY: this value made the mapping and every reference into it
        // borrows `self`, so none outlives the unmapping.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len.max(1)) };
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} bytes)", self.len)
    }
}
