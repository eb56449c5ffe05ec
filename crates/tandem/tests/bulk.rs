//! Big arguments and results travel in a sealed memfd (issue 14): they
//! arrive whole in both directions, for pools and one-off units, in both
//! start methods; a hostile worker's descriptor is refused with
//! `Error::Codec` and the pool goes on with the same worker; nothing is
//! left behind, not by 1,000 round trips, not by a worker killed while it
//! writes a big result; the parent's peak memory while sending 64 MiB is
//! one extra copy at most.
//!
//! The tests of this file run one at a time (`SERIAL`): they count this
//! process's descriptors, mappings and peak memory.

mod common;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use common::METHODS;
use rustix::fs::{MemfdFlags, SealFlags};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tandem::shm::{SharedSlice, SharedSliceMut};
use tandem::{Error, Mode, Pool};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Descriptors of this process once what lives as long as the process is
/// up (the fork-server template and its sockets, the watcher thread's
/// epoll), so that counting them before and after a test sees only what
/// the test left behind.
fn settled_fds() -> usize {
    tandem::__fuzz::drop_kept_arenas();
    for method in METHODS {
        let unit = tandem::process::Builder::new().start_method(method);
        assert_eq!(unit.spawn(1u8, |x| x + 1).unwrap().join().unwrap(), 2);
    }
    common::open_fds()
}

/// A pattern no two nearby bytes share, so a shifted or cut copy shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed).wrapping_add((i >> 12) as u8)).collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .enumerate()
        .fold(0u64, |h, (i, &b)| h.wrapping_mul(1_000_003).wrapping_add(b as u64 ^ i as u64))
}

/// Mappings of memfds this process has of `name` (`memfd:tandem-bulk`...).
fn memfd_mappings(name: &str) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().filter(|l| l.contains(&format!("memfd:{name}"))).count()
}

/// Memfds of big messages this process holds (sealed ones and arenas).
fn big_memfds() -> usize {
    memfd_fds("tandem-bulk") + memfd_fds("tandem-arena")
}

/// Mappings of big messages' memfds in this process.
fn big_mappings() -> usize {
    memfd_mappings("tandem-bulk") + memfd_mappings("tandem-arena")
}

/// Descriptors of this process that are memfds named `name`.
fn memfd_fds(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with(&format!("/memfd:{name}")))
        .count()
}

/// A value that holds a shareable and big bytes: the shareable's descriptor
/// and the bulk memfd travel together.
#[derive(Serialize, Deserialize)]
struct Mixed {
    table: SharedSlice<u32>,
    data: ByteBuf,
    numbers: Vec<u64>,
}

fn mixed_task(m: Mixed) -> (u64, u32, u64, ByteBuf) {
    let sum: u64 = m.numbers.iter().sum();
    let back = ByteBuf::from(m.data.iter().rev().copied().collect::<Vec<u8>>());
    (checksum(&m.data), m.table.iter().sum(), sum, back)
}

fn check_mixed(result: (u64, u32, u64, ByteBuf), data: &[u8], numbers: &[u64]) {
    let (sum, table, total, back) = result;
    assert_eq!(sum, checksum(data));
    assert_eq!(table, 6);
    assert_eq!(total, numbers.iter().sum::<u64>());
    assert!(back.iter().eq(data.iter().rev()), "the reversed bytes came back whole");
}

#[test]
fn big_arguments_and_results_arrive_whole_in_pools_and_units_with_both_start_methods() {
    let _serial = serial();
    let data = pattern(3 << 20, 5);
    let numbers: Vec<u64> = (0..200_000u64).map(|i| i * i).collect();
    let table = SharedSlice::from_slice(&[1u32, 2, 3]).unwrap();
    let fds = settled_fds();
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        // A plain Vec<u8> argument (the raw path), a ByteBuf (serde_bytes) and
        // a Vec<u8> result; a value with a shareable, bytes and numbers.
        assert_eq!(pool.submit(data.clone(), |d| checksum(&d)).join().unwrap(), checksum(&data));
        let buf = ByteBuf::from(data.clone());
        assert_eq!(pool.submit(buf, |d| checksum(&d)).join().unwrap(), checksum(&data));
        let back = pool.submit(data.len(), |n| pattern(n, 5)).join().unwrap();
        assert!(back == data, "{method:?}: a big Vec<u8> result");
        let back = pool.submit(data.len(), |n| ByteBuf::from(pattern(n, 5))).join().unwrap();
        assert!(back.as_slice() == data.as_slice(), "{method:?}: a big ByteBuf result");
        let m = Mixed { table: table.clone(), data: ByteBuf::from(data.clone()), numbers: numbers.clone() };
        check_mixed(pool.submit(m, mixed_task).join().unwrap(), &data, &numbers);
        // Nested inside a tuple, a Vec<u8> goes through serde element by element.
        let nested = pool.submit((data.clone(), 7u8), |(d, k)| (checksum(&d), k)).join().unwrap();
        assert_eq!(nested, (checksum(&data), 7));

        let unit = tandem::process::Builder::new().start_method(method);
        let m = Mixed { table: table.clone(), data: ByteBuf::from(data.clone()), numbers: numbers.clone() };
        check_mixed(unit.spawn(m, mixed_task).unwrap().join().unwrap(), &data, &numbers);
        let unit = tandem::process::Builder::new().start_method(method);
        assert!(unit.spawn(data.len(), |n| pattern(n, 5)).unwrap().join().unwrap() == data);
        assert_eq!(pool.stats().workers[0].restarts, 0, "{method:?}");
    }
    // What is left is the arenas this process keeps for its next messages.
    tandem::__fuzz::drop_kept_arenas();
    assert_eq!(common::open_fds(), fds, "no descriptor left behind");
    assert_eq!(big_mappings(), 0);
    // Thread mode moves the value: no memfd is made.
    let pool = Pool::builder().mode(Mode::Thread).workers(1).build().unwrap();
    let seen = pool.submit(data.clone(), |d| (checksum(&d), big_memfds())).join().unwrap();
    assert_eq!(seen, (checksum(&data), 0));
}

#[test]
fn sizes_on_both_sides_of_the_threshold_arrive_whole() {
    let _serial = serial();
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    // The threshold is 256 KiB of serialized bytes: a Vec<u8> adds a 3-byte
    // length prefix at this size.
    for len in [(256 << 10) - 4, (256 << 10) - 3, (256 << 10) - 2, (256 << 10) + 1, 1 << 20] {
        let data = pattern(len, 1);
        let back = pool.submit(data.clone(), |d| d).join().unwrap();
        assert!(back == data, "a Vec<u8> of {len} bytes, there and back");
        let back = pool.submit(ByteBuf::from(data.clone()), |d| d).join().unwrap();
        assert!(back.as_slice() == data.as_slice(), "a ByteBuf of {len} bytes, there and back");
    }
}

/// How a hostile worker forges its big result.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
enum Forgery {
    /// A pipe instead of a memfd.
    Pipe,
    /// A memfd with the right size and bytes, not sealed.
    Unsealed,
    /// Sealed against resizing but not against writing: could change
    /// under the reader (of a sealed message; an arena is meant to be so).
    Writable,
    /// Sealed against writing as well: its reader could not say it is
    /// done (of an arena).
    WriteSealed,
    /// Unsealed, shrunk to nothing as soon as the answer is sent.
    ShrunkAfterSending,
    /// Sealed, 4 KiB, claiming 1 MiB.
    SizeLies,
    /// Sealed, 1 MiB, claiming 4 KiB.
    SizeLiesSmall,
    /// Sealed, 64 MiB of holes (no page behind them).
    Sparse,
    /// Sealed, claiming more than the pool's max_message_size (1 GiB + 1).
    OverTheLimit,
    /// Sealed, the right size, bytes that do not decode.
    Garbage,
}

const FORGERIES: [Forgery; 10] = [
    Forgery::Pipe,
    Forgery::Unsealed,
    Forgery::Writable,
    Forgery::WriteSealed,
    Forgery::ShrunkAfterSending,
    Forgery::SizeLies,
    Forgery::SizeLiesSmall,
    Forgery::Sparse,
    Forgery::OverTheLimit,
    Forgery::Garbage,
];

/// How a forged result names its memfd: as a sealed message of its own,
/// or as the worker's arena (whose data starts after a 64-byte header, see
/// `codec/arena.rs`; sealed against resizing, not against writing).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
enum Reference {
    Sealed,
    Arena,
}

/// Bytes before the data in an arena.
const ARENA_HEADER: u64 = 64;

impl Reference {
    fn offset(self) -> u64 {
        if self == Reference::Arena { ARENA_HEADER } else { 0 }
    }

    /// Every seal an honest sender of this kind sets.
    fn all_seals(self) -> SealFlags {
        match self {
            Reference::Sealed => SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
            Reference::Arena => SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        }
    }
}

/// A memfd holding what an honest worker would send for `value` (postcard's
/// bytes of a Vec<u8>: its length as a varint, then the bytes) at `offset`.
fn honest_memfd(value: &[u8], offset: u64) -> (OwnedFd, u64) {
    let bytes = postcard::to_stdvec(&serde_bytes::Bytes::new(value)).unwrap();
    let fd = rustix::fs::memfd_create("forged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, offset + bytes.len() as u64).unwrap();
    write_at(&fd, &bytes, offset);
    (fd, bytes.len() as u64)
}

fn write_at(fd: &OwnedFd, bytes: &[u8], offset: u64) {
    let mut at = 0;
    while at < bytes.len() {
        at += rustix::io::pwrite(fd, &bytes[at..], offset + at as u64).unwrap();
    }
}

fn seal(fd: &OwnedFd, seals: SealFlags) {
    rustix::fs::fcntl_add_seals(fd, seals).unwrap();
}

fn shrink(fd: BorrowedFd<'_>) {
    rustix::fs::ftruncate(fd, 0).unwrap();
}

fn blank_memfd(len: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("forged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    fd
}

fn forge((how, reference): (Forgery, Reference)) -> Vec<u8> {
    let all = reference.all_seals();
    let at = reference.offset();
    let honest = pattern(1 << 20, 9);
    let (fd, len, then): (OwnedFd, u64, fn(BorrowedFd<'_>)) = match how {
        Forgery::Pipe => {
            let (r, w) = rustix::pipe::pipe().unwrap();
            std::mem::forget(w); // keep the pipe open: a read would block
            (r, 1 << 20, |_| {})
        }
        Forgery::Unsealed => {
            let (fd, len) = honest_memfd(&honest, at);
            (fd, len, |_| {})
        }
        Forgery::Writable => {
            // Right for an arena: only a sealed message must be immutable.
            assert_eq!(reference, Reference::Sealed);
            let (fd, len) = honest_memfd(&honest, at);
            seal(&fd, SealFlags::SHRINK | SealFlags::GROW);
            (fd, len, |_| {})
        }
        Forgery::WriteSealed => {
            // Wrong for an arena: its reader must write that it is done.
            assert_eq!(reference, Reference::Arena);
            let (fd, len) = honest_memfd(&honest, at);
            seal(&fd, all | SealFlags::WRITE);
            (fd, len, |_| {})
        }
        Forgery::ShrunkAfterSending => {
            let (fd, len) = honest_memfd(&honest, at);
            (fd, len, shrink)
        }
        Forgery::SizeLies => {
            let (fd, _) = honest_memfd(&honest[..4000], at);
            seal(&fd, all);
            (fd, 1 << 20, |_| {})
        }
        Forgery::SizeLiesSmall => {
            let (fd, _) = honest_memfd(&honest, at);
            seal(&fd, all);
            (fd, 4096, |_| {})
        }
        Forgery::Sparse => {
            let fd = blank_memfd(at + (64 << 20));
            seal(&fd, all);
            (fd, 64 << 20, |_| {})
        }
        Forgery::OverTheLimit => {
            let fd = blank_memfd(at + (1 << 30) + 1);
            seal(&fd, all);
            (fd, (1 << 30) + 1, |_| {})
        }
        Forgery::Garbage => {
            let fd = blank_memfd(0);
            write_at(&fd, &vec![0xff; 4096 + at as usize], 0);
            seal(&fd, all);
            (fd, 4096, |_| {})
        }
    };
    match reference {
        Reference::Sealed => tandem::chaos::answer_with_memory(fd, len, then).unwrap(),
        Reference::Arena => tandem::chaos::answer_with_arena(fd, len, 1, then).unwrap(),
    }
    honest
}

fn assert_codec((how, reference): (Forgery, Reference), result: Result<Vec<u8>, Error>, context: &str) {
    match result {
        Err(Error::Codec(why)) => {
            let expected = match (how, reference) {
                (Forgery::Pipe, _) => "not a memfd",
                (Forgery::Unsealed | Forgery::Writable | Forgery::ShrunkAfterSending, _) => "not sealed",
                (Forgery::WriteSealed, _) => "sealed against writing",
                (Forgery::SizeLies | Forgery::SizeLiesSmall, Reference::Sealed) => "not the",
                (Forgery::SizeLies, Reference::Arena) => "fewer than",
                // An arena may be bigger than its message: the claim is
                // believed, and the bytes then do not hold what they say.
                (Forgery::SizeLiesSmall, Reference::Arena) => "deserializing",
                (Forgery::Sparse, _) => "holes",
                (Forgery::OverTheLimit, _) => "over the limit",
                (Forgery::Garbage, _) => "deserializing",
            };
            assert!(
                why.contains(expected),
                "{context}: {how:?} ({reference:?}) gave {why:?}, expected it to say {expected:?}"
            );
        }
        other => panic!("{context}: {how:?} ({reference:?}) gave {other:?}"),
    }
}

/// Every forgery, of each kind of reference it applies to.
fn forgeries() -> impl Iterator<Item = (Forgery, Reference)> {
    let sealed = FORGERIES.into_iter().filter(|&f| f != Forgery::WriteSealed).map(|f| (f, Reference::Sealed));
    let arena = FORGERIES.into_iter().filter(|&f| f != Forgery::Writable).map(|f| (f, Reference::Arena));
    sealed.chain(arena)
}

#[test]
fn a_hostile_workers_descriptor_is_refused_and_the_pool_goes_on() {
    let _serial = serial();
    let fds = settled_fds();
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        for how in forgeries() {
            assert_codec(how, pool.submit(how, forge).join(), &format!("pool {method:?}"));
            // The same worker goes on: an honest big result right after.
            let back = pool.submit(1usize << 20, |n| pattern(n, 9)).join().unwrap();
            assert!(back == pattern(1 << 20, 9), "{method:?} after {how:?}");
        }
        assert_eq!(pool.stats().workers[0].restarts, 0, "{method:?}: no worker was replaced");
        for how in forgeries() {
            let unit = tandem::process::Builder::new().start_method(method);
            assert_codec(how, unit.spawn(how, forge).unwrap().join(), &format!("one-off {method:?}"));
        }
    }
    // No forged memfd is kept mapped (a message that did not decode drops
    // its arena's mapping); the honest workers' arenas are.
    assert_eq!(memfd_mappings("forged"), 0, "no forged memfd stays mapped");
    tandem::__fuzz::drop_kept_arenas();
    assert_eq!(common::open_fds(), fds, "every forged descriptor was closed");
}

#[test]
fn max_message_size_refuses_a_big_argument_before_sending_and_a_big_result_before_mapping() {
    let _serial = serial();
    let pool = Pool::builder().mode(Mode::Process).workers(1).max_message_size(1 << 20).build().unwrap();
    match pool.submit(vec![0u8; 2 << 20], |v| v.len()).join() {
        Err(Error::Codec(why)) => assert!(why.contains("over the limit of 1048576"), "{why}"),
        other => panic!("{other:?}"),
    }
    match pool.submit(ByteBuf::from(vec![0u8; 2 << 20]), |v| v.len()).join() {
        Err(Error::Codec(why)) => assert!(why.contains("over the limit of 1048576"), "{why}"),
        other => panic!("{other:?}"),
    }
    match pool.submit(2usize << 20, |n| ByteBuf::from(vec![1u8; n])).join() {
        Err(Error::Codec(why)) => assert!(why.contains("over the limit"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Just under the limit, in a memfd.
    let n = (1 << 20) - 16;
    assert_eq!(pool.submit(vec![3u8; n], |v| v.len()).join().unwrap(), n);
    let unit = tandem::process::Builder::new().max_message_size(1 << 20);
    assert!(matches!(unit.spawn(vec![0u8; 2 << 20], |v| v.len()), Err(Error::Codec(_))));
    assert_eq!(pool.stats().workers[0].restarts, 0);
}

/// Open descriptors, bulk mappings and arena mappings of the process this
/// runs in.
fn resources(_: ()) -> (usize, usize, usize) {
    (common::open_fds(), memfd_mappings("tandem-bulk"), memfd_mappings("tandem-arena"))
}

#[test]
fn a_thousand_big_round_trips_leave_descriptors_and_mappings_where_they_started() {
    let _serial = serial();
    // Results lent (the parent reads them out of the worker) and, with
    // lending off, copied through the worker's arena.
    for lending in [true, false] {
        tandem::__fuzz::allow_lending(lending);
        thousand_round_trips(lending);
    }
    tandem::__fuzz::allow_lending(true);
}

fn thousand_round_trips(lending: bool) {
    tandem::__fuzz::drop_kept_arenas();
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let data = ByteBuf::from(pattern(512 << 10, 3));
    // Warm up (the worker's first task maps its own code, starts its
    // allocator; each side makes the arena it writes its big messages in).
    assert_eq!(pool.submit(data.clone(), |d| d).join().unwrap(), data);
    let worker_before = pool.submit((), resources).join().unwrap();
    let resources_here = || {
        let (fds, bulk, arenas) = resources(());
        (fds, bulk, arenas, memfd_mappings("tandem-shared"))
    };
    let before = resources_here();
    for _ in 0..1000 {
        let back = pool.submit(data.clone(), |d| d).join().unwrap();
        assert!(back == data, "lending {lending}: the result is the argument");
    }
    let after = resources_here();
    assert_eq!(
        after, before,
        "lending {lending}, parent: (descriptors, bulk mappings, arena mappings, shared mappings)"
    );
    // One arena served every argument; results came in the worker's arena
    // (each side maps its own and keeps the other's mapped) or, lent, in
    // no shared memory at all.
    let arenas = if lending { 1 } else { 2 };
    assert_eq!((before.1, before.2), (0, arenas), "lending {lending}, parent: arenas, no sealed memfd");
    assert_eq!(worker_before.2, arenas, "lending {lending}, worker: arenas");
    assert_eq!(
        pool.submit((), resources).join().unwrap(),
        worker_before,
        "lending {lending}, worker: (descriptors, bulk mappings, arena mappings)"
    );
    assert_eq!(
        pool.submit((), |()| tandem::__fuzz::lent_results_waiting()).join().unwrap(),
        0,
        "every lent result was released"
    );
    assert_eq!(pool.stats().workers[0].restarts, 0);
}

/// A result whose serialization kills its own worker halfway through
/// writing into the memfd (with SIGKILL: a real kill, at a point where the
/// memfd exists and is half written).
#[derive(Debug)]
struct DiesWhileWritten(usize);

impl Serialize for DiesWhileWritten {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.0))?;
        for i in 0..self.0 {
            if i == self.0 / 2 && big_memfds() > 0 {
                rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
                    .unwrap();
            }
            seq.serialize_element(&(i as u8))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for DiesWhileWritten {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(|v| DiesWhileWritten(v.len()))
    }
}

#[test]
fn a_worker_killed_while_writing_a_big_result_is_worker_died_and_leaves_nothing() {
    let _serial = serial();
    let fds = settled_fds();
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        let result = pool.submit(8usize << 20, DiesWhileWritten).join();
        assert!(matches!(result, Err(Error::WorkerDied { signal: Some(9), .. })), "{method:?}: {result:?}");
        // The pool goes on, with a fresh worker that holds no bulk memfd.
        assert_eq!(pool.submit((), |()| big_memfds()).join().unwrap(), 0);
        let unit = tandem::process::Builder::new().start_method(method);
        let result = unit.spawn(8usize << 20, DiesWhileWritten).unwrap().join();
        assert!(matches!(result, Err(Error::WorkerDied { signal: Some(9), .. })), "{method:?}: {result:?}");
    }
    tandem::__fuzz::drop_kept_arenas();
    assert_eq!(common::open_fds(), fds);
    assert_eq!((big_memfds(), big_mappings()), (0, 0));
}

/// VmRSS and VmHWM of this process, bytes.
fn rss_and_peak() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn sending_64_mib_costs_the_parent_one_extra_copy_at_most() {
    let _serial = serial();
    const MIB64: usize = 64 << 20;
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    for round in 0..2 {
        let data = pattern(MIB64, 2); // touched: resident
        let buf = ByteBuf::from(pattern(MIB64, 2));
        // Reset the peak to what is resident now (proc(5), clear_refs "5").
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let (rss, _) = rss_and_peak();
        assert_eq!(pool.submit(data, |d| d.len()).join().unwrap(), MIB64);
        let (_, peak) = rss_and_peak();
        let extra = peak.saturating_sub(rss);
        assert!(
            extra <= MIB64 as u64 + (8 << 20),
            "round {round}, Vec<u8>: peak {extra} bytes over the start"
        );
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let (rss, _) = rss_and_peak();
        assert_eq!(pool.submit(buf, |d| d.len()).join().unwrap(), MIB64);
        let (_, peak) = rss_and_peak();
        let extra = peak.saturating_sub(rss);
        assert!(
            extra <= MIB64 as u64 + (8 << 20),
            "round {round}, ByteBuf: peak {extra} bytes over the start"
        );
    }
}

#[test]
fn a_shared_slice_mut_is_filled_in_place_by_a_worker_and_frozen_for_readers() {
    let _serial = serial();
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(2).start_method(method).build().unwrap();
        let buf = SharedSliceMut::<u64>::new(1 << 20).unwrap();
        let buf = pool
            .submit(buf, |mut b| {
                for (i, x) in b.iter_mut().enumerate() {
                    *x = i as u64 * 3;
                }
                b
            })
            .join()
            .unwrap();
        let frozen = buf.into_shared();
        let sums: Vec<u64> = (0..2)
            .map(|_| pool.submit(frozen.clone(), |s| s.iter().sum::<u64>()))
            .map(|h| h.join().unwrap())
            .collect();
        let expected: u64 = (0..1u64 << 20).map(|i| i * 3).sum();
        assert_eq!(sums, vec![expected, expected], "{method:?}");
        assert_eq!(frozen.iter().sum::<u64>(), expected);
    }
}

/// The forged descriptor of `forge` is really what it claims (a check of
/// the test itself): a pipe is no memfd, the honest memfd decodes.
#[test]
fn the_forgeries_are_what_they_say() {
    for reference in [Reference::Sealed, Reference::Arena] {
        let (fd, len) = honest_memfd(&pattern(1000, 9), reference.offset());
        assert!(rustix::fs::fcntl_get_seals(&fd).unwrap().is_empty());
        assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size as u64, reference.offset() + len);
    }
    let (r, _w) = rustix::pipe::pipe().unwrap();
    assert!(rustix::fs::fcntl_get_seals(r.as_fd()).is_err());
}

/// Arena descriptors the running worker holds (its own, and the parent's it
/// keeps mapped), with the argument's checksum. Without /proc (a sandbox
/// hides it): memfds of at least 1 MiB sealed against resizing and not
/// against writing, among the first 1,024 descriptors.
fn arenas_seen(data: ByteBuf) -> (u64, usize) {
    let arenas = (0..1024)
        .filter(|&fd| {
            // SAFETY: only borrowed for the two calls below, while the
            // descriptor (if open) stays open.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let Ok(seals) = rustix::fs::fcntl_get_seals(fd) else { return false };
            let big = rustix::fs::fstat(fd).is_ok_and(|st| st.st_size >= 1 << 20);
            big && seals.contains(SealFlags::SHRINK | SealFlags::GROW) && !seals.contains(SealFlags::WRITE)
        })
        .count();
    (checksum(&data), arenas)
}

#[test]
fn a_sandboxed_workers_big_argument_is_a_sealed_memfd_of_its_own_and_others_share_the_arena() {
    let _serial = serial();
    let data = pattern(1 << 20, 4);
    for sandboxed in [false, true] {
        let mut builder = Pool::builder().mode(Mode::Process).workers(1);
        if sandboxed {
            builder = builder.sandbox(tandem::sandbox::Sandbox::new());
        }
        let pool = builder.build().unwrap();
        // The first task of a fresh worker: it holds no arena of its own
        // yet, so any it holds is the parent's, kept mapped.
        let (sum, arenas) = pool.submit(ByteBuf::from(data.clone()), arenas_seen).join().unwrap();
        assert_eq!(sum, checksum(&data));
        assert_eq!(arenas, usize::from(!sandboxed), "sandboxed: {sandboxed}");
        // Big results come back either way (lent, read out of the worker).
        let back = pool.submit(data.len(), |n| ByteBuf::from(pattern(n, 4))).join().unwrap();
        assert!(back.as_slice() == data.as_slice(), "sandboxed: {sandboxed}");
        let (sum, _) = pool.submit(ByteBuf::from(data.clone()), arenas_seen).join().unwrap();
        assert_eq!(sum, checksum(&data));
    }
}

#[test]
fn a_queued_big_argument_holds_one_descriptor_until_its_task_ends() {
    let _serial = serial();
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    // The one worker says it runs, then waits on a channel, so the tasks
    // below queue (and its start's descriptors are counted before).
    let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
    let (ready_tx, ready_rx) = tandem::ipc::channel::<u8>().unwrap();
    let blocker = pool.submit((ready_tx, rx), |(ready, rx)| {
        ready.send(0).unwrap();
        rx.recv().unwrap()
    });
    assert_eq!(ready_rx.recv().unwrap(), 0);
    tandem::__fuzz::drop_kept_arenas();
    let before = common::open_fds();
    let data: Vec<Vec<u8>> = (0..20).map(|i| pattern(1 << 20, i)).collect();
    let handles: Vec<_> =
        data.iter().map(|d| pool.submit(ByteBuf::from(d.clone()), |d| checksum(&d))).collect();
    assert_eq!(common::open_fds() - before, 20, "one descriptor per queued big argument (its arena's)");
    tx.send(1).unwrap();
    assert_eq!(blocker.join().unwrap(), 1);
    for (h, d) in handles.into_iter().zip(&data) {
        assert_eq!(h.join().unwrap(), checksum(d));
    }
    // Done: the 20 arenas' descriptors went with their tasks (and the
    // blocker's channel ends with it).
    tandem::__fuzz::drop_kept_arenas();
    assert!(common::open_fds() <= before, "{} descriptors, {before} before", common::open_fds());
}

/// Arena memfds this worker holds (its own and its parent's, kept mapped).
fn worker_arenas(_: ()) -> usize {
    memfd_fds("tandem-arena")
}

#[test]
fn a_worker_whose_memory_is_limited_or_measured_keeps_no_arena_between_tasks() {
    let _serial = serial();
    let data = ByteBuf::from(pattern(1 << 20, 6));
    let plain = || Pool::builder().mode(Mode::Process).workers(1);
    let pools = [
        ("plain", plain().build().unwrap(), true),
        ("worker_memory_limit", plain().worker_memory_limit(1 << 30).build().unwrap(), false),
        ("worker_address_space_limit", plain().worker_address_space_limit(8 << 30).build().unwrap(), false),
        ("reports", plain().reports(true).build().unwrap(), false),
    ];
    for (name, pool, keeps) in pools {
        // A big argument and a big result, then a look from the next task.
        assert_eq!(pool.submit(data.clone(), |d| d).join().unwrap(), data, "{name}");
        let held = pool.submit((), worker_arenas).join().unwrap();
        assert_eq!(held > 0, keeps, "{name}: {held} arenas held between tasks");
    }
}

// ------------------------------------------------------------------ lent results

/// A pool whose answers the lanes' joiner reads, and one whose answers the
/// loop reads (a deadline keeps its tasks off the lanes).
fn lent_pools(method: tandem::StartMethod) -> [(&'static str, Pool); 2] {
    let base = || Pool::builder().mode(Mode::Process).workers(1).start_method(method);
    [
        ("lane", base().build().unwrap()),
        ("loop", base().task_timeout(std::time::Duration::from_secs(600)).build().unwrap()),
    ]
}

/// A lent result naming what this worker does not have.
fn lie_about_lent(lie: (u64, u64)) -> Vec<u8> {
    let (len, addr) = lie;
    // An address in a mapping that ends 4 KiB after it, for the length lie.
    let small = Box::leak(vec![1u8; 4096].into_boxed_slice());
    let addr = if addr == 0 { small.as_ptr() as u64 } else { addr };
    tandem::chaos::answer_lent(len, addr, false).unwrap();
    Vec::new()
}

/// A worker that lends a result whose place is unmapped, longer than its
/// buffer, or over the message limit fails its task with `Error::Codec`
/// (the parent reads nothing it was not given) and the pool goes on with
/// a fresh worker; read by the lane's joiner and by the loop.
#[test]
fn a_lent_result_that_lies_about_its_place_is_a_codec_error_and_the_pool_goes_on() {
    let _serial = serial();
    for method in METHODS {
        for (path, pool) in lent_pools(method) {
            let lies = [
                ("unmapped", (1 << 20, 8)),
                ("past its buffer", (256 << 20, 0)),
                ("over the limit", (u64::MAX / 2, 8)),
            ];
            for (n, (what, lie)) in lies.into_iter().enumerate() {
                match pool.submit(lie, lie_about_lent).join() {
                    Err(Error::Codec(why)) => {
                        let expected = if what == "over the limit" { "over the limit" } else { "memory" };
                        assert!(why.contains(expected), "{method:?} {path} {what}: {why}");
                    }
                    other => panic!("{method:?} {path} {what}: {other:?}"),
                }
                let honest = pool.submit(1usize << 20, |n| ByteBuf::from(pattern(n, 9))).join().unwrap();
                assert!(
                    honest.as_slice() == pattern(1 << 20, 9).as_slice(),
                    "{method:?} {path}: the pool goes on"
                );
                // The answer came from a fresh worker: the liar was ended.
                assert_eq!(
                    pool.stats().workers[0].restarts,
                    n as u64 + 1,
                    "{method:?} {path} {what}: replaced"
                );
            }
        }
    }
}

/// A worker lends a real result and exits before its parent has read it:
/// the task failed as one whose worker died under it (no retries here),
/// and with retries it runs again and comes back whole.
#[test]
fn a_worker_gone_before_its_lent_result_was_read_is_worker_died_and_retried() {
    let _serial = serial();
    fn lend_then_exit(n: usize) -> ByteBuf {
        let kept = Box::leak(pattern(n, 4).into_boxed_slice());
        tandem::chaos::answer_lent(n as u64, kept.as_ptr() as u64, true).unwrap();
        ByteBuf::new()
    }
    for method in METHODS {
        for (path, pool) in lent_pools(method) {
            tandem::__fuzz::read_next_lent_result_after_exit();
            match pool.submit(1usize << 20, lend_then_exit).join() {
                Err(Error::WorkerDied { .. }) => {}
                other => panic!("{method:?} {path}: {:?}", other.map(|b| b.len())),
            }
            let back = pool.submit(1usize << 20, |n| ByteBuf::from(pattern(n, 9))).join().unwrap();
            assert!(back.as_slice() == pattern(1 << 20, 9).as_slice(), "{method:?} {path}: the pool goes on");
        }
        // With a retry, the task runs again; its second run lends honestly.
        let pool =
            Pool::builder().mode(Mode::Process).workers(1).start_method(method).retries(1).build().unwrap();
        let marker =
            std::env::temp_dir().join(format!("tandem-lent-retry-{}-{method:?}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        fn once_then_honest(marker: String) -> ByteBuf {
            if std::fs::File::create_new(&marker).is_ok() {
                return lend_then_exit(1 << 20);
            }
            ByteBuf::from(pattern(1 << 20, 4))
        }
        tandem::__fuzz::read_next_lent_result_after_exit();
        let back = pool.submit(marker.to_string_lossy().into_owned(), once_then_honest).join().unwrap();
        assert!(back.as_slice() == pattern(1 << 20, 4).as_slice(), "{method:?}: retried whole");
        assert_eq!(pool.stats().workers[0].restarts, 1, "{method:?}");
        let _ = std::fs::remove_file(&marker);
    }
}

/// A task that makes its worker undumpable (as dropping privileges does:
/// its parent could no longer read it) gets its big result through the
/// worker's arena instead of lending it; before that, results are lent
/// (no arena of the worker's mapped here).
#[test]
fn a_worker_its_parent_may_no_longer_read_sends_its_big_results_through_its_arena() {
    let _serial = serial();
    tandem::__fuzz::drop_kept_arenas();
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let big = |n: usize| ByteBuf::from(pattern(n, 6));
    assert!(pool.submit(1usize << 20, big).join().unwrap().as_slice() == pattern(1 << 20, 6).as_slice());
    assert_eq!(memfd_mappings("tandem-arena"), 0, "a lent result maps nothing here");
    fn undumpable_then_big(n: usize) -> ByteBuf {
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).unwrap();
        ByteBuf::from(pattern(n, 6))
    }
    let back = pool.submit(1usize << 20, undumpable_then_big).join().unwrap();
    assert!(back.as_slice() == pattern(1 << 20, 6).as_slice(), "the result arrives whole");
    assert_eq!(memfd_mappings("tandem-arena"), 1, "through the worker's arena, mapped here");
    tandem::__fuzz::drop_kept_arenas();
}

/// A lent result travels behind whatever else its answer carries: what the
/// task cost (`reports`) and what it printed (`capture_output`), read by
/// the lane's joiner and by the loop alike.
#[test]
fn a_lent_result_comes_back_whole_beside_its_report_and_its_output() {
    let _serial = serial();
    tandem::__fuzz::drop_kept_arenas();
    fn print_then_big(n: usize) -> ByteBuf {
        println!("making {n} bytes");
        ByteBuf::from(pattern(n, 8))
    }
    for timeout in [None, Some(std::time::Duration::from_secs(600))] {
        let mut builder = Pool::builder().mode(Mode::Process).workers(1).reports(true).capture_output(true);
        if let Some(t) = timeout {
            builder = builder.task_timeout(t);
        }
        let pool = builder.build().unwrap();
        for _ in 0..3 {
            let report = pool.submit(1usize << 20, print_then_big).join_report();
            let back = report.result.unwrap();
            assert!(back.as_slice() == pattern(1 << 20, 8).as_slice(), "{timeout:?}: the result, whole");
            assert!(report.cpu.is_some(), "{timeout:?}: its report");
            assert_eq!(
                report.stdout.as_deref(),
                Some(&b"making 1048576 bytes\n"[..]),
                "{timeout:?}: its output"
            );
        }
        // Lent: no arena of the worker's was ever mapped here.
        assert_eq!(memfd_mappings("tandem-arena"), 0, "{timeout:?}");
    }
}
