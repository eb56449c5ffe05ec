//! Running out of resources fails cleanly, and a worker's lingering
//! grandchildren die with it.
//!
//! (A task allocating past `worker_memory_limit` is covered in tests/pool.rs,
//! `a_task_over_the_memory_limit_fails_naming_it_and_the_worker_is_replaced`.)

mod common;

use std::os::fd::OwnedFd;
use std::time::Duration;

use common::{Fifo, METHODS};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Resource, Rlimit};
use tandem::{Error, Mode, Pool, UnitId};

/// Descriptors open now (not counting the one used to list them).
fn open_now() -> u64 {
    common::open_fds() as u64 - 1
}

fn describe<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => "succeeded".into(),
        Err(e @ Error::Io(_)) => format!("Io: {e}"),
        Err(e) => format!("not Io: {e:?}"),
    }
}

/// Inside a sacrificial process: lower RLIMIT_NOFILE to what is open now
/// plus `room`, then try to start units and pools; say how each went.
fn starved(room: u64) -> Vec<String> {
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    rustix::process::setrlimit(Resource::Nofile, Rlimit { current: Some(open_now() + room), maximum: hard })
        .unwrap();
    let mut out = Vec::new();
    for method in METHODS {
        let unit = tandem::process::Builder::new().start_method(method).spawn(1u8, |x| x);
        out.push(format!("spawn {method:?}: {}", describe(unit.and_then(|h| h.join()))));
        let pool = Pool::builder().mode(Mode::Process).workers(2).start_method(method).build();
        let outcome = match pool {
            Err(e) => format!("build: {}", describe::<()>(Err(e))),
            Ok(pool) => format!("submit: {}", describe(pool.submit(1u8, |x| x).join())),
        };
        out.push(format!("pool {method:?}: {outcome}"));
    }
    out
}

#[test]
fn running_out_of_descriptors_is_an_io_error_naming_the_limit() {
    // No room at all: the pool cannot even make its eventfds. Room for the
    // pool's two eventfds: the pool builds, and its workers fail to start.
    for room in [0u64, 2] {
        let lines = tandem::process::spawn(room, starved).unwrap().join().unwrap();
        assert_eq!(lines.len(), 4);
        for line in &lines {
            let named = line.contains("Io: ") && line.contains("RLIMIT_NOFILE");
            // With room for two descriptors a one-off may just fit.
            assert!(named || (room > 0 && line.ends_with("succeeded")), "room {room}: {line}");
        }
        if room == 0 {
            assert!(lines.iter().all(|l| l.contains("RLIMIT_NOFILE")), "{lines:?}");
        } else {
            assert!(lines.iter().filter(|l| l.contains("submit: Io")).count() == 2, "{lines:?}");
        }
    }
}

/// Start `sleep 1000` as a grandchild, report its pid, then hang.
// Never waited for on purpose: the grandchild must linger until the kill of
// its worker's process group ends it (and init reaps it).
#[allow(clippy::zombie_processes)]
fn start_grandchild(fifo: String) -> u8 {
    let child = std::process::Command::new("sleep")
        .arg("1000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::signal(&fifo, &child.id().to_string());
    std::thread::sleep(Duration::from_secs(60));
    0
}

/// Read the grandchild's pid from the FIFO and hold it by a pidfd.
fn grandchild(fifo: &Fifo) -> OwnedFd {
    let pid: i32 = fifo.wait().parse().unwrap();
    rustix::process::pidfd_open(Pid::from_raw(pid).unwrap(), PidfdFlags::empty()).unwrap()
}

/// Whether the process behind `pidfd` exits within one second.
fn gone_within_a_second(pidfd: &OwnedFd) -> bool {
    let mut pfd = [PollFd::new(pidfd, PollFlags::IN)];
    matches!(rustix::event::poll(&mut pfd, Some(&Timespec { tv_sec: 1, tv_nsec: 0 })), Ok(1))
}

#[test]
fn a_grandchild_dies_with_a_pool_worker_killed_by_the_task_timeout() {
    for method in METHODS {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .start_method(method)
            .task_timeout(Duration::from_millis(1500))
            .build()
            .unwrap();
        let fifo = Fifo::new();
        let h = pool.submit(fifo.path.clone(), start_grandchild);
        let pidfd = grandchild(&fifo);
        assert!(matches!(h.join(), Err(Error::TimedOut)), "{method:?}");
        assert!(gone_within_a_second(&pidfd), "{method:?}: the grandchild outlived its worker");
        assert_eq!(pool.submit(1u8, |x| x + 1).join().unwrap(), 2);
    }
}

#[test]
fn a_grandchild_dies_with_a_cancelled_task_and_a_terminated_pool() {
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(2).start_method(method).build().unwrap();
        let (f1, f2) = (Fifo::new(), Fifo::new());
        let cancelled = pool.submit(f1.path.clone(), start_grandchild);
        let terminated = pool.submit(f2.path.clone(), start_grandchild);
        let (g1, g2) = (grandchild(&f1), grandchild(&f2));
        assert!(cancelled.cancel());
        assert!(gone_within_a_second(&g1), "{method:?}: cancel left the grandchild");
        pool.terminate();
        assert!(matches!(terminated.join(), Err(Error::Cancelled)));
        assert!(gone_within_a_second(&g2), "{method:?}: terminate left the grandchild");
    }
}

#[test]
fn a_grandchild_dies_with_a_one_off_unit_that_times_out_or_is_killed() {
    for method in METHODS {
        let fifo = Fifo::new();
        let h =
            tandem::process::Builder::new().start_method(method).spawn(fifo.path.clone(), start_grandchild);
        let h = h.unwrap();
        let g = grandchild(&fifo);
        assert!(matches!(h.join_timeout(Duration::from_millis(10)), Err(Error::TimedOut)));
        assert!(gone_within_a_second(&g), "{method:?}: join_timeout left the grandchild");

        let fifo = Fifo::new();
        let h =
            tandem::process::Builder::new().start_method(method).spawn(fifo.path.clone(), start_grandchild);
        let h = h.unwrap();
        let UnitId::Process(_) = h.id() else { unreachable!() };
        let g = grandchild(&fifo);
        h.kill().unwrap();
        assert!(gone_within_a_second(&g), "{method:?}: kill left the grandchild");
        assert!(matches!(h.join(), Err(Error::WorkerDied { signal: Some(9), .. })));
    }
}
