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
        Region::create_named("tandem-shared", len)
    }

    /// As [`Region::create`], the memfd named `name` (what `/proc/<pid>/maps`
    /// shows as `/memfd:<name>`; names are not unique and open nothing).
    pub fn create_named(name: &str, len: usize) -> io::Result<Region> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Region::map(fd, len)
    }

    /// As [`Region::create`], with every page allocated and mapped at once
    /// (`madvise(2)` `MADV_HUGEPAGE` where the kernel allows huge pages
    /// for shared memory, then `MADV_POPULATE_WRITE`): one system call
    /// instead of a page fault per 4 KiB page. For memory its creator
    /// means to use in full (a `SharedSlice`).
    pub fn create_populated(len: usize) -> io::Result<Region> {
        let region = Region::create(len)?;
        let _ = populate(region.base, region.len, true);
        Ok(region)
    }

    /// As [`Region::create_populated`], named as in
    /// [`Region::create_named`]; an error if the pages cannot be had.
    pub fn create_populated_named(name: &str, len: usize) -> io::Result<Region> {
        let region = Region::create_named(name, len)?;
        populate(region.base, region.len, true)?;
        Ok(region)
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
        let stat = rustix::fs::fstat(&fd)?;
        let len = stat.st_size as usize;
        let region = Region::map(fd, len)?;
        // Map the pages in one call when they all exist already (the
        // creator populated them): this allocates nothing. A sparse
        // region keeps faulting lazily, so receiving one never allocates
        // what its sender did not. Read, not write: a read fault maps the
        // pages around it too (fault-around), and on shared memory a
        // writable shared mapping needs no write fault to dirty a page, so
        // writes that follow do not fault either (64 MiB: about 3 ms less
        // per mapping than `MADV_POPULATE_WRITE`, BENCHMARKS.md).
        if is_dense(&stat) {
            let _ = populate(region.base, region.len, false);
        }
        Ok(region)
    }

    /// Map the first `len` bytes of a region a peer that is not trusted
    /// sent, all checked before anything is mapped: `fcntl(2)`
    /// `F_GET_SEALS` (a memfd sealed against shrinking and growing, so no
    /// page can go away under a reader and raise SIGBUS, and not against
    /// writing, since the reader writes too), `fstat(2)` (at least `len`
    /// bytes, and no holes: reading a hole would make the reader allocate
    /// what the peer did not). Then `mmap(2)` and `madvise(2)`
    /// `MADV_POPULATE_WRITE` (one call for every page table entry, an error
    /// instead of SIGBUS if a page cannot be had). Each refusal is
    /// `InvalidData` naming the check. The descriptor is kept.
    pub fn open_first(fd: OwnedFd, len: usize) -> io::Result<Region> {
        let refuse = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| refuse(format!("the descriptor is not a memfd (F_GET_SEALS: {e})")))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(refuse(format!(
                "the memfd is not sealed against shrinking and growing (its seals: {seals:?})"
            )));
        }
        if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
            return Err(refuse(format!(
                "the memfd is sealed against writing, so its reader cannot say it is done (its seals: {seals:?})"
            )));
        }
        let stat = rustix::fs::fstat(&fd)?;
        if (stat.st_size as u64) < len as u64 {
            return Err(refuse(format!(
                "the memfd holds {} bytes, fewer than the {len} claimed",
                stat.st_size
            )));
        }
        if len == 0 {
            return Err(refuse("an empty region".into()));
        }
        if !is_dense(&stat) {
            return Err(refuse(format!(
                "the memfd of {} bytes has holes (only {} blocks)",
                stat.st_size, stat.st_blocks
            )));
        }
        let region = Region::map(fd, len)?;
        populate(region.base, len, true)
            .map_err(|e| refuse(format!("the memfd's pages could not be mapped in ({e})")))?;
        Ok(region)
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
        assert!(
            (self.base.as_ptr() as usize + offset).is_multiple_of(align),
            "misaligned shared-memory access"
        );
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

    /// `count` values of `T` starting at `offset`, writable (no system
    /// call). `&mut self`: for a region that no other unit reads or writes
    /// meanwhile, by the contract of its owner (`SharedSliceMut`: one
    /// holder at a time, moved, never cloned).
    pub fn slice_mut<T: Plain>(&mut self, offset: usize, count: usize) -> &mut [T] {
        let size = count.checked_mul(size_of::<T>()).expect("shared slice size overflow");
        if size == 0 {
            return &mut [];
        }
        let ptr = self.ptr(offset, size, align_of::<T>());
        // SAFETY: in bounds and aligned (checked), inside a mapping that
        // lives as long as `&mut self`; `Plain` is valid for every bit
        // pattern. Unique: `&mut self`, and by the owner's contract no other
        // unit touches these bytes while this borrow lasts.
        unsafe { std::slice::from_raw_parts_mut(ptr.cast::<T>(), count) }
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

    /// Append `len` bytes of the region at `offset` to `out` (its spare
    /// room, never zeroed first); same contract as [`Region::write_bytes`]
    /// (no system call).
    pub(crate) fn append_to(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        let ptr = self.ptr(offset, len, 1);
        out.reserve(len);
        // SAFETY: in bounds (checked); `reserve` made room for `len` more
        // bytes past `out.len()`, which the copy initialises before
        // `set_len`; the source is this mapping, distinct from `out`.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, out.as_mut_ptr().add(out.len()), len);
            out.set_len(out.len() + len);
        }
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

/// Whether every byte of the file behind `stat` has a page (`st_blocks`
/// counts 512-byte units).
fn is_dense(stat: &rustix::fs::Stat) -> bool {
    (stat.st_blocks as u64).saturating_mul(512) >= stat.st_size as u64
}

/// Smallest mapping worth asking for huge pages.
const HUGE: usize = 2 << 20;

/// Fault in `len` bytes at `base` in one call: `madvise(2)`
/// `MADV_HUGEPAGE` (a hint; refused or ignored where shared-memory huge
/// pages are off), then `MADV_POPULATE_WRITE` (or `_READ`), which returns an
/// error instead of raising SIGBUS when a page cannot be had. Best effort:
/// on a kernel without them (before 5.14) the pages fault in one by one as
/// before; the error is returned for callers that must know.
fn populate(base: NonNull<u8>, len: usize, write: bool) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let advice =
        if write { rustix::mm::Advice::LinuxPopulateWrite } else { rustix::mm::Advice::LinuxPopulateRead };
    // SAFETY: `madvise(2)` on a range this module mapped and still owns;
    // neither advice changes the contents or the validity of the memory
    // (huge pages and populating only change how it is backed).
    unsafe {
        if len >= HUGE {
            let _ = rustix::mm::madvise(base.as_ptr().cast(), len, rustix::mm::Advice::LinuxHugepage);
        }
        rustix::mm::madvise(base.as_ptr().cast(), len, advice)?;
    }
    Ok(())
}

/// The sender's side of a bulk message: a new memfd of exactly `len`
/// bytes, mapped writable and private to its creator, which writes the
/// message into it ([`BulkWriter::bytes_mut`]) and then seals it for
/// sending ([`BulkWriter::seal`]). No name anywhere; close-on-exec.
pub struct BulkWriter {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (its memfd is not shared
// until `seal` unmaps it), so it moves between threads like a `Vec<u8>`.
unsafe impl Send for BulkWriter {}

impl BulkWriter {
    /// `memfd_create(2)` (`MFD_ALLOW_SEALING`), `ftruncate(2)` to `len`,
    /// `mmap(2)` `MAP_SHARED` read-write, populated at once (see
    /// [`Region::create_populated`]). `len` must not be 0.
    pub fn create(len: usize) -> io::Result<BulkWriter> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty bulk message"));
        }
        let fd = rustix::fs::memfd_create("tandem-bulk", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        // SAFETY: `mmap(2)` of a fresh memfd of `len` bytes at an address the
        // kernel picks (null hint), so no existing memory is replaced; nobody
        // else has the memfd, so nothing can shrink it while mapped.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let writer = BulkWriter { fd, base, len };
        // Without the pages (memory cgroup full), fail here rather than
        // with SIGBUS on the first write.
        populate(writer.base, len, true)?;
        Ok(writer)
    }

    /// The whole mapping, to write the message into (no system call).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and
        // lives until `seal` or drop, both of which take `self`; nobody else
        // holds the memfd, so the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }

    /// Unmap (`munmap(2)`), then seal the memfd against writing, shrinking
    /// and growing (`fcntl(2)` `F_ADD_SEALS`: `F_SEAL_WRITE`, which needs
    /// the writable mapping gone, `F_SEAL_SHRINK`, `F_SEAL_GROW`,
    /// `F_SEAL_SEAL`): the descriptor to send. Its reader can then trust
    /// that the bytes never change and the pages never go away.
    pub fn seal(self) -> io::Result<OwnedFd> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `munmap(2)` of the mapping this value made; the only
        // reference into it (`bytes_mut`) borrowed `self`, which is consumed.
        unsafe { rustix::mm::munmap(this.base.as_ptr().cast(), this.len)? };
        // SAFETY: moving the descriptor out of a value that is never used or
        // dropped again (ManuallyDrop), so it is owned exactly once.
        let fd = unsafe { std::ptr::read(&this.fd) };
        rustix::fs::fcntl_add_seals(
            &fd,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        Ok(fd)
    }
}

impl Drop for BulkWriter {
    /// `munmap(2)` (a message abandoned before it was sealed); the memfd
    /// closes with `fd`.
    fn drop(&mut self) {
        // SAFETY: this value made the mapping and every reference into it
        // borrows `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The receiver's side of a bulk message: a memfd from a peer, checked and
/// mapped read-only. Unmapped on drop.
pub struct SealedBytes {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: read-only memory that, by the seals `open` checked, no process can
// change or take away while it is mapped: as shareable as a `&'static [u8]`.
unsafe impl Send for SealedBytes {}
// SAFETY: as above.
unsafe impl Sync for SealedBytes {}

/// Why a peer's bulk descriptor was refused (the message names the check).
fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl SealedBytes {
    /// Check a descriptor a peer sent as holding exactly `len` bytes, then
    /// map it. Refused, before anything is mapped: a descriptor that is
    /// not a memfd (`fcntl(2)` `F_GET_SEALS` fails: a pipe, a socket, a
    /// file), one not sealed against writing, shrinking and growing (so it
    /// could change under the reader, or lose pages and raise SIGBUS), one
    /// whose size (`fstat(2)`) is not `len`, and one with holes (reading a
    /// hole would make the reader allocate what the peer did not). Then
    /// `mmap(2)` `PROT_READ` `MAP_SHARED` and `madvise(2)`
    /// `MADV_POPULATE_READ`, which fails instead of raising SIGBUS if a page
    /// cannot be had. The descriptor is closed on return.
    pub fn open(fd: OwnedFd, len: u64) -> io::Result<SealedBytes> {
        let seals = rustix::fs::fcntl_get_seals(&fd)
            .map_err(|e| refuse(format!("the descriptor is not a memfd (F_GET_SEALS: {e})")))?;
        let needed = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW;
        if !seals.contains(needed) {
            return Err(refuse(format!(
                "the memfd is not sealed against writing, shrinking and growing (its seals: {seals:?})"
            )));
        }
        let stat = rustix::fs::fstat(&fd)?;
        if stat.st_size as u64 != len {
            return Err(refuse(format!(
                "the memfd holds {} bytes, not the {len} its message claims",
                stat.st_size
            )));
        }
        if len == 0 {
            return Err(refuse("an empty bulk message".into()));
        }
        if !is_dense(&stat) {
            return Err(refuse(format!(
                "the memfd of {len} bytes has holes (only {} blocks)",
                stat.st_blocks
            )));
        }
        let len =
            usize::try_from(len).map_err(|_| refuse(format!("{len} bytes do not fit the address space")))?;
        // SAFETY: a fresh read-only mapping at an address the kernel picks
        // (null hint); the memfd is sealed against shrinking (checked
        // above; seals are never removed), so the mapped range stays backed.
        let ptr = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::SHARED, &fd, 0)?
        };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let bytes = SealedBytes { base, len };
        populate(bytes.base, len, false)
            .map_err(|e| refuse(format!("the memfd's pages could not be read in ({e})")))?;
        Ok(bytes)
    }

    /// The bytes (no system call).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes mapped until drop; sealed against
        // writing (checked in `open`), so no process can change them while
        // this shared borrow lasts, and against shrinking, so no access
        // faults.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }
}

impl Drop for SealedBytes {
    /// `munmap(2)`.
    fn drop(&mut self) {
        // SAFETY: this value made the mapping; every reference into it
        // borrows `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} bytes)", self.len)
    }
}
