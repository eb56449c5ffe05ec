//! Handles, units, streams and receivers awaited on real executors: tokio's
//! current-thread and multi-thread runtimes and `futures::executor`.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use common::Fifo;
use tandem::{Error, Mode, Pool};

const MODES: [Mode; 2] = [Mode::Thread, Mode::Process];

/// Tests that count this process's threads run alone; the rest together.
static THREADS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn together() -> std::sync::RwLockReadGuard<'static, ()> {
    THREADS.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    THREADS.write().unwrap_or_else(|e| e.into_inner())
}

fn pool(mode: Mode, workers: usize) -> Pool {
    Pool::builder().mode(mode).workers(workers).build().unwrap()
}

/// Run the future `make` builds on each executor in turn.
fn on_every_executor<F: Future<Output = ()> + Send + 'static>(make: impl Fn() -> F) {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(make());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::spawn(make()).await.unwrap() });
    futures::executor::block_on(make());
}

/// As [`on_every_executor`], for a future that is not `Send` (it borrows a
/// `Receiver`): on the multi-thread runtime it is polled by `block_on`.
fn on_every_executor_local<F: Future<Output = ()>>(make: impl Fn() -> F) {
    current_thread().block_on(make());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(make());
    futures::executor::block_on(make());
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Block until the test opens `path` for writing: a task held at a gate.
fn gate(path: String) -> u64 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// Open a gate held by [`gate`], passing `value` through.
fn open(fifo: &Fifo, value: u64) {
    common::signal(&fifo.path, &value.to_string());
}

#[test]
fn results_and_every_error_through_await_in_both_modes() {
    let _serial = together();
    tandem::init();
    on_every_executor(|| async {
        for mode in MODES {
            let pool = pool(mode, 2);
            assert_eq!(pool.submit(21u64, |x| x * 2).await.unwrap(), 42, "{mode:?}");
            let handles: Vec<_> = (0..50u64).map(|i| pool.submit(i, |x| x + 1)).collect();
            let got = futures::future::join_all(handles).await;
            assert_eq!(got.into_iter().map(Result::unwrap).sum::<u64>(), (1..=50).sum::<u64>());
            let panicked = pool.submit((), |()| -> u8 { panic!("bad input") }).await;
            assert!(matches!(panicked, Err(Error::Panicked { .. })), "{mode:?}: {panicked:?}");
            // Its own pool, dropped at once: a thread pool whose time limit
            // abandoned a thread once hung in drop (fixed; see
            // pool.rs::a_thread_pool_with_a_time_limit_shuts_down_after_a_time_out_and_a_cancel).
            let timed = Pool::builder()
                .mode(mode)
                .workers(2)
                .task_timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            let slow = timed
                .submit(2u64, |s| {
                    // A pool thread cannot be stopped: it sleeps this out.
                    std::thread::sleep(Duration::from_secs(s));
                    s
                })
                .await;
            assert!(matches!(slow, Err(Error::TimedOut)), "{mode:?}: {slow:?}");
            drop(timed);
            let cancelled = pool.submit((), common::sleep_forever);
            assert!(cancelled.cancel());
            assert!(matches!(cancelled.await, Err(Error::Cancelled)));
            if mode == Mode::Process {
                let died = pool.submit((), |()| -> u8 { std::process::abort() }).await;
                assert!(matches!(died, Err(Error::WorkerDied { signal: Some(6), .. })), "{died:?}");
                // The pool goes on after a death.
                assert_eq!(pool.submit(2u64, |x| x * 3).await.unwrap(), 6);
            }
        }
    });
}

#[test]
fn ten_thousand_awaits_cost_no_threads() {
    let _serial = alone();
    tandem::init();
    current_thread().block_on(async {
        let pool = pool(Mode::Process, 2);
        assert_eq!(pool.submit(1u8, |x| x).await.unwrap(), 1);
        let before = common::threads();
        // Both workers held at gates, so all 10,000 wait while counted.
        let gates = [Fifo::new(), Fifo::new()];
        let held: Vec<_> = gates.iter().map(|g| pool.submit(g.path.clone(), gate)).collect();
        let handles: Vec<_> = (0..10_000u64).map(|i| pool.submit(i, |x| x * 2)).collect();
        let mut all = Box::pin(futures::future::join_all(handles));
        let mut held = Box::pin(futures::future::join_all(held));
        std::future::poll_fn(|cx| {
            assert!(all.as_mut().poll(cx).is_pending());
            assert!(held.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        let during = common::threads();
        assert_eq!(during, before, "awaiting 10,000 handles started threads");
        open(&gates[0], 5);
        open(&gates[1], 6);
        let opened: u64 = held.await.into_iter().map(Result::unwrap).sum();
        assert_eq!(opened, 11);
        let sum: u64 = all.await.into_iter().map(Result::unwrap).sum();
        assert_eq!(sum, (0..10_000u64).map(|x| x * 2).sum::<u64>());
    });
}

/// Tell the test this worker's pid, then sleep until killed.
fn announce_then_sleep(path: String) -> u8 {
    common::signal(&path, &std::process::id().to_string());
    common::sleep_forever(())
}

#[test]
fn a_dropped_cancel_on_drop_future_kills_its_worker() {
    let _serial = together();
    tandem::init();
    let pool = pool(Mode::Process, 1);
    let fifo = Fifo::new();
    let handle = pool.submit(fifo.path.clone(), announce_then_sleep).cancel_on_drop();
    let pid: u32 = fifo.wait().parse().unwrap();
    let out =
        current_thread().block_on(async { tokio::time::timeout(Duration::from_millis(20), handle).await });
    assert!(out.is_err(), "the sleeping task cannot have answered");
    assert!(common::wait_gone(pid, Duration::from_secs(10)), "worker {pid} outlived its cancelled task");
    // The pool replaced it.
    assert_eq!(futures::executor::block_on(pool.submit(3u8, |x| x + 1)).unwrap(), 4);
}

/// Wait at the gate, then say so on the second FIFO.
fn gate_then_tell((gate_path, done): (String, String)) -> u8 {
    let _ = std::fs::read_to_string(gate_path);
    common::signal(&done, "finished");
    0
}

#[test]
fn a_plain_dropped_future_lets_its_task_finish() {
    let _serial = together();
    tandem::init();
    for mode in MODES {
        let pool = pool(mode, 1);
        let (gate, done) = (Fifo::new(), Fifo::new());
        let handle = pool.submit((gate.path.clone(), done.path.clone()), gate_then_tell);
        let out =
            current_thread().block_on(async { tokio::time::timeout(Duration::from_millis(5), handle).await });
        assert!(out.is_err(), "the gated task cannot have answered");
        open(&gate, 0);
        assert_eq!(done.wait(), "finished", "{mode:?}");
    }
}

#[test]
fn a_handle_polled_from_two_tasks_wakes_the_latest() {
    let _serial = together();
    tandem::init();
    // Poll once on one executor, then finish on another: the second waker
    // replaces the first.
    let pool = pool(Mode::Process, 1);
    let g = Fifo::new();
    let mut handle = pool.submit(g.path.clone(), gate);
    let first = futures::executor::block_on(std::future::poll_fn(|cx| {
        Poll::Ready(Pin::new(&mut handle).poll(cx).is_pending())
    }));
    assert!(first);
    let rt = current_thread();
    let opener = std::thread::spawn(move || open(&g, 9));
    assert_eq!(rt.block_on(handle).unwrap(), 9);
    opener.join().unwrap();
}

#[test]
fn units_through_await_on_every_executor() {
    let _serial = together();
    tandem::init();
    on_every_executor(|| async {
        assert_eq!(tandem::process::spawn(21u64, |x| x * 2).unwrap().await.unwrap(), 42);
        assert_eq!(tandem::thread::spawn(5u64, |x| x + 1).unwrap().await.unwrap(), 6);
        let panicked = tandem::process::spawn((), |()| -> u8 { panic!("bad input") }).unwrap().await;
        assert!(matches!(panicked, Err(Error::Panicked { .. })), "{panicked:?}");
        let panicked = tandem::thread::spawn((), |()| -> u8 { panic!("bad input") }).unwrap().await;
        assert!(matches!(panicked, Err(Error::Panicked { .. })), "{panicked:?}");
        let died = tandem::process::spawn((), |()| -> u8 { std::process::abort() }).unwrap().await;
        assert!(matches!(died, Err(Error::WorkerDied { signal: Some(6), .. })), "{died:?}");
        let killed = tandem::process::spawn((), common::sleep_forever).unwrap();
        killed.kill().unwrap();
        assert!(matches!(killed.await, Err(Error::WorkerDied { signal: Some(9), .. })));
    });
}

#[test]
fn awaited_process_units_share_one_watcher_thread() {
    let _serial = alone();
    tandem::init();
    current_thread().block_on(async {
        // Start the watcher once, then count.
        tandem::process::spawn(0u8, |x| x).unwrap().await.unwrap();
        let before = common::threads();
        let gates: Vec<Fifo> = (0..20).map(|_| Fifo::new()).collect();
        let units: Vec<_> =
            gates.iter().map(|g| tandem::process::spawn(g.path.clone(), gate).unwrap()).collect();
        let mut all = Box::pin(futures::future::join_all(units));
        std::future::poll_fn(|cx| {
            assert!(all.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        assert_eq!(common::threads(), before, "awaiting 20 process units started threads");
        for (i, g) in gates.iter().enumerate() {
            open(g, i as u64);
        }
        let sum: u64 = all.await.into_iter().map(Result::unwrap).sum();
        assert_eq!(sum, (0..20).sum::<u64>());
    });
}

#[test]
fn a_dropped_kill_on_drop_unit_is_killed_and_a_plain_one_finishes() {
    let _serial = together();
    tandem::init();
    let fifo = Fifo::new();
    let unit = tandem::process::spawn(fifo.path.clone(), announce_then_sleep).unwrap().kill_on_drop();
    let pid: u32 = fifo.wait().parse().unwrap();
    let out =
        current_thread().block_on(async { tokio::time::timeout(Duration::from_millis(20), unit).await });
    assert!(out.is_err());
    assert!(common::wait_gone(pid, Duration::from_secs(10)), "unit {pid} outlived its dropped handle");

    let (gate, done) = (Fifo::new(), Fifo::new());
    let unit = tandem::process::spawn((gate.path.clone(), done.path.clone()), gate_then_tell).unwrap();
    let out = current_thread().block_on(async { tokio::time::timeout(Duration::from_millis(5), unit).await });
    assert!(out.is_err());
    open(&gate, 0);
    assert_eq!(done.wait(), "finished");
}

fn odd_panics(x: u64) -> u64 {
    assert!(x % 97 != 13, "item {x} refused");
    x * x
}

fn describe(r: Result<u64, Error>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(e) => format!("{}", matches!(e, Error::Panicked { .. })),
    }
}

#[test]
fn streams_equal_the_iterators_in_both_modes() {
    let _serial = together();
    tandem::init();
    on_every_executor(|| async {
        use futures::StreamExt;
        for mode in MODES {
            let pool = pool(mode, 2);
            let want: Vec<String> = pool.map(0..3000u64, odd_panics).map(describe).collect();
            let got: Vec<String> =
                pool.map(0..3000u64, odd_panics).into_stream().map(describe).collect().await;
            assert_eq!(got, want, "{mode:?}");
            let mut want: Vec<(usize, String)> =
                pool.map_unordered(0..3000u64, odd_panics).map(|(i, r)| (i, describe(r))).collect();
            let mut got: Vec<(usize, String)> = pool
                .map_unordered(0..3000u64, odd_panics)
                .into_stream()
                .map(|(i, r)| (i, describe(r)))
                .collect()
                .await;
            want.sort();
            got.sort();
            assert_eq!(got, want, "{mode:?}");
            // Lazy: taking three consumes a bounded prefix of the input.
            let taken = std::sync::atomic::AtomicUsize::new(0);
            let input = (0..u64::MAX).inspect(|_| {
                taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            let first: Vec<u64> = pool
                .map(input, |x| x + 1)
                .batch_size(4)
                .into_stream()
                .take(3)
                .map(Result::unwrap)
                .collect()
                .await;
            assert_eq!(first, vec![1, 2, 3]);
            assert!(
                taken.load(std::sync::atomic::Ordering::SeqCst) <= 4 * 4 + 1,
                "the stream read ahead unbounded"
            );
        }
    });
}

/// Wait at the gate, send what it passed on, then die without a word more.
fn send_then_abort((gate_path, tx): (String, tandem::ipc::Sender<u64>)) -> u8 {
    tx.send(gate(gate_path)).unwrap();
    std::process::abort()
}

#[test]
fn recv_async_from_process_units_and_a_sender_that_dies() {
    let _serial = together();
    tandem::init();
    on_every_executor_local(|| async {
        let (tx, rx) = tandem::ipc::channel::<u64>().unwrap();
        let g = Fifo::new();
        let unit = tandem::process::spawn((g.path.clone(), tx), send_then_abort).unwrap();
        // Our copy of the sender went with the unit: the unit's is the last.
        let mut first = Box::pin(rx.recv_async());
        std::future::poll_fn(|cx| {
            assert!(first.as_mut().poll(cx).is_pending(), "nothing was sent yet");
            Poll::Ready(())
        })
        .await;
        // Open the gate from a thread: the FIFO blocks until the unit reads.
        let opener = std::thread::spawn(move || open(&g, 17));
        assert_eq!(first.await.unwrap(), 17);
        // The sender died (SIGABRT): the next receive ends, it does not hang.
        assert!(matches!(rx.recv_async().await, Err(tandem::ipc::RecvError::Disconnected)));
        assert!(matches!(unit.await, Err(Error::WorkerDied { signal: Some(6), .. })));
        opener.join().unwrap();
    });
}

#[test]
fn a_dropped_recv_async_leaves_the_channel_usable() {
    let _serial = together();
    let (tx, rx) = tandem::ipc::channel::<u8>().unwrap();
    let out = current_thread()
        .block_on(async { tokio::time::timeout(Duration::from_millis(5), rx.recv_async()).await });
    assert!(out.is_err());
    tx.send(3).unwrap();
    assert_eq!(futures::executor::block_on(rx.recv_async()).unwrap(), 3);
}

/// Wait at the gate, put what it passed on, then die.
fn put_then_abort((gate_path, q): (String, tandem::ipc::Queue<u64>)) -> u8 {
    q.put(gate(gate_path)).unwrap();
    std::process::abort()
}

#[test]
fn get_async_from_process_units_including_one_that_dies() {
    let _serial = together();
    tandem::init();
    on_every_executor_local(|| async {
        let q = tandem::ipc::Queue::<u64>::bounded(4).unwrap();
        let g = Fifo::new();
        let unit = tandem::process::spawn((g.path.clone(), q.clone()), put_then_abort).unwrap();
        let mut first = Box::pin(q.get_async());
        std::future::poll_fn(|cx| {
            assert!(first.as_mut().poll(cx).is_pending(), "nothing was put yet");
            Poll::Ready(())
        })
        .await;
        let opener = std::thread::spawn(move || open(&g, 23));
        assert_eq!(first.await.unwrap(), 23);
        // The putter died after its put: the queue is intact and usable.
        assert!(matches!(unit.await, Err(Error::WorkerDied { signal: Some(6), .. })));
        q.put(5).unwrap();
        assert_eq!(q.get_async().await.unwrap(), 5);
        // Many getters of one queue wait at once; each gets one item.
        let getters: Vec<_> = (0..50).map(|_| q.get_async()).collect();
        let mut all = Box::pin(futures::future::join_all(getters));
        std::future::poll_fn(|cx| {
            assert!(all.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        let feeder =
            tandem::process::spawn(q.clone(), |q| (0..50u64).for_each(|i| q.put(i).unwrap())).unwrap();
        let mut got: Vec<u64> = all.await.into_iter().map(Result::unwrap).collect();
        got.sort();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        feeder.await.unwrap();
        opener.join().unwrap();
    });
}

/// Write the first 22 bytes of a 112-byte answer to the parent, say so,
/// then stall: the watcher holds half a frame from this unit.
fn half_an_answer(path: String) -> u8 {
    let mut frame = vec![0x7a, 0xd3, 3, 0];
    frame.extend_from_slice(&100u64.to_le_bytes());
    frame.extend_from_slice(&[0u8; 10]);
    tandem::chaos::write_to_parent(&frame).unwrap();
    common::signal(&path, "written");
    common::sleep_forever(())
}

/// The watcher every awaited unit shares reads answers as they come: a
/// unit stalled halfway through its answer holds no one else up (it used
/// to read the rest blocking, so every other awaited unit waited on it).
#[test]
fn a_half_written_answer_holds_up_no_other_awaited_unit() {
    let _serial = together();
    tandem::init();
    current_thread().block_on(async {
        let fifo = Fifo::new();
        let mut stalled =
            Box::pin(tandem::process::spawn(fifo.path.clone(), half_an_answer).unwrap().kill_on_drop());
        std::future::poll_fn(|cx| {
            assert!(stalled.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        assert_eq!(fifo.wait(), "written");
        // A liveness bound, not a timing: the unit answers in milliseconds.
        let quick =
            tokio::time::timeout(Duration::from_secs(30), tandem::process::spawn(21u64, |x| x * 2).unwrap());
        assert_eq!(quick.await.expect("the stalled unit held up the watcher").unwrap(), 42);
        drop(stalled);
    });
}
