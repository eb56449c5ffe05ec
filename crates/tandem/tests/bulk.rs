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
    // Thread mode moves the value: no memfd is made.
    let pool = Pool::builder().mode(Mode::Thread).workers(1).build().unwrap();
    let seen = pool.submit(data.clone(), |d| (checksum(&d), memfd_fds("tandem-bulk"))).join().unwrap();
    assert_eq!(seen, (checksum(&data), 0));
    assert_eq!(common::open_fds(), fds, "no descriptor left behind");
    assert_eq!(memfd_mappings("tandem-bulk"), 0);
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
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
enum Forgery {
    /// A pipe instead of a memfd.
    Pipe,
    /// A memfd with the right size and bytes, not sealed.
    Unsealed,
    /// Sealed against resizing but not against writing: could change
    /// under the reader.
    Writable,
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

const FORGERIES: [Forgery; 9] = [
    Forgery::Pipe,
    Forgery::Unsealed,
    Forgery::Writable,
    Forgery::ShrunkAfterSending,
    Forgery::SizeLies,
    Forgery::SizeLiesSmall,
    Forgery::Sparse,
    Forgery::OverTheLimit,
    Forgery::Garbage,
];

/// A memfd holding what an honest worker would send for `value`: postcard's
/// bytes of a Vec<u8> (its length as a varint, then the bytes).
fn honest_memfd(value: &[u8]) -> (OwnedFd, u64) {
    let bytes = postcard::to_stdvec(&serde_bytes::Bytes::new(value)).unwrap();
    let fd = rustix::fs::memfd_create("forged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, bytes.len() as u64).unwrap();
    let mut at = 0;
    while at < bytes.len() {
        at += rustix::io::pwrite(&fd, &bytes[at..], at as u64).unwrap();
    }
    (fd, bytes.len() as u64)
}

fn seal(fd: &OwnedFd, seals: SealFlags) {
    rustix::fs::fcntl_add_seals(fd, seals).unwrap();
}

fn shrink(fd: BorrowedFd<'_>) {
    rustix::fs::ftruncate(fd, 0).unwrap();
}

fn forge(how: Forgery) -> Vec<u8> {
    let all = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL;
    let honest = pattern(1 << 20, 9);
    let (fd, len, then): (OwnedFd, u64, fn(BorrowedFd<'_>)) = match how {
        Forgery::Pipe => {
            let (r, w) = rustix::pipe::pipe().unwrap();
            std::mem::forget(w); // keep the pipe open: a read would block
            (r, 1 << 20, |_| {})
        }
        Forgery::Unsealed => {
            let (fd, len) = honest_memfd(&honest);
            (fd, len, |_| {})
        }
        Forgery::Writable => {
            let (fd, len) = honest_memfd(&honest);
            seal(&fd, SealFlags::SHRINK | SealFlags::GROW);
            (fd, len, |_| {})
        }
        Forgery::ShrunkAfterSending => {
            let (fd, len) = honest_memfd(&honest);
            (fd, len, shrink)
        }
        Forgery::SizeLies => {
            let (fd, _) = honest_memfd(&honest[..4000]);
            seal(&fd, all);
            (fd, 1 << 20, |_| {})
        }
        Forgery::SizeLiesSmall => {
            let (fd, _) = honest_memfd(&honest);
            seal(&fd, all);
            (fd, 4096, |_| {})
        }
        Forgery::Sparse => {
            let fd =
                rustix::fs::memfd_create("forged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::fs::ftruncate(&fd, 64 << 20).unwrap();
            seal(&fd, all);
            (fd, 64 << 20, |_| {})
        }
        Forgery::OverTheLimit => {
            let fd =
                rustix::fs::memfd_create("forged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::fs::ftruncate(&fd, (1 << 30) + 1).unwrap();
            seal(&fd, all);
            (fd, (1 << 30) + 1, |_| {})
        }
        Forgery::Garbage => {
            let fd =
                rustix::fs::memfd_create("forged", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::io::write(&fd, &[0xff; 4096]).unwrap();
            seal(&fd, all);
            (fd, 4096, |_| {})
        }
    };
    tandem::chaos::answer_with_memory(fd, len, then).unwrap();
    honest
}

fn assert_codec(how: Forgery, result: Result<Vec<u8>, Error>, context: &str) {
    match result {
        Err(Error::Codec(why)) => {
            let expected = match how {
                Forgery::Pipe => "not a memfd",
                Forgery::Unsealed | Forgery::Writable | Forgery::ShrunkAfterSending => "not sealed",
                Forgery::SizeLies | Forgery::SizeLiesSmall => "not the",
                Forgery::Sparse => "holes",
                Forgery::OverTheLimit => "over the limit",
                Forgery::Garbage => "deserializing",
            };
            assert!(
                why.contains(expected),
                "{context}: {how:?} gave {why:?}, expected it to say {expected:?}"
            );
        }
        other => panic!("{context}: {how:?} gave {other:?}"),
    }
}

#[test]
fn a_hostile_workers_descriptor_is_refused_and_the_pool_goes_on() {
    let _serial = serial();
    let fds = settled_fds();
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        for how in FORGERIES {
            assert_codec(how, pool.submit(how, forge).join(), &format!("pool {method:?}"));
            // The same worker goes on: an honest big result right after.
            let back = pool.submit(1usize << 20, |n| pattern(n, 9)).join().unwrap();
            assert!(back == pattern(1 << 20, 9), "{method:?} after {how:?}");
        }
        assert_eq!(pool.stats().workers[0].restarts, 0, "{method:?}: no worker was replaced");
        for how in FORGERIES {
            let unit = tandem::process::Builder::new().start_method(method);
            assert_codec(how, unit.spawn(how, forge).unwrap().join(), &format!("one-off {method:?}"));
        }
    }
    assert_eq!(common::open_fds(), fds, "every forged descriptor was closed");
    assert_eq!(memfd_mappings("forged"), 0, "no forged memfd stays mapped");
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

/// Open descriptors and bulk mappings of the process this runs in.
fn resources(_: ()) -> (usize, usize) {
    (common::open_fds(), memfd_mappings("tandem-bulk"))
}

#[test]
fn a_thousand_big_round_trips_leave_descriptors_and_mappings_where_they_started() {
    let _serial = serial();
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let data = ByteBuf::from(pattern(512 << 10, 3));
    // Warm up (the worker's first task maps its own code, starts its allocator).
    assert_eq!(pool.submit(data.clone(), |d| d).join().unwrap(), data);
    let worker_before = pool.submit((), resources).join().unwrap();
    let before = (common::open_fds(), memfd_mappings("tandem-bulk"), memfd_mappings("tandem-shared"));
    for _ in 0..1000 {
        let back = pool.submit(data.clone(), |d| d).join().unwrap();
        assert_eq!(back.len(), data.len());
    }
    let after = (common::open_fds(), memfd_mappings("tandem-bulk"), memfd_mappings("tandem-shared"));
    assert_eq!(after, before, "parent: (descriptors, bulk mappings, shared mappings)");
    assert_eq!(before.1, 0);
    assert_eq!(
        pool.submit((), resources).join().unwrap(),
        worker_before,
        "worker: (descriptors, bulk mappings)"
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
            if i == self.0 / 2 && memfd_fds("tandem-bulk") > 0 {
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
        assert_eq!(pool.submit((), |()| memfd_fds("tandem-bulk")).join().unwrap(), 0);
        let unit = tandem::process::Builder::new().start_method(method);
        let result = unit.spawn(8usize << 20, DiesWhileWritten).unwrap().join();
        assert!(matches!(result, Err(Error::WorkerDied { signal: Some(9), .. })), "{method:?}: {result:?}");
    }
    assert_eq!(common::open_fds(), fds);
    assert_eq!((memfd_fds("tandem-bulk"), memfd_mappings("tandem-bulk")), (0, 0));
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
    let (fd, len) = honest_memfd(&pattern(1000, 9));
    assert!(rustix::fs::fcntl_get_seals(&fd).unwrap().is_empty());
    assert_eq!(rustix::fs::fstat(&fd).unwrap().st_size as u64, len);
    let (r, _w) = rustix::pipe::pipe().unwrap();
    assert!(rustix::fs::fcntl_get_seals(r.as_fd()).is_err());
}
