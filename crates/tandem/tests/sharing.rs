//! Sharing primitives between real processes (and threads): queue, channel,
//! shared slice, mutex, semaphore, event, barrier — including units killed
//! by SIGKILL while using them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tandem::ipc::{self, Queue, RecvError, RecvTimeoutError, SendError, TryRecvError};
use tandem::process::Builder;
use tandem::shm::SharedSlice;
use tandem::sync::{Barrier, Event, Mutex, Semaphore};
use tandem::{Error, JoinHandle, Mode, StartMethod};

/// Generous limit for waits that should end at once: only hit if broken.
const LONG: Duration = Duration::from_secs(30);

fn fork_server() -> Builder {
    Builder::new().start_method(StartMethod::ForkServer)
}

// ------------------------------------------------------------------ Queue

fn produce((q, producer, count): (Queue<u64>, u64, u64)) {
    for i in 0..count {
        q.put(producer << 32 | i).unwrap();
    }
}

fn consume_until_sentinel(q: Queue<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let x = q.get().unwrap();
        if x == u64::MAX {
            return got;
        }
        got.push(x);
    }
}

#[test]
fn queue_delivers_every_item_exactly_once_between_processes() {
    const PRODUCERS: u64 = 3;
    const CONSUMERS: usize = 2;
    const EACH: u64 = 3000;
    let q = Queue::<u64>::bounded(64).unwrap();
    let consumers: Vec<_> =
        (0..CONSUMERS).map(|_| fork_server().spawn(q.clone(), consume_until_sentinel).unwrap()).collect();
    let producers: Vec<_> =
        (0..PRODUCERS).map(|p| fork_server().spawn((q.clone(), p, EACH), produce).unwrap()).collect();
    for p in producers {
        p.join().unwrap();
    }
    for _ in 0..CONSUMERS {
        q.put(u64::MAX).unwrap();
    }
    let mut all = Vec::new();
    for c in consumers {
        let got = c.join().unwrap();
        // Each consumer sees each producer's items in the order they were put.
        let mut last: HashMap<u64, u64> = HashMap::new();
        for &x in &got {
            if let Some(prev) = last.insert(x >> 32, x) {
                assert!(prev < x, "FIFO per producer violated: {prev:#x} before {x:#x}");
            }
        }
        all.extend(got);
    }
    let expected: u64 = (0..PRODUCERS).map(|p| (0..EACH).map(|i| p << 32 | i).sum::<u64>()).sum();
    assert_eq!(all.len() as u64, PRODUCERS * EACH, "item count");
    assert_eq!(all.iter().sum::<u64>(), expected, "checksum");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len(), "duplicates");
    assert!(q.is_empty());
}

fn victim((q, busy, taken): (Queue<u64>, Event, SharedSlice<AtomicU64>)) {
    loop {
        let x = q.get().unwrap();
        assert_ne!(x, u64::MAX, "victims are killed before sentinels are put");
        if taken[0].fetch_add(1, Ordering::SeqCst) == 300 {
            busy.set();
        }
    }
}

/// Put items until told to stop; returns how many.
fn produce_until((q, producer, stop): (Queue<u64>, u64, Event)) -> u64 {
    let mut i = 0;
    while !stop.is_set() {
        q.put(producer << 32 | i).unwrap();
        i += 1;
    }
    i
}

#[test]
fn queue_survives_consumers_killed_mid_operation() {
    const PRODUCERS: u64 = 2;
    const VICTIMS: usize = 4;
    let q = Queue::<u64>::bounded(32).unwrap();
    let stop = Event::new().unwrap();
    let survivor = fork_server().spawn(q.clone(), consume_until_sentinel).unwrap();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| fork_server().spawn((q.clone(), p, stop.clone()), produce_until).unwrap())
        .collect();
    let mut taken_by_victims = 0;
    for _ in 0..VICTIMS {
        let busy = Event::new().unwrap();
        let taken = SharedSlice::<AtomicU64>::new(1).unwrap();
        let v = fork_server().spawn((q.clone(), busy.clone(), taken.clone()), victim).unwrap();
        // Killed while it loops on get(): often inside the queue's lock.
        assert!(busy.wait_timeout(LONG), "the victim never got going");
        v.kill().unwrap();
        assert!(matches!(v.join(), Err(Error::WorkerDied { signal: Some(9), .. })));
        taken_by_victims += taken[0].load(Ordering::SeqCst);
    }
    stop.set();
    let total: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    q.put(u64::MAX).unwrap();
    let got = survivor.join().unwrap();
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len(), "duplicates");
    assert!(taken_by_victims >= 4 * 300 && total > taken_by_victims, "{total} {taken_by_victims}");
    let unaccounted = total - got.len() as u64 - taken_by_victims;
    // A victim killed between taking an item and counting it loses that one.
    assert!(unaccounted <= VICTIMS as u64, "{unaccounted} items vanished");
    // And the queue still works normally.
    assert!(q.is_empty());
    q.put(5).unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), 5);
}

/// Take an item and put it back, over and over: `busy` is set after 1000
/// rounds; stops (returning the rounds done) once `stop` is set.
fn circulate((q, busy, stop): (Queue<u64>, Event, Event)) -> u64 {
    let mut rounds = 0;
    while !stop.is_set() {
        let x = q.get().unwrap();
        q.put(x).unwrap();
        rounds += 1;
        if rounds == 1000 {
            busy.set();
        }
    }
    rounds
}

#[test]
fn queue_survives_units_killed_while_they_churn_it() {
    // Only the churners touch this queue and it is never full or empty, so
    // they are always inside get/put: kills land inside the lock often.
    const ITEMS: u64 = 32;
    const VICTIMS: usize = 32;
    let q = Queue::<u64>::bounded(64).unwrap();
    for i in 0..ITEMS {
        q.put(i).unwrap();
    }
    let (stop, never) = (Event::new().unwrap(), Event::new().unwrap());
    let survivor_busy = Event::new().unwrap();
    let survivor = fork_server().spawn((q.clone(), survivor_busy.clone(), stop.clone()), circulate).unwrap();
    for _ in 0..VICTIMS {
        let busy = Event::new().unwrap();
        let v = fork_server().spawn((q.clone(), busy.clone(), never.clone()), circulate).unwrap();
        assert!(busy.wait_timeout(LONG), "the victim never got going");
        v.kill().unwrap();
        assert!(matches!(v.join(), Err(Error::WorkerDied { signal: Some(9), .. })));
    }
    // The survivor was never blocked for good: it is still making progress.
    assert!(survivor_busy.wait_timeout(LONG));
    stop.set();
    assert!(survivor.join_timeout(LONG).unwrap() >= 1000);
    let mut left = Vec::new();
    while let Some(x) = q.try_get().unwrap() {
        left.push(x);
    }
    assert!(left.iter().all(|&x| x < ITEMS), "{left:?}");
    assert_eq!(left.iter().collect::<HashSet<_>>().len(), left.len(), "duplicates: {left:?}");
    // A victim killed between its get and its put loses the item it held.
    assert!(left.len() as u64 >= ITEMS - VICTIMS as u64, "{} items left", left.len());
}

#[test]
fn queue_timeouts_and_limits() {
    let q = Queue::<Vec<u8>>::with_max_item(2, 32).unwrap();
    assert!(matches!(q.get_timeout(Duration::from_millis(5)), Err(Error::TimedOut)));
    assert!(matches!(q.put(vec![0; 64]), Err(Error::TooLarge { max: 32, .. })));
    q.put(vec![1]).unwrap();
    q.put(vec![2]).unwrap();
    assert!(matches!(q.put_timeout(vec![3], Duration::from_millis(5)), Err(Error::TimedOut)));
    assert_eq!(q.len(), 2);
    assert_eq!(q.try_get().unwrap(), Some(vec![1]));
    assert_eq!(q.get().unwrap(), vec![2]);
    assert_eq!(q.try_get().unwrap(), None);
    let (tx, _rx) = ipc::channel::<u8>().unwrap();
    let qs = Queue::<ipc::Sender<u8>>::bounded(2).unwrap();
    assert!(matches!(qs.put(tx), Err(Error::Unsupported(_))));
}

#[derive(Debug, Clone)]
enum Op {
    Put(u16),
    Get,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// One thread: the queue behaves as a bounded FIFO.
    #[test]
    fn queue_is_a_bounded_fifo(capacity in 1usize..6, ops in prop::collection::vec(
        prop_oneof![any::<u16>().prop_map(Op::Put), Just(Op::Get)], 0..60)) {
        let q = Queue::<u16>::bounded(capacity).unwrap();
        let mut model = std::collections::VecDeque::new();
        for op in ops {
            match op {
                Op::Put(x) => {
                    let r = q.put_timeout(x, Duration::ZERO);
                    if model.len() < capacity {
                        prop_assert!(r.is_ok());
                        model.push_back(x);
                    } else {
                        prop_assert!(matches!(r, Err(Error::TimedOut)));
                    }
                }
                Op::Get => prop_assert_eq!(q.try_get().unwrap(), model.pop_front()),
            }
            prop_assert_eq!(q.len(), model.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Threads: random producer/consumer counts, sizes and capacities; every
    /// item arrives once, each producer's items in order.
    #[test]
    fn queue_threads_no_loss_no_duplicates(producers in 1u64..4, consumers in 1usize..4,
                                           each in 0u64..400, capacity in 1usize..8) {
        let q = Queue::<u64>::bounded(capacity).unwrap();
        let takers: Vec<_> = (0..consumers)
            .map(|_| tandem::thread::spawn(q.clone(), consume_until_sentinel).unwrap())
            .collect();
        let givers: Vec<_> = (0..producers)
            .map(|p| tandem::thread::spawn((q.clone(), p, each), produce).unwrap())
            .collect();
        for g in givers { g.join().unwrap(); }
        for _ in 0..consumers { q.put(u64::MAX).unwrap(); }
        let mut all = Vec::new();
        for t in takers {
            let got = t.join().unwrap();
            let mut last: HashMap<u64, u64> = HashMap::new();
            for &x in &got {
                if let Some(prev) = last.insert(x >> 32, x) { prop_assert!(prev < x); }
            }
            all.extend(got);
        }
        all.sort_unstable();
        let mut expected: Vec<u64> = (0..producers).flat_map(|p| (0..each).map(move |i| p << 32 | i)).collect();
        expected.sort_unstable();
        prop_assert_eq!(all, expected);
    }
}

// ------------------------------------------------------------------ channel

fn send_three(tx: ipc::Sender<String>) {
    for word in ["one", "two", "three"] {
        tx.send(word.to_string()).unwrap();
    }
}

#[test]
fn channel_same_code_on_threads_and_processes() {
    for mode in [Mode::Thread, Mode::Process] {
        let (tx, rx) = ipc::channel::<String>().unwrap();
        let h = tandem::spawn(mode, tx, send_three).unwrap();
        let got: Vec<String> = rx.iter().collect(); // ends once the sender is gone
        assert_eq!(got, ["one", "two", "three"], "{mode:?}");
        h.join().unwrap();
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }
}

fn send_then_hang((tx, _): (ipc::Sender<u32>, ())) {
    tx.send(1).unwrap();
    std::thread::sleep(Duration::from_secs(60)); // killed long before this ends
}

#[test]
fn channel_disconnects_when_the_sender_process_dies() {
    let (tx, rx) = ipc::channel::<u32>().unwrap();
    let h = fork_server().spawn((tx, ()), send_then_hang).unwrap();
    assert_eq!(rx.recv_timeout(LONG).unwrap(), 1);
    h.kill().unwrap();
    assert!(matches!(rx.recv_timeout(LONG), Err(RecvTimeoutError::Disconnected)));
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    let _ = h.join();
}

fn send_oversize(tx: ipc::Sender<Vec<u8>>) -> String {
    let refused = match tx.send(vec![7; 4096]) {
        Err(SendError::Failed(v, e @ Error::TooLarge { size, max: 1024 }))
            if v.len() == 4096 && size > 4096 =>
        {
            e.to_string()
        }
        other => panic!("expected TooLarge, got {other:?}"),
    };
    tx.send(vec![1; 10]).unwrap();
    refused
}

#[test]
fn channel_refuses_oversize_messages_on_the_sending_side() {
    let (tx, rx) = ipc::channel_with_max_message::<Vec<u8>>(1024).unwrap();
    let h = fork_server().spawn(tx, send_oversize).unwrap();
    let message = h.join().unwrap();
    assert!(message.contains("over the limit of 1024 bytes"), "{message}");
    // Nothing of the refused message reached the receiver: the next frame is
    // the small one.
    assert_eq!(rx.recv_timeout(LONG).unwrap(), vec![1; 10]);
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

fn send_big_frames((tx, id): (ipc::Sender<Vec<u8>>, u8)) {
    for _ in 0..30 {
        tx.send(vec![id; 300 << 10]).unwrap();
    }
}

#[test]
fn channel_frames_from_many_sender_processes_never_interleave() {
    let (tx, rx) = ipc::channel::<Vec<u8>>().unwrap();
    // 300 KiB frames are larger than a socket buffer, so each is written in
    // several pieces: without the senders' lock they would interleave.
    let hs: Vec<_> =
        (1..=3u8).map(|id| fork_server().spawn((tx.clone(), id), send_big_frames).unwrap()).collect();
    drop(tx);
    let mut counts = [0; 4];
    for frame in rx.iter() {
        assert_eq!(frame.len(), 300 << 10);
        assert!(frame.iter().all(|&b| b == frame[0]), "a frame mixes bytes from two senders");
        counts[frame[0] as usize] += 1;
    }
    assert_eq!(counts, [0, 30, 30, 30]);
    for h in hs {
        h.join().unwrap();
    }
}

fn recv_sum(rx: ipc::Receiver<u64>) -> u64 {
    rx.iter().sum()
}

#[test]
fn receiver_moves_to_a_process_and_shareables_ride_in_messages() {
    let (tx, rx) = ipc::channel::<u64>().unwrap();
    let h = tandem::process::spawn(rx, recv_sum).unwrap();
    for i in 1..=100 {
        tx.send(i).unwrap();
    }
    drop(tx);
    assert_eq!(h.join().unwrap(), 5050);

    // A channel of channels: a reply sender travels inside a message.
    let (req_tx, req_rx) = ipc::channel::<(u64, ipc::Sender<u64>)>().unwrap();
    let server = tandem::process::spawn(req_rx, |rx| {
        for (x, reply) in rx.iter() {
            reply.send(x * 2).unwrap();
        }
    })
    .unwrap();
    let (reply_tx, reply_rx) = ipc::channel::<u64>().unwrap();
    req_tx.send((21, reply_tx)).unwrap();
    assert_eq!(reply_rx.recv_timeout(LONG).unwrap(), 42);
    drop(req_tx);
    server.join().unwrap();
}

// ------------------------------------------------------------------ SharedSlice

fn fill((s, from): (SharedSlice<AtomicU64>, usize)) {
    for i in (from..s.len()).step_by(2) {
        s[i].store(i as u64 * 3, Ordering::Relaxed);
    }
}

#[test]
fn shared_slice_is_the_same_memory_everywhere() {
    let s = SharedSlice::<AtomicU64>::new(10_000).unwrap();
    let a = tandem::process::spawn((s.clone(), 0), fill).unwrap();
    let b = tandem::thread::spawn((s.clone(), 1), fill).unwrap();
    a.join().unwrap();
    b.join().unwrap();
    assert!(s.iter().enumerate().all(|(i, x)| x.load(Ordering::Relaxed) == i as u64 * 3));

    let table = SharedSlice::from_slice(&(0..1000u32).collect::<Vec<_>>()).unwrap();
    let h = tandem::process::spawn(table, |t| t.iter().map(|&x| x as u64).sum::<u64>()).unwrap();
    assert_eq!(h.join().unwrap(), 499_500);
    assert!(SharedSlice::<u8>::new(0).unwrap().is_empty());
}

// ------------------------------------------------------------------ Mutex

fn lock_and_hang((m, locked): (Mutex<u64>, Event)) {
    let mut g = m.lock().unwrap();
    *g = 7;
    locked.set();
    std::thread::sleep(Duration::from_secs(60)); // killed holding the lock
    *g = 0;
}

#[test]
fn mutex_holder_killed_poisons_with_a_usable_guard() {
    let m = Mutex::new(0u64).unwrap();
    let locked = Event::new().unwrap();
    let h = fork_server().spawn((m.clone(), locked.clone()), lock_and_hang).unwrap();
    assert!(locked.wait_timeout(LONG));
    assert!(matches!(m.try_lock(), Err(std::sync::TryLockError::WouldBlock)));
    h.kill().unwrap();
    let mut g = match m.lock() {
        Err(poisoned) => poisoned.into_inner(),
        Ok(_) => panic!("a dead holder must poison the lock"),
    };
    assert_eq!(*g, 7, "the dead holder's write is visible");
    *g = 8;
    drop(g);
    assert!(m.is_poisoned());
    assert_eq!(*m.lock().unwrap_err().into_inner(), 8);
    m.clear_poison();
    assert_eq!(*m.lock().unwrap(), 8);
    let _ = h.join();
}

fn add_many((m, n): (Mutex<[u64; 2]>, u64)) {
    for _ in 0..n {
        let mut g = m.lock().unwrap();
        // Two fields kept equal only under mutual exclusion.
        let v = g[0];
        g[0] = v + 1;
        g[1] += 1;
    }
}

#[test]
fn mutex_excludes_across_processes_and_threads_and_panics_poison() {
    let m = Mutex::new([0u64; 2]).unwrap();
    let hs: Vec<JoinHandle<()>> = vec![
        fork_server().spawn((m.clone(), 5000), add_many).unwrap(),
        fork_server().spawn((m.clone(), 5000), add_many).unwrap(),
        tandem::thread::spawn((m.clone(), 5000), add_many).unwrap(),
    ];
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(*m.lock().unwrap(), [15_000, 15_000]);

    let theirs = m.clone();
    let r = std::thread::spawn(move || {
        let _g = theirs.lock().unwrap();
        panic!("boom while holding the lock");
    })
    .join();
    assert!(r.is_err());
    assert!(m.lock().is_err(), "a panicking holder poisons, as in std");
}

// ------------------------------------------------------------------ Semaphore, Event, Barrier

fn bounded_section((s, inside, rounds): (Semaphore, SharedSlice<AtomicU64>, u32)) {
    for _ in 0..rounds {
        s.acquire();
        let now = inside[0].fetch_add(1, Ordering::SeqCst) + 1;
        inside[1].fetch_max(now, Ordering::SeqCst);
        std::hint::spin_loop();
        inside[0].fetch_sub(1, Ordering::SeqCst);
        s.release();
    }
}

#[test]
fn semaphore_bounds_concurrency_across_processes() {
    let s = Semaphore::new(2).unwrap();
    let inside = SharedSlice::<AtomicU64>::new(2).unwrap();
    let hs: Vec<_> = (0..4)
        .map(|_| fork_server().spawn((s.clone(), inside.clone(), 2000), bounded_section).unwrap())
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let most = inside[1].load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} units were inside at once");
    assert_eq!(s.available(), 2);
    assert!(!Semaphore::new(0).unwrap().acquire_timeout(Duration::from_millis(2)));
}

fn ping_pong((go, done): (Event, Event)) {
    assert!(go.wait_timeout(LONG));
    done.set();
}

#[test]
fn event_across_processes() {
    let (go, done) = (Event::new().unwrap(), Event::new().unwrap());
    let h = fork_server().spawn((go.clone(), done.clone()), ping_pong).unwrap();
    assert!(!done.wait_timeout(Duration::from_millis(5)));
    go.set();
    assert!(done.wait_timeout(LONG));
    assert!(done.is_set());
    done.clear();
    assert!(!done.is_set());
    h.join().unwrap();
}

fn rounds((b, log): (Barrier, SharedSlice<AtomicU64>)) -> u32 {
    let mut leaders = 0;
    for round in 0..20 {
        // Nobody may start round r+1 before everyone finished round r.
        log[round].fetch_add(1, Ordering::SeqCst);
        if b.wait().unwrap().is_leader() {
            leaders += 1;
        }
        assert_eq!(log[round].load(Ordering::SeqCst), 4, "a party passed the barrier early");
        if b.wait().unwrap().is_leader() {
            leaders += 1;
        }
    }
    leaders
}

#[test]
fn barrier_across_processes() {
    let b = Barrier::new(4).unwrap();
    let log = SharedSlice::<AtomicU64>::new(20).unwrap();
    let hs: Vec<_> = (0..3).map(|_| fork_server().spawn((b.clone(), log.clone()), rounds).unwrap()).collect();
    let mine = rounds((b, log));
    let leaders: u32 = mine + hs.into_iter().map(|h| h.join().unwrap()).sum::<u32>();
    assert_eq!(leaders, 40, "exactly one leader per wait");
}

fn hold_and_hang((_b, attached): (Barrier, Event)) {
    attached.set();
    std::thread::sleep(Duration::from_secs(60)); // killed before arriving
}

fn wait_once(b: Barrier) -> String {
    b.wait().unwrap_err().to_string()
}

#[test]
fn barrier_whose_party_died_fails_its_waiters() {
    let b = Barrier::new(3).unwrap();
    let attached = Event::new().unwrap();
    let doomed = fork_server().spawn((b.clone(), attached.clone()), hold_and_hang).unwrap();
    let waiter = fork_server().spawn(b.clone(), wait_once).unwrap();
    assert!(attached.wait_timeout(LONG));
    let pid = match doomed.id() {
        tandem::UnitId::Process(pid) => pid,
        other => panic!("{other:?}"),
    };
    doomed.kill().unwrap();
    let here = b.wait().unwrap_err().to_string();
    assert!(here.contains(&format!("process {pid}")) && here.contains("died"), "{here}");
    let there = waiter.join_timeout(LONG).unwrap();
    assert!(there.contains("broken"), "{there}");
    assert!(b.wait().is_err(), "a broken barrier stays broken");
    let _ = doomed.join();
}

// ------------------------------------------------------------------ nothing reachable from outside

fn dev_shm() -> HashSet<std::ffi::OsString> {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

fn fds() -> HashSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

type Everything = (ipc::Sender<u8>, Queue<u8>, SharedSlice<u8>, Mutex<u8>, Semaphore, Event, Barrier);

#[test]
fn nothing_under_dev_shm_and_every_descriptor_close_on_exec() {
    let shm_before = dev_shm();
    let fds_before = fds();
    let (tx, rx) = ipc::channel::<u8>().unwrap();
    let all: Everything = (
        tx,
        Queue::bounded(4).unwrap(),
        SharedSlice::new(4096).unwrap(),
        Mutex::new(0).unwrap(),
        Semaphore::new(1).unwrap(),
        Event::new().unwrap(),
        Barrier::new(1).unwrap(),
    );
    let h = tandem::process::spawn(all.clone(), |(tx, q, s, m, sem, e, b): Everything| {
        tx.send(1).unwrap();
        q.put(s[0]).unwrap();
        *m.lock().unwrap() += 1;
        sem.release();
        e.set();
        b.wait().unwrap();
    })
    .unwrap();
    h.join().unwrap();
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(all.1.get().unwrap(), 0);
    assert_eq!(*all.3.lock().unwrap(), 1);
    assert!(all.5.is_set());
    assert_eq!(dev_shm(), shm_before, "a shared object appeared under /dev/shm");
    let new: Vec<i32> = fds().difference(&fds_before).copied().collect();
    assert!(new.len() >= 8, "expected the new objects' descriptors, saw {new:?}");
    for fd in new {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string());
        let Ok(link) = link else { continue }; // closed meanwhile by another test
        if !(link.starts_with("/memfd:tandem-shared") || link.starts_with("socket:")) {
            continue; // another test's descriptor (tests run in parallel)
        }
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let flags = flags.lines().find_map(|l| l.strip_prefix("flags:")).map(|f| f.trim().to_string());
        if let Some(flags) = flags {
            let flags = u32::from_str_radix(&flags, 8).unwrap();
            assert_ne!(flags & 0o2000000, 0, "descriptor {fd} ({link}) is not close-on-exec");
        }
    }
}

// ------------------------------------------------------------------ through a pool

fn bump((counts, q, m): (SharedSlice<AtomicU64>, Queue<u64>, Mutex<u64>)) -> u64 {
    counts[0].fetch_add(1, Ordering::SeqCst);
    *m.lock().unwrap() += 1;
    q.put(7).unwrap();
    std::process::id() as u64
}

#[test]
fn shareables_ride_in_pool_tasks_in_both_modes() {
    for mode in [Mode::Thread, Mode::Process] {
        let pool = tandem::Pool::builder().mode(mode).workers(2).build().unwrap();
        let counts = SharedSlice::<AtomicU64>::new(1).unwrap();
        let q = Queue::<u64>::bounded(64).unwrap();
        let m = Mutex::new(0u64).unwrap();
        let hs: Vec<_> = (0..20).map(|_| pool.submit((counts.clone(), q.clone(), m.clone()), bump)).collect();
        let pids: HashSet<u64> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let here = std::process::id() as u64;
        assert_eq!(pids.contains(&here), mode == Mode::Thread, "{mode:?} ran in {pids:?}");
        assert_eq!(counts[0].load(Ordering::SeqCst), 20, "{mode:?}");
        assert_eq!(*m.lock().unwrap(), 20, "{mode:?}");
        assert_eq!(q.len(), 20, "{mode:?}");
    }
}

fn take_permit((s, started): (Semaphore, Event)) {
    started.set();
    s.acquire();
}

fn await_event((e, started): (Event, Event)) {
    started.set();
    e.wait();
}

#[test]
fn killed_waiters_do_not_wedge_semaphore_or_event() {
    let s = Semaphore::new(0).unwrap();
    let e = Event::new().unwrap();
    for _ in 0..3 {
        let started = Event::new().unwrap();
        let a = fork_server().spawn((s.clone(), started.clone()), take_permit).unwrap();
        let b = fork_server().spawn((e.clone(), started.clone()), await_event).unwrap();
        assert!(started.wait_timeout(LONG));
        a.kill().unwrap();
        b.kill().unwrap();
        let _ = (a.join(), b.join());
    }
    let started = Event::new().unwrap();
    let a = fork_server().spawn((s.clone(), started.clone()), take_permit).unwrap();
    let b = fork_server().spawn((e.clone(), started.clone()), await_event).unwrap();
    s.release();
    e.set();
    a.join_timeout(LONG).unwrap();
    b.join_timeout(LONG).unwrap();
    assert_eq!(s.available(), 0);
}
