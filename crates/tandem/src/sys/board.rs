//! Shared memory a worker and its parent both write: a sealed memfd mapped
//! in both processes, as words and bounded byte ranges. Two protocols use
//! it: a map batch's progress (`crate::batch`) and a pool worker's slot for
//! lane tasks and their answers (`crate::mailbox`).
//!
//! A batch's worker writes each item's result here before it starts the next
//! item, so the results outlive a worker that dies mid-batch. The parent only
//! ever *copies* bytes out (never holds a reference into the mapping), and
//! treats what it copied as untrusted input: a misbehaving worker can write
//! anything at any time, but it cannot shrink the memfd (sealed), so the
//! parent never faults.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;

use super::shm::Region;

/// One board: a few atomic words, then an arena of result records.
pub struct Board {
    region: Region,
}

impl Board {
    /// A new zeroed board of `len` bytes (memfd_create(2), ftruncate(2),
    /// mmap(2); sealed against shrinking and growing).
    pub fn create(len: usize) -> io::Result<Board> {
        Ok(Board { region: Region::create(len)? })
    }

    /// Map a board received from the parent; refused unless it is a sealed
    /// memfd of exactly `len` bytes.
    pub fn open(fd: OwnedFd, len: usize) -> io::Result<Board> {
        let region = Region::open(fd)?;
        if region.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a shared board of {} bytes, not {len}", region.len()),
            ));
        }
        Ok(Board { region })
    }

    /// The memfd, for sending to the worker.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// The 64-bit word at `offset` (8-byte aligned, in bounds: checked).
    #[inline]
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        self.region.atomic_u64(offset)
    }

    /// Copy `bytes` into the board at `offset` (bounds checked). Only the
    /// worker writes the arena, and the parent reads it only after the
    /// worker has published (or died), so this races with nothing.
    #[inline]
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        let dst = self.region.ptr(offset, bytes.len(), 1);
        if bytes.len() <= 32 {
            // A map item's record is most often this small, and its bytes
            // were just stored one by one: byte loads take them straight
            // from the store buffer, where the wide loads of memcpy would
            // stall until those stores retire.
            for (i, &b) in bytes.iter().enumerate() {
                // SAFETY: `ptr` checked that offset..offset+len lies in the
                // mapping, which lives as long as `self`; no reference into
                // these bytes exists (the parent only copies them out, see
                // `copy_out`). Volatile keeps this a byte loop, not memcpy.
                unsafe { dst.add(i).write_volatile(b) }
            }
            return;
        }
        // SAFETY: as above; the source is a distinct local buffer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) }
    }

    /// Store the 16 bytes of `bytes` (little-endian) at `offset` (bounds
    /// checked) in one unaligned store: a small record built in registers,
    /// whose bytes past its end the next record overwrites (the parent
    /// reads only the bytes the worker says it used).
    #[inline]
    pub fn write16(&self, offset: usize, bytes: u128) {
        let dst = self.region.ptr(offset, 16, 1);
        // SAFETY: `ptr` checked that offset..offset+16 lies in the mapping,
        // which lives as long as `self`; no reference into these bytes
        // exists (the parent only copies them out, see `copy_out`), and an
        // unaligned write needs no alignment.
        unsafe { dst.cast::<u128>().write_unaligned(bytes.to_le()) }
    }

    /// Copy `len` bytes out of the board at `offset` (bounds checked).
    pub fn copy_out(&self, offset: usize, len: usize) -> Vec<u8> {
        let src = self.region.ptr(offset, len, 1);
        let mut out = Vec::with_capacity(len);
        // SAFETY: the range is inside the mapping (checked) and the sealed
        // memfd cannot shrink under it, so every byte is readable; the
        // destination has capacity `len` and is initialised by the copy
        // before `set_len`. A peer writing meanwhile can only change which
        // bytes we get, which the caller parses as untrusted input.
        unsafe {
            std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), len);
            out.set_len(len);
        }
        out
    }
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Board({} bytes)", self.region.len())
    }
}
