//! Map items are tasks: whatever the batch size, a crash, a time limit, a
//! retry or a dropped map touches one item, never its whole batch. Run
//! against both modes (where a thread can do the same) and both start
//! methods.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::METHODS;
use serde::{Deserialize, Serialize};
use tandem::shm::SharedSlice;
use tandem::{Error, Mode, Pool, StartMethod};

const MODES: [Mode; 2] = [Mode::Thread, Mode::Process];

/// With batches of 10: first of a batch (0, 40), last (9, 19, 99), middle
/// (14, 25), two side by side (37, 38), and several in one batch (14, 19).
const CRASHERS: [u64; 9] = [0, 9, 14, 19, 25, 37, 38, 40, 99];

fn process_pool(method: StartMethod, retries: u32) -> Pool {
    Pool::builder().mode(Mode::Process).workers(2).start_method(method).retries(retries).build().unwrap()
}

fn crash_at_crashers(x: u64) -> u64 {
    if CRASHERS.contains(&x) {
        tandem::chaos::segfault();
    }
    x * 10
}

/// Check one result per index: the crashers died by SIGSEGV naming their
/// item, everything else has its value.
fn check_only_crashers_failed(results: Vec<(usize, Result<u64, Error>)>, n: usize, what: &str) {
    let mut seen = HashSet::new();
    for (i, r) in results {
        assert!(seen.insert(i), "{what}: index {i} resolved twice");
        match r {
            Ok(v) => {
                assert!(!CRASHERS.contains(&(i as u64)), "{what}: crasher {i} succeeded");
                assert_eq!(v, i as u64 * 10, "{what}: item {i}");
            }
            Err(e @ Error::WorkerDied { .. }) => {
                assert!(CRASHERS.contains(&(i as u64)), "{what}: item {i} failed but did not crash: {e}");
                let Error::WorkerDied { signal, item, .. } = &e else { unreachable!() };
                assert_eq!((*signal, *item), (Some(11), Some(i as u64)), "{what}: {e}");
                assert!(e.to_string().contains(&format!("while running map item {i}")), "{e}");
            }
            Err(e) => panic!("{what}: item {i}: unexpected {e:?}"),
        }
    }
    assert_eq!(seen.len(), n, "{what}: every index once");
}

#[test]
fn a_crash_fails_only_the_item_that_was_running() {
    for method in METHODS {
        let pool = process_pool(method, 0);
        for batch in [10, 7, 1, 100] {
            let ordered: Vec<_> =
                pool.map(0..100u64, crash_at_crashers).batch_size(batch).enumerate().collect();
            check_only_crashers_failed(ordered, 100, &format!("{method:?} map, batches of {batch}"));
            let unordered: Vec<_> =
                pool.map_unordered(0..100u64, crash_at_crashers).batch_size(batch).collect();
            check_only_crashers_failed(
                unordered,
                100,
                &format!("{method:?} map_unordered, batches of {batch}"),
            );
        }
        // Batches sized by the pool itself (thousands of items each).
        let sized: Vec<_> = pool.map(0..20_000u64, crash_at_crashers).enumerate().collect();
        check_only_crashers_failed(sized, 20_000, &format!("{method:?} map, self-sized batches"));
    }
}

/// Count the attempt, and crash on the first attempt of a crasher.
fn crash_once((attempts, i): (SharedSlice<AtomicU32>, u64)) -> u64 {
    let attempt = attempts[i as usize].fetch_add(1, Ordering::SeqCst) + 1;
    if attempt == 1 && CRASHERS.contains(&i) {
        tandem::chaos::segfault();
    }
    i
}

#[test]
fn retries_count_per_item_and_finished_items_never_run_again() {
    for method in METHODS {
        for retries in [0, 1] {
            let pool = process_pool(method, retries);
            let attempts = SharedSlice::<AtomicU32>::new(100).unwrap();
            let items: Vec<_> = (0..100u64).map(|i| (attempts.clone(), i)).collect();
            let results: Vec<_> = pool.map(items, crash_once).batch_size(10).collect();
            for (i, r) in results.into_iter().enumerate() {
                let crasher = CRASHERS.contains(&(i as u64));
                match (crasher, retries, r) {
                    (true, 0, Err(Error::WorkerDied { signal: Some(11), .. })) => {}
                    (_, _, Ok(v)) if !crasher || retries == 1 => assert_eq!(v, i as u64),
                    other => panic!("{method:?} retries {retries}: item {i}: {other:?}"),
                }
                // A crasher ran once more if it was retried; every other
                // item ran exactly once: finished ones kept their results,
                // unstarted ones ran again elsewhere without counting.
                let expected = if crasher && retries == 1 { 2 } else { 1 };
                assert_eq!(
                    attempts[i].load(Ordering::SeqCst),
                    expected,
                    "{method:?} retries {retries}: item {i}"
                );
            }
        }
    }
}

/// Instant for the first 100 items, then 15 ms each.
fn quick_then_slow(i: u64) -> u64 {
    if i >= 100 {
        std::thread::sleep(Duration::from_millis(15));
    }
    i
}

#[test]
fn the_time_limit_is_per_item_so_batching_never_times_out_a_quick_item() {
    for mode in MODES {
        let pool =
            Pool::builder().mode(mode).workers(2).task_timeout(Duration::from_millis(150)).build().unwrap();
        // 40 slow items would take 600 ms in one batch: far past the limit.
        for (i, r) in pool.map(0..140u64, quick_then_slow).enumerate() {
            assert_eq!(r.unwrap(), i as u64, "{mode:?}");
        }
        for (i, r) in pool.map(0..140u64, quick_then_slow).batch_size(140).enumerate() {
            assert_eq!(r.unwrap(), i as u64, "{mode:?}, one batch of everything");
        }
        assert_eq!(pool.stats().workers.iter().map(|w| w.restarts).sum::<u64>(), 0, "{mode:?}");
    }
}

/// Item 150 never ends (it sleeps a minute); the rest are instant.
fn one_endless(i: u64) -> u64 {
    if i == 150 {
        std::thread::sleep(Duration::from_secs(60));
    }
    i
}

#[test]
fn one_endless_item_times_out_alone_and_the_map_finishes() {
    for mode in MODES {
        let pool =
            Pool::builder().mode(mode).workers(2).task_timeout(Duration::from_millis(300)).build().unwrap();
        let ordered: Vec<_> = pool.map(0..300u64, one_endless).collect();
        let unordered: Vec<_> = pool.map_unordered(0..300u64, one_endless).collect();
        let unordered: Vec<_> = {
            let mut u = unordered;
            u.sort_by_key(|(i, _)| *i);
            assert!(u.iter().enumerate().all(|(n, (i, _))| n == *i), "{mode:?}: every index once");
            u.into_iter().map(|(_, r)| r).collect()
        };
        for (what, results) in [("map", ordered), ("map_unordered", unordered)] {
            assert_eq!(results.len(), 300);
            for (i, r) in results.into_iter().enumerate() {
                match (i, r) {
                    (150, Err(Error::TimedOut)) => {}
                    (i, Ok(v)) if i != 150 => assert_eq!(v, i as u64),
                    other => panic!("{mode:?} {what}: {other:?}"),
                }
            }
        }
        // One worker was killed (process) or abandoned (thread) per map.
        assert_eq!(pool.stats().workers.iter().map(|w| w.restarts).sum::<u64>(), 2, "{mode:?}");
        assert_eq!(pool.submit(1u64, |x| x + 1).join().unwrap(), 2);
    }
}

/// Count the item, then work for 2 ms.
fn counted((runs, i): (SharedSlice<AtomicU64>, u64)) -> u64 {
    runs[0].fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2));
    i
}

#[test]
fn a_dropped_map_stops_after_the_items_already_running() {
    for mode in MODES {
        for unordered in [false, true] {
            let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
            let runs = SharedSlice::<AtomicU64>::new(1).unwrap();
            let items = (0..100_000u64).map(|i| (runs.clone(), i));
            let taken = if unordered {
                let mut map = pool.map_unordered(items, counted).batch_size(50);
                let taken = map.by_ref().take(10).count();
                let before = runs[0].load(Ordering::SeqCst);
                drop(map);
                (taken, before)
            } else {
                let mut map = pool.map(items, counted).batch_size(50);
                let taken = map.by_ref().take(10).count();
                let before = runs[0].load(Ordering::SeqCst);
                drop(map);
                (taken, before)
            };
            assert_eq!(taken.0, 10);
            pool.shutdown(); // waits for whatever still runs
            let after = runs[0].load(Ordering::SeqCst);
            // Each worker finishes the item it was running, and may start
            // one more before the stop reaches it; without the stop, the
            // four batches in flight (200 items) would run to their end.
            assert!(
                after - taken.1 <= 4,
                "{mode:?} unordered {unordered}: {} items ran after the map was dropped",
                after - taken.1
            );
        }
    }
}

/// A value whose serialization fails for 13.
#[derive(Debug, Deserialize)]
struct Picky(u64);

impl Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 cannot be sent"));
        }
        s.serialize_u64(self.0)
    }
}

#[test]
fn an_item_that_cannot_be_sent_fails_alone() {
    for method in METHODS {
        let pool = process_pool(method, 0);
        let results: Vec<_> = pool.map((0..40).map(Picky), |p| p.0).batch_size(10).collect();
        for (i, r) in results.into_iter().enumerate() {
            match (i, r) {
                (13, Err(Error::Codec(_))) => {}
                (i, Ok(v)) if i != 13 => assert_eq!(v, i as u64),
                other => panic!("{method:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn items_carrying_shared_objects_are_batched_within_the_descriptor_limit() {
    // Each item carries a descriptor; self-sized batches grow past the 253
    // one message can carry, so they must be cut there, not fail.
    let pool = process_pool(StartMethod::ForkServer, 0);
    let slice = SharedSlice::<AtomicU64>::new(1).unwrap();
    let items: Vec<_> = (0..2_000u64).map(|i| (slice.clone(), i)).collect();
    let sum: u64 = pool
        .map(items, |(s, i): (SharedSlice<AtomicU64>, u64)| {
            s[0].fetch_add(1, Ordering::SeqCst);
            i
        })
        .map(Result::unwrap)
        .sum();
    assert_eq!(sum, (0..2_000u64).sum::<u64>());
    assert_eq!(slice[0].load(Ordering::SeqCst), 2_000);
}

#[test]
fn results_carrying_shared_objects_come_back_from_a_batch() {
    let pool = process_pool(StartMethod::Spawn, 0);
    let made: Vec<SharedSlice<AtomicU64>> = pool
        .map(0..20u64, |i| {
            let s = SharedSlice::<AtomicU64>::new(1).unwrap();
            s[0].store(i * 7, Ordering::SeqCst);
            s
        })
        .batch_size(5)
        .map(Result::unwrap)
        .collect();
    for (i, s) in made.iter().enumerate() {
        assert_eq!(s[0].load(Ordering::SeqCst), i as u64 * 7);
    }
}

#[test]
fn big_results_overflow_the_board_and_still_arrive_in_order() {
    // 300 results of 16 KiB: several times the 1 MiB board, so the worker
    // flushes it to its socket mid-batch.
    for method in METHODS {
        let pool = process_pool(method, 0);
        let out: Vec<Vec<u8>> =
            pool.map(0..300u32, |i| vec![i as u8; 16 << 10]).batch_size(300).map(Result::unwrap).collect();
        assert_eq!(out.len(), 300);
        for (i, v) in out.iter().enumerate() {
            assert!(v.len() == 16 << 10 && v.iter().all(|&b| b == i as u8), "{method:?}: item {i}");
        }
        // One result bigger than the whole board travels alone.
        let huge: Vec<usize> =
            pool.map([1usize, 3 << 20, 5], |n| vec![1u8; n]).map(|r| r.unwrap().len()).collect();
        assert_eq!(huge, vec![1, 3 << 20, 5]);
    }
}

fn panic_at_crashers(x: u64) -> u64 {
    if CRASHERS.contains(&x) {
        panic!("item {x} panicked");
    }
    x * 10
}

/// A panic fails its item in place, wherever it sits in its batch (first,
/// last, two side by side), and the batch's other items keep their values,
/// in order: a batch on a thread guards a stretch of items at once and
/// starts a new stretch after the item that panicked.
#[test]
fn a_panic_fails_only_its_item_wherever_it_sits_in_a_batch() {
    for mode in MODES {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        for (n, batch) in [(100, Some(10)), (100, Some(7)), (100, Some(1)), (100, Some(100)), (20_000, None)]
        {
            let map = pool.map(0..n, panic_at_crashers);
            let map = match batch {
                Some(b) => map.batch_size(b),
                None => map,
            };
            let out: Vec<Result<u64, Error>> = map.collect();
            assert_eq!(out.len(), n as usize, "{mode:?} batches of {batch:?}");
            for (i, r) in out.into_iter().enumerate() {
                match r {
                    Ok(v) => assert_eq!(v, i as u64 * 10, "{mode:?} {batch:?}: item {i}"),
                    Err(Error::Panicked { message }) => {
                        assert!(CRASHERS.contains(&(i as u64)), "{mode:?} {batch:?}: item {i} panicked");
                        assert_eq!(message, format!("item {i} panicked"));
                    }
                    Err(e) => panic!("{mode:?} {batch:?}: item {i}: {e:?}"),
                }
            }
        }
    }
}

/// A map says exactly how many results are left (one per input item), so
/// `collect` sizes its Vec once; and it pulls an endless input only as far
/// as its bounded read-ahead.
#[test]
fn a_map_knows_how_many_results_are_left_and_reads_ahead_a_bounded_amount() {
    for mode in MODES {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        let mut map = pool.map(0..50_000u64, |x| x + 1);
        assert_eq!(map.size_hint(), (50_000, Some(50_000)), "{mode:?}");
        for i in 0..20_000u64 {
            assert_eq!(map.next().unwrap().unwrap(), i + 1);
        }
        assert_eq!(map.size_hint(), (30_000, Some(30_000)), "{mode:?}");
        assert_eq!(map.by_ref().count(), 30_000);
        assert_eq!(map.size_hint(), (0, Some(0)));

        let pulled = std::cell::Cell::new(0u64);
        let first: Vec<u64> = pool
            .map((0u64..).inspect(|_| pulled.set(pulled.get() + 1)), |x| x * 2)
            .take(100_000)
            .map(Result::unwrap)
            .collect();
        assert_eq!(first.len(), 100_000);
        assert!(first.iter().enumerate().all(|(i, &v)| v == 2 * i as u64), "{mode:?}: out of order");
        // At most 2 x workers batches of at most 16,384 items are read ahead.
        assert!(pulled.get() <= 100_000 + 4 * 16_384, "{mode:?}: pulled {}", pulled.get());
    }
}

/// A number that serializes as a `u32` when it fits and as a `u64` when it
/// does not (postcard reads either back): its values change shape within
/// one map.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Flex(u64);

impl Serialize for Flex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match u32::try_from(self.0) {
            Ok(small) => s.serialize_u32(small),
            Err(_) => s.serialize_u64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Flex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Flex, D::Error> {
        u64::deserialize(d).map(Flex)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
struct Meters(f32);

/// Items and results that are one primitive travel in a fixed-width
/// encoding: every kind comes back exactly (a float is never read as an
/// integer's bits), newtypes too, and values whose shape changes within a
/// batch (there the map goes on in postcard) come back in order all the same.
#[test]
fn primitive_items_and_results_of_every_kind_come_back_exactly() {
    for mode in MODES {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        let floats: Vec<f64> = pool.map(0..3000u64, |x| x as f64 / 3.0).map(Result::unwrap).collect();
        assert_eq!(floats, (0..3000u64).map(|x| x as f64 / 3.0).collect::<Vec<_>>(), "{mode:?}");
        let bytes: Vec<i8> = pool.map(-1500..1500i64, |x| (x % 128) as i8).map(Result::unwrap).collect();
        assert_eq!(bytes, (-1500..1500i64).map(|x| (x % 128) as i8).collect::<Vec<_>>(), "{mode:?}");
        let flags: Vec<bool> = pool.map(0..3000u16, |x| x % 3 == 0).map(Result::unwrap).collect();
        assert_eq!(flags, (0..3000u16).map(|x| x % 3 == 0).collect::<Vec<_>>(), "{mode:?}");
        let m: Vec<Meters> = pool
            .map((0..3000).map(|i| Meters(i as f32)), |Meters(x)| Meters(x * 0.5))
            .map(Result::unwrap)
            .collect();
        assert_eq!(m, (0..3000).map(|i| Meters(i as f32 * 0.5)).collect::<Vec<_>>(), "{mode:?}");
        // Small and big values mixed: some batches start fixed-width and
        // meet a value of another kind in the middle.
        let input: Vec<Flex> = (0..20_000u64).map(|i| Flex(if i % 997 == 5 { i << 36 } else { i })).collect();
        let doubled: Vec<Flex> = pool
            .map(input.clone(), |Flex(x)| Flex(if x % 2 == 0 { x << 33 } else { x }))
            .map(Result::unwrap)
            .collect();
        let want: Vec<Flex> =
            input.iter().map(|&Flex(x)| Flex(if x % 2 == 0 { x << 33 } else { x })).collect();
        assert_eq!(doubled, want, "{mode:?}");
    }
}

/// A worker killed in the middle of a batch of fixed-width items: only the
/// running item fails, and the unrun rest is cut out of the batch and sent
/// again (the cut keeps the encoding).
#[test]
fn a_crash_in_a_batch_of_primitives_fails_only_its_item() {
    for method in METHODS {
        let pool = process_pool(method, 0);
        for batch in [10, 64, 1000] {
            let out: Vec<_> = pool.map(0..3000u64, crash_at_crashers).batch_size(batch).enumerate().collect();
            check_only_crashers_failed(out, 3000, &format!("{method:?} primitives, batches of {batch}"));
        }
    }
}

fn panic_at_5000_and_9000(x: u64) -> u64 {
    if x == 5000 || x == 9000 {
        panic!("item {x} panicked");
    }
    x * 10
}

fn crash_at_5000_and_9000(x: u64) -> u64 {
    if x == 5000 || x == 9000 {
        tandem::chaos::segfault();
    }
    x * 10
}

/// `try_collect_vec` takes each batch's values whole: every value in input
/// order, or the first failure in input order (a panic on a thread, a real
/// SIGSEGV in a process), whatever the batch size.
#[test]
fn try_collect_vec_is_every_value_in_order_or_the_first_failure() {
    for mode in MODES {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        assert_eq!(pool.map(0..0u64, |x| x).try_collect_vec().unwrap(), Vec::<u64>::new());
        for batch in [Some(7), Some(1000), None] {
            let map = pool.map(0..50_000u64, |x| x * 10);
            let map = match batch {
                Some(b) => map.batch_size(b),
                None => map,
            };
            let all = map.try_collect_vec().unwrap();
            assert!(all.iter().copied().eq((0..50_000u64).map(|x| x * 10)), "{mode:?} {batch:?}");

            let failing = if mode == Mode::Thread { panic_at_5000_and_9000 } else { crash_at_5000_and_9000 };
            let map = pool.map(0..20_000u64, failing);
            let map = match batch {
                Some(b) => map.batch_size(b),
                None => map,
            };
            match (mode, map.try_collect_vec()) {
                (Mode::Thread, Err(Error::Panicked { message })) => assert_eq!(message, "item 5000 panicked"),
                (Mode::Process, Err(Error::WorkerDied { signal, item, .. })) => {
                    assert_eq!((signal, item), (Some(11), Some(5000)), "{batch:?}")
                }
                (mode, other) => panic!("{mode:?} {batch:?}: {:?}", other.map(|v| v.len())),
            }
        }
        // The pool goes on.
        assert_eq!(pool.submit(2u64, |x| x + 1).join().unwrap(), 3);
    }
}
