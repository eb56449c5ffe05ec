//! Arenas: shared memory a process keeps and writes big message after big
//! message into, so a message pays a copy, not a fresh memfd whose every
//! 4 KiB page faults in (see BENCHMARKS.md, "Bulk data").
//!
//! An arena is a memfd sealed against shrinking and growing (a reader never
//! meets SIGBUS), mapped by its writer for good. Its first word, `RELEASED`,
//! says which message its reader is done with: the writer numbers each
//! message it writes (`number`), the message carries the number, and the
//! reader stores it back once it has copied the bytes out. The writer
//! writes again only when that number is back and nothing in this process
//! still holds a message written there (a queued task may be sent again to
//! another worker: its [`Pin`] keeps the bytes as they are). A reader that
//! never says it is done (it died) only costs its writer that arena.
//!
//! Readers copy the bytes out and never borrow them: an arena stays
//! writable by its writer, so a reader that does not trust it (a parent
//! reading a worker's result) must not hold a reference into memory that
//! could change under it. The copy is the decoded value's own buffer for a
//! top-level `Vec<u8>` or `ByteBuf` (one copy end to end on each side).
//!
//! A pool's big raw argument is *streamed* ([`Stream`]): its place is taken
//! and its reference sent first, then its bytes written a chunk at a time,
//! each published in the `WRITTEN` word, and the worker copies each out
//! as it comes; only a worker reads a stream (it trusts its parent to
//! finish; a parent never waits on a worker's word).
//!
//! Which arenas a process keeps: at most [`MAX_KEPT`] of them and
//! [`MAX_KEPT_BYTES`] in all; a message reuses the smallest free arena that
//! holds it and is at most [`MAX_SLACK`] times its size (or the smallest
//! size there is), else a new one.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::Error;
use crate::sys::shm::Region;

/// Bytes before an arena's data: the `RELEASED`, `RETIRED` and `WRITTEN`
/// words on their own cache line.
pub(crate) const HEADER: usize = 64;
/// Offset of the `RELEASED` word: the number of the last message its
/// reader is done with.
const RELEASED: usize = 0;
/// Offset of the `RETIRED` word: set by the writer when it lets the arena
/// go, so readers stop keeping it mapped (see [`Mapped`]).
const RETIRED: usize = 8;
/// Offset of the `WRITTEN` word: how many bytes of a streamed message are
/// in (see [`Stream`]).
const WRITTEN: usize = 16;
/// A streamed message is published this many bytes at a time.
const STREAM_CHUNK: usize = 256 << 10;
/// `WRITTEN` of a stream its writer gave up before the end (it unwound):
/// the reader fails instead of waiting for ever.
const ABANDONED: u64 = u64::MAX;

/// Arenas a process keeps between messages.
pub(crate) const MAX_KEPT: usize = 8;
/// Bytes of arenas a process keeps between messages.
pub(crate) const MAX_KEPT_BYTES: usize = 256 << 20;
/// A free arena serves a message at most this many times smaller (one of
/// the smallest, [`GRAIN`] bytes, serves any message that fits).
const MAX_SLACK: usize = 4;
/// Arenas are made in multiples of this many bytes (data and header).
const GRAIN: usize = 64 << 10;

/// One arena, as its writer holds it.
pub(crate) struct Arena {
    region: Region,
    /// The number of the last message written here (0: none yet).
    number: u64,
}

impl Arena {
    fn create(cap: usize) -> io::Result<Arena> {
        let len = (HEADER + cap).div_ceil(GRAIN) * GRAIN;
        let region = Region::create_populated_named("tandem-arena", len)?;
        Ok(Arena { region, number: 0 })
    }

    /// Bytes of data it holds.
    fn cap(&self) -> usize {
        self.region.len() - HEADER
    }

    /// Its reader is done with the last message written here.
    fn released(&self) -> bool {
        self.region.atomic_u64(RELEASED).load(Ordering::Acquire) == self.number
    }
}

impl Drop for Arena {
    /// Say so to the readers that keep it mapped (then `munmap(2)` with the
    /// region).
    fn drop(&mut self) {
        self.region.atomic_u64(RETIRED).store(1, Ordering::Release);
    }
}

/// A message to write into its arena after it was sent (see
/// [`Kept::reserve`]).
pub(crate) struct Stream {
    arena: Arc<Arena>,
    len: usize,
    done: bool,
}

impl Stream {
    /// Write the message, `parts` one after another (`len` bytes in all),
    /// publishing each [`STREAM_CHUNK`] in `WRITTEN` as it is in, so the
    /// reader copies it out while the rest is written.
    pub(crate) fn write(mut self, parts: &[&[u8]]) {
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), self.len, "a stream of another length");
        let region = &self.arena.region;
        let written = region.atomic_u64(WRITTEN);
        let mut at = 0;
        for part in parts {
            for chunk in part.chunks(STREAM_CHUNK) {
                // Bytes past `WRITTEN`: the reader does not read them yet.
                region.write_bytes(HEADER + at, chunk);
                at += chunk.len();
                written.store(at as u64, Ordering::Release);
            }
        }
        self.done = true;
    }
}

impl Drop for Stream {
    /// A stream dropped before it was written (its writer unwound): tell
    /// the reader, which would wait for the bytes for ever.
    fn drop(&mut self) {
        if !self.done {
            self.arena.region.atomic_u64(WRITTEN).store(ABANDONED, Ordering::Release);
        }
    }
}

/// A message written in an arena, kept as it is while this is held (a
/// queued task's argument, which may be sent again).
#[derive(Clone)]
pub(crate) struct Pin(Arc<Arena>);

impl Pin {
    /// The arena's descriptor, to send with the message (nobody holds a
    /// duplicate of it: see `codec::descriptors`).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.region.fd()
    }
}

/// Whether this process keeps arenas and peers' mappings between
/// messages (a worker whose memory is limited or measured does not: see
/// [`retain`]).
static RETAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Keep arenas and peers' mappings between messages, or not (each message
/// then has its own, gone with it).
pub(crate) fn retain(keep: bool) {
    RETAIN.store(keep, Ordering::Relaxed);
}

/// Arenas kept for reuse, oldest first.
pub(crate) struct Kept(Mutex<Vec<Arc<Arena>>>);

/// The arenas this process keeps.
pub(crate) static KEPT: Kept = Kept::new();

impl Kept {
    pub(crate) const fn new() -> Kept {
        Kept(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Arena>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write a message of `len` bytes into an arena with `fill`, which gets
    /// exactly `len` bytes: the message's number, and a pin keeping it (and
    /// sending the arena's descriptor with it: [`Pin::fd`]).
    pub(crate) fn write(
        &self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<(u64, Pin), Error> {
        let (mut arena, number) = self.claim(len)?;
        fill(Arc::get_mut(&mut arena).expect("claimed, not kept yet").region.slice_mut::<u8>(HEADER, len))?;
        self.keep(arena.clone());
        Ok((number, Pin(arena)))
    }

    /// Take an arena for a message of `len` bytes that is written after
    /// it is sent ([`Stream::write`], which its reader follows through
    /// `WRITTEN`): the message's number, a pin, and the stream to write.
    pub(crate) fn reserve(&self, len: usize) -> Result<(u64, Pin, Stream), Error> {
        let (arena, number) = self.claim(len)?;
        self.keep(arena.clone());
        Ok((number, Pin(arena.clone()), Stream { arena, len, done: false }))
    }

    /// A free arena for `len` bytes (held by nobody else) and its next
    /// message's number.
    fn claim(&self, len: usize) -> Result<(Arc<Arena>, u64), Error> {
        let mut arena = self.take(len).map_err(|e| Error::os("making an arena for a big message", e))?;
        let unique = Arc::get_mut(&mut arena).expect("a free arena is held by nobody else");
        unique.number += 1;
        let number = unique.number;
        // Its last reader is done (the arena was free): nobody reads this.
        unique.region.atomic_u64(WRITTEN).store(0, Ordering::Release);
        Ok((arena, number))
    }

    /// A free arena for `len` bytes, out of the kept ones or new.
    fn take(&self, len: usize) -> io::Result<Arc<Arena>> {
        let mut kept = self.lock();
        let fits = |a: &Arc<Arena>| {
            let slack_ok = a.cap() / MAX_SLACK <= len || a.region.len() <= GRAIN;
            Arc::strong_count(a) == 1 && a.released() && a.cap() >= len && slack_ok
        };
        let best =
            kept.iter().enumerate().filter(|(_, a)| fits(a)).min_by_key(|(_, a)| a.cap()).map(|(i, _)| i);
        match best {
            Some(i) => Ok(kept.remove(i)),
            None => {
                drop(kept);
                Ok(Arc::new(Arena::create(len)?))
            }
        }
    }

    /// Keep `arena` (its newest use) and drop the oldest past the limits.
    fn keep(&self, arena: Arc<Arena>) {
        if !RETAIN.load(Ordering::Relaxed) {
            return;
        }
        let mut kept = self.lock();
        kept.push(arena);
        let total = |k: &[Arc<Arena>]| k.iter().map(|a| a.region.len()).sum::<usize>();
        while kept.len() > MAX_KEPT || (!kept.is_empty() && total(&kept) > MAX_KEPT_BYTES) {
            kept.remove(0);
        }
    }

    /// Keep none (see `__fuzz::drop_kept_arenas`).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// How many arenas and bytes are kept.
    #[cfg(test)]
    fn size(&self) -> (usize, usize) {
        let kept = self.lock();
        (kept.len(), kept.iter().map(|a| a.region.len()).sum())
    }
}

/// A message in a peer's arena, mapped for reading; dropping it tells the
/// peer this reader is done.
pub(crate) struct View {
    region: Arc<Region>,
    len: usize,
    number: u64,
    /// Its bytes come in while it is read (see [`Stream`]).
    streamed: bool,
}

impl View {
    /// Map message `number` of `len` bytes in the arena `fd` (checked as
    /// `Region::open_first` checks a descriptor from a peer not trusted),
    /// or find it mapped already (see [`Mapped`]).
    pub(crate) fn open(fd: OwnedFd, len: usize, number: u64) -> io::Result<View> {
        View::open_in(&MAPPED, fd, len, number)
    }

    /// As [`View::open`], for a message whose writer may still be writing
    /// it: every copy waits for the bytes it reads (`WRITTEN`), without a
    /// time limit, so only for a writer trusted to finish (the parent, for
    /// its worker).
    pub(crate) fn open_stream(fd: OwnedFd, len: usize, number: u64) -> io::Result<View> {
        let mut view = View::open(fd, len, number)?;
        view.streamed = true;
        Ok(view)
    }

    fn open_in(mapped: &Mapped, fd: OwnedFd, len: usize, number: u64) -> io::Result<View> {
        let needed = HEADER.checked_add(len).ok_or_else(|| io::Error::other("a message size overflows"))?;
        let region = mapped.open(fd, needed)?;
        Ok(View { region, len, number, streamed: false })
    }

    /// How many bytes of the message are in, at least `at + 1` (waiting
    /// for them if it is streamed), at most its length; an error if its
    /// writer gave it up.
    fn ready_past(&self, at: usize) -> Result<usize, Error> {
        if !self.streamed {
            return Ok(self.len);
        }
        let written = self.region.atomic_u64(WRITTEN);
        let past = |w: u64| w > at as u64;
        let mut w = written.load(Ordering::Acquire);
        if !past(w) {
            // The writer is copying on another CPU (or waits for ours).
            let seen = crate::backoff::Backoff::MEMORY.spin_until(|| {
                w = written.load(Ordering::Acquire);
                past(w)
            });
            while !seen && !past(w) {
                std::thread::yield_now();
                w = written.load(Ordering::Acquire);
            }
        }
        if w == ABANDONED {
            return Err(Error::Codec("the parent gave up writing this argument before its end".into()));
        }
        Ok(usize::try_from(w).unwrap_or(usize::MAX).min(self.len))
    }

    /// Stop keeping this arena mapped (its message did not decode: a peer
    /// that sends garbage gets no room here).
    pub(crate) fn discard(self) {
        let mut mapped = MAPPED.lock();
        mapped.retain(|(_, region)| !Arc::ptr_eq(region, &self.region));
        MAPPED.count.store(mapped.len(), Ordering::Relaxed);
    }

    /// The message's bytes `at..at + n`, copied out (never borrowed: see
    /// the module's docs). Out of bounds is a caller's bug.
    pub(crate) fn copy(&self, at: usize, n: usize) -> Result<Vec<u8>, Error> {
        let end = at.checked_add(n).filter(|&end| end <= self.len).expect("a copy past the message");
        let mut out = Vec::with_capacity(n);
        let mut done = at;
        while done < end {
            let upto = self.ready_past(done)?.min(end);
            self.region.append_to(HEADER + done, upto - done, &mut out);
            done = upto;
        }
        Ok(out)
    }

    /// Fill `out` from the message's bytes at `at`.
    pub(crate) fn copy_into(&self, at: usize, out: &mut [u8]) -> Result<(), Error> {
        let end = at.checked_add(out.len()).filter(|&end| end <= self.len).expect("a copy past the message");
        let mut done = at;
        while done < end {
            let upto = self.ready_past(done)?.min(end);
            self.region.read_into(HEADER + done, &mut out[done - at..upto - at]);
            done = upto;
        }
        Ok(())
    }

    /// The message's length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for View {
    fn drop(&mut self) {
        self.region.atomic_u64(RELEASED).store(self.number, Ordering::Release);
    }
}

/// Peers' arenas mapped here, newest last: a peer writes message after
/// message into the same arena, and mapping it again for each would cost
/// what the arena saves (one page-table entry per 4 KiB page, about 1 us
/// each on this machine: BENCHMARKS.md). A mapping holds its memfd, so the
/// inode it is found by cannot name another file while it is kept. At most
/// [`MAX_MAPPED`] of them and [`MAX_KEPT_BYTES`] in all; one its writer
/// let go (`RETIRED`) is dropped at the next arena message this process
/// decodes,
/// so readers do not keep alive what the writer no longer uses (a writer
/// that died cannot say so: its arena waits for eviction).
pub(crate) struct Mapped {
    entries: Mutex<Vec<(FileId, Arc<Region>)>>,
    /// How many entries there are, read without the lock.
    count: std::sync::atomic::AtomicUsize,
}

/// A file's device and inode numbers.
type FileId = (u64, u64);

/// Peers' arenas a process keeps mapped.
const MAX_MAPPED: usize = 8;

/// The peers' arenas this process keeps mapped.
pub(crate) static MAPPED: Mapped = Mapped::new();

impl Mapped {
    pub(crate) const fn new() -> Mapped {
        Mapped { entries: Mutex::new(Vec::new()), count: std::sync::atomic::AtomicUsize::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(FileId, Arc<Region>)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop the mappings whose writers let them go (no lock, no system
    /// call, when none is kept).
    pub(crate) fn sweep(&self) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut mapped = self.lock();
        mapped.retain(|(_, region)| region.atomic_u64(RETIRED).load(Ordering::Acquire) == 0);
        self.count.store(mapped.len(), Ordering::Relaxed);
    }

    /// At least the first `len` bytes of the arena `fd`: a mapping kept
    /// from before (the same file: its seals and size cannot have changed),
    /// or a new one, checked.
    fn open(&self, fd: OwnedFd, len: usize) -> io::Result<Arc<Region>> {
        let stat = rustix::fs::fstat(&fd)?;
        let key = (stat.st_dev, stat.st_ino);
        let mut mapped = self.lock();
        if let Some(i) = mapped.iter().position(|(k, region)| *k == key && region.len() >= len) {
            let entry = mapped.remove(i);
            let region = entry.1.clone();
            mapped.push(entry);
            return Ok(region);
        }
        drop(mapped);
        let region = Arc::new(Region::open_first(fd, len)?);
        if !RETAIN.load(Ordering::Relaxed) {
            return Ok(region);
        }
        let mut mapped = self.lock();
        mapped.retain(|(k, r)| *k != key && r.atomic_u64(RETIRED).load(Ordering::Acquire) == 0);
        mapped.push((key, region.clone()));
        let total = |m: &[(FileId, Arc<Region>)]| m.iter().map(|(_, r)| r.len()).sum::<usize>();
        while mapped.len() > MAX_MAPPED || (!mapped.is_empty() && total(&mapped) > MAX_KEPT_BYTES) {
            mapped.remove(0);
        }
        self.count.store(mapped.len(), Ordering::Relaxed);
        Ok(region)
    }

    /// Keep none (see `__fuzz::drop_kept_arenas`).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn clear(&self) {
        self.lock().clear();
        self.count.store(0, Ordering::Relaxed);
    }

    /// How many mappings are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `len` bytes of `byte`: a duplicate of its arena's
    /// descriptor (as a reader receives it), its number, its pin.
    fn fill(kept: &Kept, len: usize, byte: u8) -> (OwnedFd, u64, Pin) {
        let (number, pin) = kept
            .write(len, |b| {
                b.fill(byte);
                Ok(())
            })
            .unwrap();
        (pin.fd().try_clone_to_owned().unwrap(), number, pin)
    }

    fn inode(fd: &OwnedFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn an_arena_is_reused_only_once_its_reader_is_done_and_no_pin_holds_it() {
        let kept = Kept::new();
        let (fd, number, pin) = fill(&kept, 100_000, 1);
        let first = inode(&fd);
        let first_fd = fd.try_clone().unwrap();
        drop(pin);
        // Not released: the next message goes elsewhere.
        let (other, _, pin2) = fill(&kept, 100_000, 2);
        assert_ne!(first, inode(&other));
        drop(pin2);
        let mapped = Mapped::new();
        let view = View::open_in(&mapped, fd, 100_000, number).unwrap();
        assert_eq!((view.len(), view.copy(0, 3).unwrap()), (100_000, vec![1, 1, 1]));
        // Opened again (the same arena, sent again): the mapping kept.
        let again = View::open_in(&mapped, first_fd.try_clone().unwrap(), 50_000, number).unwrap();
        assert!(Arc::ptr_eq(&again.region, &view.region));
        drop(again);
        drop(view);
        // Released and unpinned: reused, its number the next.
        let (again, number2, pin3) = fill(&kept, 90_000, 3);
        assert_eq!((inode(&again), number2), (first, number + 1));
        // Pinned (and not released): a new arena.
        let (next, _, _pin4) = fill(&kept, 90_000, 4);
        assert_ne!(inode(&next), first);
        drop(pin3);
        // Far bigger than the message: not reused for it.
        let small = View::open_in(&mapped, other, 100_000, 1).unwrap();
        drop(small);
        let (tiny, _, _) = fill(&kept, 1000, 5);
        assert_ne!(inode(&tiny), first);
    }

    #[test]
    fn a_reader_drops_its_mapping_of_an_arena_its_writer_let_go() {
        let kept = Kept::new();
        let mapped = Mapped::new();
        let (fd, number, pin) = fill(&kept, 100_000, 1);
        drop(View::open_in(&mapped, fd, 100_000, number).unwrap());
        mapped.sweep();
        assert_eq!(mapped.len(), 1, "kept while its writer keeps it");
        drop(pin);
        kept.lock().clear();
        mapped.sweep();
        assert_eq!(mapped.len(), 0, "dropped once its writer let it go");
    }

    #[test]
    fn a_streamed_message_is_read_while_it_is_written() {
        let kept = Kept::new();
        let len = 5 * STREAM_CHUNK + 17;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let (number, pin, stream) = kept.reserve(len).unwrap();
        let view = View::open_stream(pin.fd().try_clone_to_owned().unwrap(), len, number).unwrap();
        std::thread::scope(|s| {
            let reader = s.spawn(|| view.copy(0, len));
            // Written after the reader started: it waits for each chunk.
            let (head, rest) = data.split_at(3);
            stream.write(&[head, rest]);
            assert!(reader.join().unwrap().unwrap() == data);
        });
        // A stream its writer dropped unwritten: the reader fails, not waits.
        let (number, pin, stream) = kept.reserve(len).unwrap();
        let view = View::open_stream(pin.fd().try_clone_to_owned().unwrap(), len, number).unwrap();
        drop(stream);
        let err = view.copy(0, len).expect_err("abandoned");
        assert!(err.to_string().contains("gave up"), "{err}");
    }

    #[test]
    fn a_small_message_reuses_an_arena_of_the_smallest_size() {
        let kept = Kept::new();
        let mapped = Mapped::new();
        let (fd, number, pin) = fill(&kept, 4000, 1);
        let first = inode(&fd);
        drop((View::open_in(&mapped, fd, 4000, number).unwrap(), pin));
        let (again, _, _) = fill(&kept, 100, 2);
        assert_eq!(inode(&again), first, "a 64 KiB arena serves 100 bytes");
    }

    #[test]
    fn kept_arenas_stay_within_the_limits() {
        let kept = Kept::new();
        for _ in 0..MAX_KEPT + 3 {
            fill(&kept, 1 << 20, 0);
        }
        assert_eq!(kept.size().0, MAX_KEPT);
        fill(&kept, MAX_KEPT_BYTES / 2, 0);
        fill(&kept, MAX_KEPT_BYTES / 2, 0);
        let (n, bytes) = kept.size();
        assert!(n >= 1 && bytes <= MAX_KEPT_BYTES, "{n} arenas, {bytes} bytes");
    }

    #[test]
    fn a_view_refuses_what_is_not_an_arena() {
        let kept = Kept::new();
        let (fd, number, _pin) = fill(&kept, 1000, 0);
        // Claiming more than the memfd holds.
        let err = View::open(fd, 1 << 30, number).err().expect("refused");
        assert!(err.to_string().contains("fewer than"), "{err}");
        let (r, _w) = rustix::pipe::pipe().unwrap();
        let err = View::open(r, 10, 1).err().expect("refused");
        assert!(err.to_string().contains("not a memfd"), "{err}");
    }
}
