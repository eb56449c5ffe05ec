//! Memory shared between processes: a memfd_create(2) file mapped with
//! mmap(2) `MAP_SHARED`, futex(2) words in it, and the loops that serve a
//! shared-memory measurement from them.
//!
//! The serving loops ([`serve_shm_echo`], [`serve_shm_sink`]) are safe code
//! made of atomics and futex syscalls; a thread runs them directly and a
//! forked child runs them between `fork` and `_exit` (see [`super::fork`]),
//! where only async-signal-safe work is allowed (no allocation, no locks).

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

/// 32-bit control words at the start of a region (futex words).
pub const CONTROL_WORDS: usize = 64;
const CONTROL_BYTES: usize = CONTROL_WORDS * 4;

/// Control word: request sequence number (written by the client).
pub const REQUEST: usize = 0;
/// Control word: reply sequence number (written by the server).
pub const REPLY: usize = 1;
/// Control word: non-zero asks the server to return.
pub const STOP: usize = 2;
/// Control word: a checksum the sink leaves so its reads are not optimized out.
pub const CHECKSUM: usize = 3;

/// An anonymous shared mapping (memfd + `MAP_SHARED`): the same physical
/// pages in this process and in every child forked after it was made.
pub struct SharedRegion {
    base: NonNull<u8>,
    len: usize,
    data_words: usize,
    _memfd: OwnedFd,
}

// SAFETY: the region is only ever accessed through atomics (`control`,
// `data`), so sharing it between threads cannot race; the mapping itself
// lives until drop.
unsafe impl Send for SharedRegion {}
// SAFETY: as above: every access is atomic.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Map `CONTROL_WORDS` futex words followed by `data_words` 64-bit
    /// words: memfd_create(2), ftruncate(2) and mmap(2) (`MAP_SHARED`);
    /// munmap(2) on drop.
    pub fn new(data_words: usize) -> io::Result<SharedRegion> {
        let page = rustix::param::page_size();
        let len = (CONTROL_BYTES + data_words * 8).div_ceil(page) * page;
        let (memfd, base) = map_new_memfd("tandem-floor", len)?;
        Ok(SharedRegion { base, len, data_words, _memfd: memfd })
    }

    /// The futex words: the start of the mmap(2) mapping, as atomics.
    pub fn control(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is page-aligned, zero-filled (valid AtomicU32
        // values), at least CONTROL_BYTES long and lives as long as `self`;
        // all access is atomic.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().cast::<AtomicU32>(), CONTROL_WORDS) }
    }

    /// The data words: the rest of the mmap(2) mapping, as atomics.
    pub fn data(&self) -> &[AtomicU64] {
        // SAFETY: CONTROL_BYTES is a multiple of 8 and the base is page
        // aligned, so the data is aligned for AtomicU64; `len` covers
        // `data_words` words after the control block; all access is atomic.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(CONTROL_BYTES).cast::<AtomicU64>(),
                self.data_words,
            )
        }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `new`, and no
        // borrow of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Wait until `word` differs from `seen`: spin `spin` times, then sleep in
/// the kernel with futex(2) `FUTEX_WAIT` (a shared, not process-private,
/// futex so it works across processes). Returns the new value.
pub fn wait_change(word: &AtomicU32, seen: u32, spin: u32) -> u32 {
    for _ in 0..spin {
        let now = word.load(Ordering::Acquire);
        if now != seen {
            return now;
        }
        std::hint::spin_loop();
    }
    loop {
        let now = word.load(Ordering::Acquire);
        if now != seen {
            return now;
        }
        // EAGAIN (already changed) and EINTR just loop.
        let _ = futex::wait(word, futex::Flags::empty(), seen, None);
    }
}

/// Publish `value` in `word` and wake its waiter: futex(2) `FUTEX_WAKE`.
pub fn publish(word: &AtomicU32, value: u32) {
    word.store(value, Ordering::Release);
    let _ = futex::wake(word, futex::Flags::empty(), 1);
}

/// Answer every request with a reply of the same number until told to stop,
/// doing `work` on the region before each reply.
fn serve_requests(region: &SharedRegion, spin: u32, work: impl Fn(&SharedRegion)) {
    let c = region.control();
    let mut seen = 0;
    loop {
        seen = wait_change(&c[REQUEST], seen, spin);
        if c[STOP].load(Ordering::Acquire) != 0 {
            return;
        }
        work(region);
        publish(&c[REPLY], seen);
    }
}

/// Answer every request with a reply of the same number until told to stop
/// (futex(2) waits and wakes, through [`wait_change`] and [`publish`]).
pub fn serve_shm_echo(region: &SharedRegion, spin: u32) {
    serve_requests(region, spin, |_| {});
}

/// For every request, read the whole data area, then reply: the far side
/// of a bandwidth measurement through shared memory (futex(2) waits and
/// wakes, as [`serve_shm_echo`]).
pub fn serve_shm_sink(region: &SharedRegion, spin: u32) {
    serve_requests(region, spin, |region| {
        let sum = region.data().iter().fold(0u64, |s, w| s.wrapping_add(w.load(Ordering::Relaxed)));
        region.control()[CHECKSUM].store(sum as u32, Ordering::Relaxed);
    });
}

/// A new memfd of `len` bytes (not 0) and its `MAP_SHARED` read-write
/// mapping: memfd_create(2), ftruncate(2), mmap(2). The caller unmaps it.
fn map_new_memfd(name: &str, len: usize) -> io::Result<(OwnedFd, NonNull<u8>)> {
    let memfd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&memfd, len as u64)?;
    // SAFETY: a fresh mapping chosen by the kernel (null hint), so it
    // overlaps no Rust object; the memfd is `len` bytes long, so every
    // mapped page is backed; the caller keeps it until it unmaps it.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &memfd,
            0,
        )?
    };
    let base = NonNull::new(ptr.cast::<u8>()).expect("mmap returned a non-null address");
    Ok((memfd, base))
}

/// A fresh memfd of `len` bytes mapped `MAP_SHARED` with every page
/// allocated at once: the kernel's floor for creating shared memory that
/// will be used in full, with no library on top. munmap(2) on drop.
pub struct FreshBytes {
    base: NonNull<u8>,
    len: usize,
    _memfd: OwnedFd,
}

// SAFETY: the mapping is owned by this value alone (its memfd is never
// handed out), so it moves between threads like a `Vec<u8>`.
unsafe impl Send for FreshBytes {}

impl FreshBytes {
    /// memfd_create(2), ftruncate(2), mmap(2) `MAP_SHARED`, then madvise(2)
    /// `MADV_HUGEPAGE` (2 MiB or more; a hint the kernel may ignore) and
    /// `MADV_POPULATE_WRITE`. `len` must not be 0.
    pub fn new(len: usize) -> io::Result<FreshBytes> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty mapping"));
        }
        let (memfd, base) = map_new_memfd("tandem-floor-fresh", len)?;
        let ptr = base.as_ptr().cast::<std::ffi::c_void>();
        let fresh = FreshBytes { base, len, _memfd: memfd };
        // SAFETY: madvise(2) on the mapping just made; neither advice
        // changes its contents, only how and when it is backed.
        unsafe {
            if len >= 2 << 20 {
                let _ = rustix::mm::madvise(ptr, len, rustix::mm::Advice::LinuxHugepage);
            }
            rustix::mm::madvise(ptr, len, rustix::mm::Advice::LinuxPopulateWrite)?;
        }
        Ok(fresh)
    }

    /// The mapped bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes mapped read-write for as long as `self`,
        // initialized (zero-filled by the kernel), reachable only through
        // this exclusive borrow.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl Drop for FreshBytes {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; no borrow outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Read `len` bytes at `addr` in process `pid` into a new `Vec`:
/// `process_vm_readv(2)`, the one-copy floor of moving a child's bytes
/// into its parent.
pub fn read_process(pid: u32, addr: usize, len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut done = 0;
    while done < len {
        let spare = &mut out.spare_capacity_mut()[done..len];
        let local = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
        let remote = libc::iovec { iov_base: (addr + done) as *mut libc::c_void, iov_len: len - done };
        // SAFETY: writes at most `local.iov_len` bytes into spare capacity
        // of `out`, which this function owns; the remote side is only read.
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(if n < 0 { io::Error::last_os_error() } else { io::ErrorKind::UnexpectedEof.into() });
        }
        done += n as usize;
    }
    // SAFETY: all `len` bytes were written by the reads above.
    unsafe { out.set_len(len) };
    Ok(out)
}
