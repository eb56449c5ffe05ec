//! One behavioural suite for both pool modes, then process-only tests for
//! each way a worker can die.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::Fifo;
use tandem::{Error, Mode, Pool, UnitId};

const MODES: [Mode; 2] = [Mode::Thread, Mode::Process];

fn pool(mode: Mode, workers: usize) -> Pool {
    Pool::builder().mode(mode).workers(workers).build().unwrap()
}

/// Signal the FIFO, then sleep long: a task that is known to be running.
fn announce_then_sleep(path: String) -> u8 {
    common::signal(&path, &std::process::id().to_string());
    std::thread::sleep(Duration::from_secs(20));
    0
}

fn unit_name(_: u32) -> String {
    format!("{}/{:?}", std::process::id(), std::thread::current().id())
}

#[test]
fn results_in_both_modes_from_many_submitting_threads() {
    for mode in MODES {
        let pool = Arc::new(pool(mode, 2));
        let submitters: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let handles: Vec<_> = (0..50u64).map(|i| pool.submit(t * 1000 + i, |x| x * 2)).collect();
                    handles.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
                })
            })
            .collect();
        let total: u64 = submitters.into_iter().map(|s| s.join().unwrap()).sum();
        let expected: u64 = (0..4u64).flat_map(|t| (0..50u64).map(move |i| 2 * (t * 1000 + i))).sum();
        assert_eq!(total, expected, "{mode:?}");
    }
}

#[test]
fn a_panic_fails_only_its_task_and_the_worker_survives() {
    for mode in MODES {
        let pool = pool(mode, 1);
        match pool.submit(3u32, |x| -> u32 { panic!("bad input {x}") }).join() {
            Err(Error::Panicked { message }) => assert_eq!(message, "bad input 3"),
            other => panic!("{mode:?}: {other:?}"),
        }
        assert_eq!(pool.submit(3u32, |x| x + 1).join().unwrap(), 4);
        let stats = pool.stats();
        assert_eq!(stats.workers[0].restarts, 0, "{mode:?}: a panic must not replace the worker");
        assert_eq!(stats.workers[0].tasks_done, 2);
    }
}

#[test]
fn map_is_ordered_lazy_and_reports_each_panic_in_place() {
    for mode in MODES {
        let pool = pool(mode, 2);
        let out: Vec<u64> = pool.map(0..20_000u64, |x| x * 3).map(Result::unwrap).collect();
        assert_eq!(out.len(), 20_000);
        assert!(out.iter().enumerate().all(|(i, &v)| v == 3 * i as u64), "{mode:?}: out of order");

        // An endless input: only what is taken (plus a bounded read-ahead) runs.
        let first: Vec<u64> = pool.map(0u64.., |x| x + 1).take(10).map(Result::unwrap).collect();
        assert_eq!(first, (1..=10).collect::<Vec<_>>());

        let mixed: Vec<Result<u64, Error>> =
            pool.map(0..10u64, |x| if x == 7 { panic!("seven") } else { x }).collect();
        for (i, r) in mixed.iter().enumerate() {
            match (i, r) {
                (7, Err(Error::Panicked { message })) => assert_eq!(message, "seven"),
                (i, Ok(v)) => assert_eq!(*v, i as u64),
                other => panic!("{mode:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn map_unordered_yields_every_index_once() {
    for mode in MODES {
        let pool = pool(mode, 2);
        let mut seen = HashSet::new();
        for (i, r) in pool.map_unordered(0..5_000u64, |x| x * x) {
            assert_eq!(r.unwrap(), (i as u64) * (i as u64));
            assert!(seen.insert(i), "{mode:?}: index {i} twice");
        }
        assert_eq!(seen.len(), 5_000);
    }
}

/// Read the whole FIFO at `path` (blocks until the test writes it).
fn read_fifo(path: String) -> String {
    std::fs::read_to_string(path).unwrap()
}

// A process pool's submitter sends a small task straight to an idle worker
// and its handle reads the answer itself; these prove nothing is lost when
// the handle does not join: the pool's driver takes the task over.

#[test]
fn a_dropped_handles_task_still_finishes_and_frees_its_worker() {
    for mode in MODES {
        let pool = pool(mode, 1);
        // Rounds: once the worker is up and idle, tasks take the direct path.
        for round in 1..=20 {
            drop(pool.submit(5u64, |x| x + 1));
            // Nothing else is submitted until the task is counted.
            let counted =
                common::eventually(Duration::from_secs(10), || pool.stats().workers[0].tasks_done == round);
            assert!(counted, "{mode:?}: the dropped handle's task was never finished");
        }
        assert_eq!(pool.submit(1u64, |x| x + 1).join().unwrap(), 2);
    }
}

#[test]
fn is_finished_and_wait_timeout_see_results_nobody_joins_yet() {
    for mode in MODES {
        let pool = pool(mode, 1);
        for i in 0..20u64 {
            let first = pool.submit(i, |x| x + 1);
            assert!(common::eventually(Duration::from_secs(10), || first.is_finished()), "{mode:?}");
            let second = pool.submit(i, |x| x + 2);
            assert!(second.wait_timeout(Duration::from_secs(10)), "{mode:?}");
            assert!(second.is_finished());
            assert_eq!((first.join().unwrap(), second.join().unwrap()), (i + 1, i + 2));
        }
    }
}

#[test]
fn a_wait_that_times_out_loses_nothing_and_a_later_join_gets_the_result() {
    for mode in MODES {
        let pool = pool(mode, 1);
        for round in 0..5 {
            let gate = Fifo::new();
            let h = pool.submit(gate.path.clone(), read_fifo);
            // The task is blocked reading the FIFO until the test writes it.
            assert!(!h.wait_timeout(Duration::from_millis(20)), "{mode:?}");
            assert!(!h.is_finished());
            std::fs::write(&gate.path, format!("open {round}")).unwrap();
            assert_eq!(h.join().unwrap(), format!("open {round}"), "{mode:?}");
        }
    }
}

#[test]
fn cancel_a_queued_task_and_a_running_one() {
    for mode in MODES {
        let pool = pool(mode, 1);
        let started = Fifo::new();
        let running = pool.submit(started.path.clone(), announce_then_sleep);
        let queued = pool.submit(1u8, |x| x);
        started.wait();
        assert!(queued.cancel());
        assert!(matches!(queued.join(), Err(Error::Cancelled)));
        assert!(running.cancel(), "{mode:?}");
        assert!(!running.cancel(), "a second cancel does nothing");
        assert!(matches!(running.join(), Err(Error::Cancelled)));
        // The pool keeps its size and goes on.
        assert_eq!(pool.submit(5u8, |x| x + 1).join().unwrap(), 6);
        assert_eq!(pool.stats().workers.len(), 1);
        assert!(pool.stats().workers[0].restarts >= 1, "{mode:?}: the cancelled worker was replaced");
        // A finished task cannot be cancelled.
        let done = pool.submit(1u8, |x| x);
        assert!(done.wait_timeout(Duration::from_secs(30)));
        assert!(!done.cancel());
        assert_eq!(done.join().unwrap(), 1);
    }
}

#[test]
fn a_task_past_its_time_limit_times_out_and_the_pool_goes_on() {
    for mode in MODES {
        let pool =
            Pool::builder().mode(mode).workers(1).task_timeout(Duration::from_millis(200)).build().unwrap();
        let slow = pool.submit(60u64, |s| {
            std::thread::sleep(Duration::from_secs(s));
            s
        });
        assert!(matches!(slow.join(), Err(Error::TimedOut)), "{mode:?}");
        assert_eq!(pool.submit(2u64, |x| x * 2).join().unwrap(), 4);
        assert_eq!(pool.stats().workers[0].restarts, 1, "{mode:?}");
    }
}

#[test]
fn shutdown_finishes_everything_then_refuses_new_work() {
    for mode in MODES {
        let pool = pool(mode, 2);
        let handles: Vec<_> = (0..40u64).map(|i| pool.submit(i, |x| x + 1)).collect();
        pool.shutdown();
        let sum: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(sum, (1..=40).sum::<u64>());
        assert!(matches!(pool.submit(1u8, |x| x).join(), Err(Error::Closed)), "{mode:?}");
        pool.shutdown(); // idempotent
    }
}

#[test]
fn dropping_the_pool_finishes_submitted_work() {
    for mode in MODES {
        let pool = pool(mode, 2);
        let handles: Vec<_> = (0..20u64).map(|i| pool.submit(i, |x| x * 10)).collect();
        drop(pool);
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), i as u64 * 10, "{mode:?}");
        }
    }
}

#[test]
fn terminate_cancels_running_and_queued_tasks() {
    for mode in MODES {
        let pool = pool(mode, 1);
        let started = Fifo::new();
        let running = pool.submit(started.path.clone(), announce_then_sleep);
        let queued: Vec<_> = (0..10u8).map(|i| pool.submit(i, |x| x)).collect();
        started.wait();
        pool.terminate();
        assert!(matches!(running.join(), Err(Error::Cancelled)), "{mode:?}");
        for h in queued {
            assert!(matches!(h.join(), Err(Error::Cancelled)), "{mode:?}");
        }
        assert!(matches!(pool.submit(1u8, |x| x).join(), Err(Error::Closed)));
    }
}

#[test]
fn stats_name_each_worker_and_count_its_tasks() {
    for mode in MODES {
        let pool = pool(mode, 2);
        let n = 30;
        for h in (0..n).map(|i| pool.submit(i, |x: u64| x)).collect::<Vec<_>>() {
            h.join().unwrap();
        }
        let stats = pool.stats();
        assert_eq!(stats.workers.len(), 2);
        assert_eq!(stats.workers.iter().map(|w| w.tasks_done).sum::<u64>(), n);
        for w in &stats.workers {
            match (mode, w.id) {
                (Mode::Thread, UnitId::Thread(_)) => assert_eq!(w.memory_bytes, 0),
                (Mode::Process, UnitId::Process(pid)) if w.tasks_done > 0 => {
                    assert_ne!(pid, std::process::id());
                    assert!(w.memory_bytes > 0);
                }
                (Mode::Process, UnitId::Process(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}

thread_local! {
    static INITIALIZED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[test]
fn the_initializer_runs_in_each_worker_before_its_tasks() {
    for mode in MODES {
        let pool = Pool::builder()
            .mode(mode)
            .workers(2)
            .initializer(|| INITIALIZED.with(|i| i.set(true)))
            .build()
            .unwrap();
        let all: Vec<bool> =
            pool.map(0..50u8, |_| INITIALIZED.with(|i| i.get())).map(Result::unwrap).collect();
        assert!(all.iter().all(|&b| b), "{mode:?}");
    }
}

#[test]
fn workers_are_recycled_after_max_tasks() {
    for mode in MODES {
        let pool = Pool::builder().mode(mode).workers(1).max_tasks_per_worker(2).build().unwrap();
        let units: HashSet<String> = (0..6u32).map(|i| pool.submit(i, unit_name).join().unwrap()).collect();
        assert_eq!(units.len(), 3, "{mode:?}: {units:?}");
        assert_eq!(pool.stats().workers[0].tasks_done, 6);
    }
}

// ---- process mode only: each way a worker can die ----

fn process_pool(workers: usize) -> Pool {
    Pool::builder().mode(Mode::Process).workers(workers).build().unwrap()
}

#[test]
fn a_dead_worker_is_replaced_before_the_next_task_arrives() {
    for method in common::METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        let died = pool.submit((), |()| -> u8 { std::process::abort() }).join();
        let Err(Error::WorkerDied { pid: dead, .. }) = died else { panic!("{method:?}: {died:?}") };
        // Nothing more is submitted: the pool starts the replacement itself.
        let replaced = common::eventually(
            Duration::from_secs(10),
            || matches!(pool.stats().workers[0].id, UnitId::Process(p) if p != dead && p != 0),
        );
        assert!(replaced, "{method:?}: no new worker after {dead} died");
        let UnitId::Process(new) = pool.stats().workers[0].id else { unreachable!() };
        assert_eq!(pool.submit((), |()| std::process::id()).join().unwrap(), new);
    }
}

/// Announce on the first FIFO, then block until the test writes the second.
fn announce_then_wait((started, gate): (String, String)) -> String {
    common::signal(&started, "up");
    std::fs::read_to_string(gate).unwrap()
}

#[test]
fn queued_work_wakes_every_idle_worker_not_one() {
    // 3 workers, 6 gated tasks: the first three run at once (sent straight
    // to the idle workers), the last three queue. Once the first three are
    // let go, the queued three must also run at once: each queued job wakes
    // its own driver, not the same one three times.
    let pool = process_pool(3);
    let all_up = common::eventually(Duration::from_secs(10), || {
        pool.stats().workers.iter().all(|w| matches!(w.id, UnitId::Process(p) if p != 0))
    });
    assert!(all_up);
    // Let the drivers park with idle workers (the lanes open).
    let warm: Vec<_> = (0..3u8).map(|i| pool.submit(i, |x| x)).collect();
    warm.into_iter().for_each(|h| drop(h.join()));
    let starts: Vec<Fifo> = (0..6).map(|_| Fifo::new()).collect();
    let gates: Vec<Fifo> = (0..6).map(|_| Fifo::new()).collect();
    let handles: Vec<_> = (0..6)
        .map(|i| pool.submit((starts[i].path.clone(), gates[i].path.clone()), announce_then_wait))
        .collect();
    let started = |i: usize| {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = starts[i].path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(path).unwrap_or_default());
        });
        rx
    };
    for i in 0..3 {
        assert_eq!(started(i).recv_timeout(Duration::from_secs(10)).as_deref(), Ok("up\n"), "task {i}");
    }
    for (i, gate) in gates.iter().enumerate().take(3) {
        std::fs::write(&gate.path, format!("go {i}")).unwrap();
    }
    // All three queued tasks start while none of them has been let go.
    let waits: Vec<_> = (3..6).map(started).collect();
    for (i, rx) in (3..6).zip(waits) {
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            // Kill the blocked workers, so the failure does not hang.
            pool.terminate();
            panic!("queued task {i} never ran beside the others");
        }
    }
    for (i, gate) in gates.iter().enumerate().skip(3) {
        std::fs::write(&gate.path, format!("go {i}")).unwrap();
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), format!("go {i}"));
    }
}

fn died_with(result: Result<u8, Error>) -> (Option<i32>, Option<i32>, String) {
    match result {
        Err(e @ Error::WorkerDied { .. }) => {
            let Error::WorkerDied { signal, code, .. } = &e else { unreachable!() };
            (*signal, *code, e.to_string())
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

#[test]
fn a_dead_worker_fails_only_its_own_task() {
    for method in common::METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(2).start_method(method).build().unwrap();
        let crash = pool.submit((), |()| -> u8 { tandem::chaos::segfault() });
        let others: Vec<_> = (0..40u8).map(|i| pool.submit(i, |x| x)).collect();
        let (signal, _, message) = died_with(crash.join());
        assert_eq!(signal, Some(11));
        assert!(message.contains("SIGSEGV") && message.contains("while running task"), "{message}");
        for (i, h) in others.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), i as u8, "{method:?}");
        }
        let restarts: u64 = pool.stats().workers.iter().map(|w| w.restarts).sum();
        assert_eq!(restarts, 1);
    }
}

#[test]
fn every_death_cause_maps_to_worker_died_and_the_pool_goes_on() {
    let pool = process_pool(1);
    assert_eq!(died_with(pool.submit((), |()| std::process::abort()).join()).0, Some(6));
    assert_eq!(died_with(pool.submit((), |()| std::process::exit(3)).join()).1, Some(3));
    let self_kill = pool.submit((), |()| -> u8 {
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL).unwrap();
        unreachable!()
    });
    assert_eq!(died_with(self_kill.join()).0, Some(9));

    // SIGKILL from outside, while the task runs.
    let started = Fifo::new();
    let victim = pool.submit(started.path.clone(), announce_then_sleep);
    let pid: i32 = started.wait().parse().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let (signal, _, message) = died_with(victim.join());
    assert_eq!(signal, Some(9));
    assert!(message.contains(&format!("worker pid {pid} was killed by signal 9 (SIGKILL)")), "{message}");

    assert_eq!(pool.submit(1u8, |x| x + 1).join().unwrap(), 2);
    assert_eq!(pool.stats().workers[0].restarts, 4);
}

#[test]
fn a_worker_killed_while_idle_is_replaced_without_failing_a_task() {
    let pool = process_pool(1);
    assert_eq!(pool.submit(1u8, |x| x).join().unwrap(), 1);
    let UnitId::Process(pid) = pool.stats().workers[0].id else { panic!() };
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(common::wait_gone(pid, Duration::from_secs(5)));
    assert_eq!(pool.submit(2u8, |x| x).join().unwrap(), 2);
}

#[test]
fn retries_rerun_a_task_whose_worker_died() {
    let marker = std::env::temp_dir().join(format!("tandem-retry-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let die_once = |path: String| -> u8 {
        if std::fs::metadata(&path).is_err() {
            std::fs::write(&path, b"died once").unwrap();
            std::process::abort();
        }
        7
    };
    let path = marker.to_string_lossy().into_owned();
    let pool = Pool::builder().mode(Mode::Process).workers(1).retries(1).build().unwrap();
    assert_eq!(pool.submit(path.clone(), die_once).join().unwrap(), 7);
    let _ = std::fs::remove_file(&marker);

    let strict = process_pool(1);
    assert_eq!(died_with(strict.submit(path, die_once).join()).0, Some(6));
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn a_task_that_keeps_killing_workers_fails_after_its_retries() {
    let pool = Pool::builder().mode(Mode::Process).workers(1).retries(3).build().unwrap();
    assert_eq!(died_with(pool.submit((), |()| std::process::abort()).join()).0, Some(6));
    assert_eq!(pool.stats().workers[0].restarts, 4, "one first run and three retries");
    assert_eq!(pool.submit(1u8, |x| x).join().unwrap(), 1);
}

#[test]
fn a_task_over_the_memory_limit_fails_naming_it_and_the_worker_is_replaced() {
    let pool = Pool::builder().mode(Mode::Process).workers(1).worker_memory_limit(256 << 20).build().unwrap();
    let hog = pool.submit(1usize << 30, |n| {
        let v = vec![1u8; n];
        v.iter().map(|&b| b as u64).sum::<u64>() as u8
    });
    match hog.join() {
        Err(e @ Error::WorkerDied { .. }) => {
            assert!(e.to_string().contains("memory limit of 268435456 bytes"), "{e}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // Below the limit, work goes on in the replacement.
    assert_eq!(pool.submit(16usize << 20, |n| vec![1u8; n].len()).join().unwrap(), 16 << 20);
}

/// Runs in a middle process: a pool whose two workers are busy, their pids
/// reported through the FIFO, then wait to be killed.
fn middle_with_pool((fifo, method): (String, u8)) -> u8 {
    let method = common::method(method);
    let pool = Pool::builder().mode(Mode::Process).workers(2).start_method(method).build().unwrap();
    let started_a = Fifo::new();
    let started_b = Fifo::new();
    let _a = pool.submit(started_a.path.clone(), announce_then_sleep);
    let _b = pool.submit(started_b.path.clone(), announce_then_sleep);
    let pids = format!("{} {}", started_a.wait(), started_b.wait());
    common::signal(&fifo, &pids);
    common::sleep_forever(())
}

#[test]
fn pool_workers_die_with_their_parent() {
    for method in [0u8, 1] {
        let fifo = Fifo::new();
        let parent = tandem::process::spawn((fifo.path.clone(), method), middle_with_pool).unwrap();
        let pids: Vec<u32> = fifo.wait().split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        parent.kill().unwrap();
        assert!(matches!(parent.join(), Err(Error::WorkerDied { signal: Some(9), .. })));
        for pid in pids {
            assert!(common::wait_gone(pid, Duration::from_secs(1)), "worker {pid} outlived its parent");
        }
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn map_over_ten_million_items_keeps_memory_flat() {
    for mode in MODES {
        let pool = pool(mode, 2);
        let before = peak_rss_kib();
        let mut count = 0u64;
        let mut sum = 0u64;
        for r in pool.map(0..10_000_000u64, |x| x & 0xff) {
            sum = sum.wrapping_add(r.unwrap());
            count += 1;
        }
        assert_eq!(count, 10_000_000);
        assert_eq!(sum, (0..10_000_000u64).map(|x| x & 0xff).sum::<u64>());
        // Unbounded read-ahead would hold ~10 M results (hundreds of MiB).
        let grown = peak_rss_kib().saturating_sub(before);
        assert!(grown < 64 * 1024, "{mode:?}: peak memory grew by {grown} KiB over the map");
    }
}

#[test]
fn a_thread_pool_with_a_time_limit_shuts_down_after_a_time_out_and_a_cancel() {
    // The time-out supervisor exits once the pool is closed and idle; a
    // worker thread that takes (or skips) the last job must tell it, or the
    // pool's drop waits for it forever. Rounds, since it needs the job to
    // be still queued when the supervisor looks.
    let (tx, rx) = std::sync::mpsc::channel();
    let rounds = std::thread::spawn(move || {
        for _ in 0..20 {
            let pool = Pool::builder().workers(1).task_timeout(Duration::from_millis(50)).build().unwrap();
            let slow = pool.submit(2u64, |s| {
                std::thread::sleep(Duration::from_secs(s));
                s
            });
            assert!(matches!(slow.join(), Err(Error::TimedOut)));
            let h = pool.submit(1u64, |s| s);
            h.cancel();
            let _ = h.join();
            drop(pool);
        }
        tx.send(()).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_secs(60)).is_ok(), "a pool's drop hung");
    rounds.join().unwrap();
}

/// A timed pool whose worker is idle (its lane open): an endless task still
/// times out while its handle is being joined. The deadline is the loop's
/// to keep, so a timed task never takes the direct path, where a joiner
/// reading the answer would hold the worker past its deadline.
#[test]
fn a_joined_endless_task_on_a_warm_timed_pool_times_out() {
    tandem::init();
    let pool = Arc::new(
        Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .task_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    );
    assert_eq!(pool.submit(1u8, |x| x + 1).join().unwrap(), 2);
    let (tx, rx) = std::sync::mpsc::channel();
    let joiner = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let endless = pool.submit((), |()| -> u8 {
                loop {
                    std::hint::spin_loop()
                }
            });
            tx.send(endless.join()).unwrap();
        })
    };
    // A liveness bound, not a timing: the time-out comes after 200 ms.
    let outcome = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the time-out never came: the joiner held the worker");
    assert!(matches!(outcome, Err(Error::TimedOut)), "{outcome:?}");
    joiner.join().unwrap();
    assert_eq!(pool.submit(2u8, |x| x + 1).join().unwrap(), 3);
}
