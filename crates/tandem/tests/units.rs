//! One-off units in both modes: results, panics, every death cause, time-outs,
//! kills, large messages, start methods and what a worker inherits.

mod common;

use std::time::Duration;

use common::{METHODS, sleep_forever};
use serde::{Deserialize, Serialize};
use tandem::{Error, Mode, StartMethod, UnitId};

fn process(method: StartMethod) -> tandem::process::Builder {
    tandem::process::Builder::new().start_method(method)
}

#[test]
fn results_come_back_in_both_modes_and_start_methods() {
    for mode in [Mode::Thread, Mode::Process] {
        let h = tandem::spawn(mode, (6u64, "x".to_string()), |(n, s)| s.repeat(n as usize)).unwrap();
        assert_eq!(h.join().unwrap(), "xxxxxx", "{mode:?}");
    }
    for method in METHODS {
        let h = process(method).spawn(vec![1u64, 2, 3], |v| v.into_iter().sum::<u64>()).unwrap();
        assert!(matches!(h.id(), UnitId::Process(pid) if pid != std::process::id()));
        assert_eq!(h.join().unwrap(), 6, "{method:?}");
    }
}

#[test]
fn a_process_unit_is_another_process_and_a_thread_unit_is_not() {
    let me = std::process::id();
    let t = tandem::thread::spawn((), |()| std::process::id()).unwrap();
    assert_eq!(t.join().unwrap(), me);
    for method in METHODS {
        let h = process(method).spawn((), |()| std::process::id()).unwrap();
        let UnitId::Process(pid) = h.id() else { panic!("a process unit has a pid") };
        assert_eq!(h.join().unwrap(), pid);
        assert_ne!(pid, me);
    }
}

#[test]
fn panics_come_back_with_their_message_in_both_modes() {
    for mode in [Mode::Thread, Mode::Process] {
        let h = tandem::spawn(mode, 7u32, |n| -> u32 { panic!("task {n} gave up") }).unwrap();
        match h.join() {
            Err(Error::Panicked { message }) => assert_eq!(message, "task 7 gave up", "{mode:?}"),
            other => panic!("{mode:?}: expected Panicked, got {other:?}"),
        }
    }
}

fn expect_died(result: Result<u8, Error>, want_signal: Option<i32>, want_code: Option<i32>) -> String {
    match result {
        Err(e @ Error::WorkerDied { .. }) => {
            let Error::WorkerDied { signal, code, .. } = &e else { unreachable!() };
            assert_eq!((*signal, *code), (want_signal, want_code), "{e}");
            e.to_string()
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

#[test]
fn each_death_cause_maps_to_its_error() {
    for method in METHODS {
        let msg = expect_died(
            process(method).spawn((), |()| tandem::chaos::segfault()).unwrap().join(),
            Some(11),
            None,
        );
        assert!(msg.contains("SIGSEGV") && msg.contains("worker pid"), "{msg}");

        let msg =
            expect_died(process(method).spawn((), |()| std::process::abort()).unwrap().join(), Some(6), None);
        assert!(msg.contains("SIGABRT"), "{msg}");

        let msg =
            expect_died(process(method).spawn((), |()| std::process::exit(3)).unwrap().join(), None, Some(3));
        assert!(msg.contains("exited with code 3"), "{msg}");
    }
}

#[test]
fn a_sigkill_from_outside_is_reported_with_the_pid() {
    for method in METHODS {
        let h = process(method).spawn((), sleep_forever).unwrap();
        let UnitId::Process(pid) = h.id() else { unreachable!() };
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let msg = expect_died(h.join(), Some(9), None);
        assert!(msg.contains(&format!("worker pid {pid} was killed by signal 9 (SIGKILL)")), "{msg}");
    }
}

#[test]
fn running_out_of_memory_kills_only_the_unit_and_names_the_limit() {
    for method in METHODS {
        let h = process(method)
            .memory_limit(256 << 20)
            .spawn(1usize << 30, |n| {
                let v = vec![1u8; n];
                v.iter().map(|&b| b as u64).sum::<u64>() as u8
            })
            .unwrap();
        match h.join() {
            Err(e @ Error::WorkerDied { .. }) => {
                let Error::WorkerDied { signal, memory_limit, .. } = &e else { unreachable!() };
                assert_eq!(*signal, Some(6), "allocation failure aborts: {e}");
                assert_eq!(*memory_limit, Some(256 << 20));
                assert!(e.to_string().contains("memory limit of 268435456 bytes"), "{e}");
            }
            other => panic!("{method:?}: expected WorkerDied, got {other:?}"),
        }
    }
    // The parent is untouched and can still start units.
    assert_eq!(tandem::process::spawn(1u8, |x| x + 1).unwrap().join().unwrap(), 2);
}

/// A value that refuses to be serialized.
#[derive(Debug, Deserialize)]
struct Unsendable;

impl Serialize for Unsendable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unsendable refuses"))
    }
}

#[test]
fn an_unserializable_result_is_a_codec_error_in_process_mode_only() {
    for method in METHODS {
        match process(method).spawn((), |()| Unsendable).unwrap().join() {
            Err(Error::Codec(msg)) => {
                assert!(msg.contains("the result") && msg.contains("Serialize implementation"), "{msg}")
            }
            other => panic!("expected Codec, got {other:?}"),
        }
    }
    // Threads move values: nothing to serialize, nothing to fail.
    assert!(tandem::thread::spawn((), |()| Unsendable).unwrap().join().is_ok());
    // An argument that cannot be serialized fails at spawn, in the parent.
    assert!(matches!(tandem::process::spawn(Unsendable, |_| 0u8), Err(Error::Codec(_))));
}

#[test]
fn join_timeout_kills_a_process_and_leaves_no_zombie() {
    for method in METHODS {
        let h = process(method).spawn((), sleep_forever).unwrap();
        let UnitId::Process(pid) = h.id() else { unreachable!() };
        assert!(matches!(h.join_timeout(Duration::from_millis(50)), Err(Error::TimedOut)));
        // Killed and reaped (by us, or by the fork server before it
        // reported the status) before join_timeout returned.
        assert!(!common::exists(pid), "{method:?}: pid {pid} still exists");
    }
    let h = tandem::thread::spawn(0u64, |_| {
        std::thread::sleep(Duration::from_millis(300));
        1u8
    })
    .unwrap();
    assert!(matches!(h.join_timeout(Duration::from_millis(1)), Err(Error::TimedOut)));
}

#[test]
fn join_timeout_returns_the_result_when_it_is_in_time() {
    for mode in [Mode::Thread, Mode::Process] {
        let h = tandem::spawn(mode, 5u8, |x| x * 2).unwrap();
        assert_eq!(h.join_timeout(Duration::from_secs(30)).unwrap(), 10);
    }
}

#[test]
fn kill_stops_a_process_and_is_unsupported_for_a_thread() {
    for method in METHODS {
        let h = process(method).spawn((), sleep_forever).unwrap();
        assert!(!h.is_finished());
        h.kill().unwrap();
        assert!(common::eventually(Duration::from_secs(5), || h.is_finished()));
        expect_died(h.join(), Some(9), None);
    }
    let h = tandem::thread::spawn((), |()| 1u8).unwrap();
    assert!(matches!(h.kill(), Err(Error::Unsupported(_))));
    assert!(common::eventually(Duration::from_secs(5), || h.is_finished()));
    assert_eq!(h.join().unwrap(), 1);
}

#[test]
fn arguments_and_results_of_64_mib_work_in_both_modes() {
    let big: Vec<u64> = (0..(8u64 << 20)).collect(); // 64 MiB
    let expected: u64 = big.iter().sum();
    for mode in [Mode::Thread, Mode::Process] {
        let h = tandem::spawn(mode, big.clone(), |v| (v.iter().sum::<u64>(), v)).unwrap();
        let (sum, back) = h.join().unwrap();
        assert_eq!(sum, expected, "{mode:?}");
        assert_eq!(back.len(), 8 << 20);
        assert_eq!(back[12345], 12345);
    }
}

#[test]
fn a_result_over_the_message_limit_is_refused_without_harm() {
    let h =
        tandem::process::Builder::new().max_message_size(1024).spawn(4096usize, |n| vec![0u8; n]).unwrap();
    match h.join() {
        Err(Error::Codec(msg)) => assert!(msg.contains("over the limit of 1024 bytes"), "{msg}"),
        other => panic!("expected Codec, got {other:?}"),
    }
}

#[test]
fn a_fork_server_worker_inherits_no_threads_and_no_files() {
    // A descriptor without close-on-exec, which exec would pass on, and
    // extra threads, which fork would not copy but whose locks it would.
    let marker = std::env::temp_dir().join(format!("tandem-inherit-{}", std::process::id()));
    let file =
        rustix::fs::open(&marker, rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY, 0o600.into())
            .unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let rx = stop_rx.clone();
            std::thread::spawn(move || {
                let _ = rx.lock().unwrap().recv();
            })
        })
        .collect();
    for method in METHODS {
        let (threads, fds) = process(method)
            .spawn((), |()| {
                let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
                let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
                    .unwrap()
                    .flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                (threads, fds)
            })
            .unwrap()
            .join()
            .unwrap();
        // The task's thread only: nothing of ours (the kernel, not a
        // watchdog thread, ends a worker whose parent died).
        assert_eq!(threads, 1, "{method:?}: {threads} threads");
        let name = marker.to_string_lossy().into_owned();
        assert!(!fds.contains(&name), "{method:?} inherited {name}: {fds:?}");
    }
    drop(stop_tx);
    for t in busy {
        t.join().unwrap();
    }
    drop(file);
    let _ = std::fs::remove_file(marker);
}

#[test]
fn the_marker_environment_alone_does_not_make_a_worker() {
    // Run this very test binary with the marker set but no parent socket:
    // it must behave as itself (list its tests), and say why it ignored it.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--list", "--exact", "results_come_back_in_both_modes_and_start_methods"])
        .env("TANDEM_WORKER", "00112233445566778899aabbccddeeff")
        .stdin(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("results_come_back_in_both_modes_and_start_methods: test"), "{stdout}");
    assert!(stderr.contains("running as an ordinary program"), "{stderr}");
}

#[test]
fn dropping_an_unjoined_handle_leaves_no_zombie() {
    let mut pids = Vec::new();
    for method in METHODS {
        for _ in 0..5 {
            let h = process(method).spawn(3u8, |x| x).unwrap();
            let UnitId::Process(pid) = h.id() else { unreachable!() };
            pids.push(pid);
            drop(h);
        }
    }
    for pid in pids {
        // Exited (pidfd readable) and then reaped by the watcher thread.
        assert!(common::wait_gone(pid, Duration::from_secs(10)));
        assert!(
            common::eventually(Duration::from_secs(10), || !common::exists(pid)),
            "pid {pid} left a zombie"
        );
    }
}

#[test]
fn a_joined_worker_is_reaped_soon_after() {
    // A join returns once the worker has answered; its exit is collected
    // in the background (the reaper, or the fork-server template), never
    // left as a zombie.
    for method in METHODS {
        let h = process(method).spawn(3u8, |x| x + 1).unwrap();
        let UnitId::Process(pid) = h.id() else { unreachable!() };
        assert_eq!(h.join().unwrap(), 4);
        assert!(
            common::eventually(Duration::from_secs(10), || !common::exists(pid)),
            "{method:?}: pid {pid} was not reaped after join"
        );
    }
}

/// Answer the parent with a well-formed result (7) for task 0, as the
/// worker loop would, and then keep running instead of exiting.
fn answer_then_linger(_: ()) -> u8 {
    // Task id, "value", "inline" (not in a memfd), postcard(7u8).
    let payload = [&0u64.to_le_bytes()[..], &[0u8, 0u8, 7u8]].concat();
    let mut frame = vec![0x7a, 0xd3, 3, 0];
    frame.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    frame.extend_from_slice(&payload);
    tandem::chaos::write_to_parent(&frame).unwrap();
    sleep_forever(())
}

#[test]
fn a_worker_that_answers_then_lingers_is_ended_by_the_join() {
    for method in METHODS {
        let h = process(method).spawn((), answer_then_linger).unwrap();
        let UnitId::Process(pid) = h.id() else { unreachable!() };
        assert_eq!(h.join().unwrap(), 7);
        if !common::wait_gone(pid, Duration::from_secs(10)) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            panic!("{method:?}: worker {pid} kept running after its result was taken");
        }
        let reaped = common::eventually(Duration::from_secs(10), || !common::exists(pid));
        assert!(reaped, "{method:?}: pid {pid} left a zombie");
    }
}

#[test]
fn a_worker_outlives_the_thread_that_started_it() {
    // A worker dies with its parent *process*, not with the thread that
    // started it (which is what PR_SET_PDEATHSIG would do).
    for method in METHODS {
        let (go, wait_for_go) = tandem::ipc::channel::<u8>().unwrap();
        let before = common::threads();
        let h =
            std::thread::spawn(move || process(method).spawn(wait_for_go, |rx| rx.recv().unwrap()).unwrap())
                .join()
                .unwrap();
        // The starting thread is gone for the kernel too, not only joined.
        assert!(common::eventually(Duration::from_secs(10), || common::threads() <= before));
        go.send(5).unwrap();
        assert_eq!(h.join().unwrap(), 5, "{method:?}");
    }
}

fn allowed_cpus(_: ()) -> u32 {
    rustix::thread::sched_getaffinity(None).unwrap().count()
}

#[test]
fn a_spawn_worker_gets_the_cpus_of_the_thread_that_started_it() {
    // A Spawn worker inherits its starter's CPU mask, whatever tandem does
    // to place it while it starts.
    let mine = rustix::thread::sched_getaffinity(None).unwrap().count();
    for _ in 0..3 {
        let got = process(StartMethod::Spawn).spawn((), allowed_cpus).unwrap().join().unwrap();
        assert_eq!(got, mine, "a worker kept a CPU mask other than its starter's");
    }
    // And the starter itself is given its mask back.
    assert_eq!(rustix::thread::sched_getaffinity(None).unwrap().count(), mine);
}

#[test]
fn a_dropped_handle_lets_its_process_finish_the_task() {
    // Detached, as a std thread would be: the task goes on after the drop
    // (here it only starts its work then) and its effects happen.
    for method in METHODS {
        let (go, wait_for_go) = tandem::ipc::channel::<u8>().unwrap();
        let (done, finished) = tandem::ipc::channel::<u8>().unwrap();
        let h = process(method)
            .spawn((wait_for_go, done), |(rx, tx)| {
                let x = rx.recv().unwrap();
                tx.send(x + 1).unwrap();
            })
            .unwrap();
        let UnitId::Process(pid) = h.id() else { unreachable!() };
        drop(h);
        go.send(1).unwrap();
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)).unwrap(), 2, "{method:?}");
        assert!(
            common::eventually(Duration::from_secs(10), || !common::exists(pid)),
            "{method:?}: pid {pid} left behind"
        );
    }
}
