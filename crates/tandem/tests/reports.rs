//! Issue 16: pool-wide counters (`PoolStats`), a map's `progress()`, and
//! per-task reports. Real crashes (SIGSEGV), real concurrent tasks.

mod common;

use std::path::{Path, PathBuf};

use common::{Fifo, METHODS};
use tandem::{Error, MemoryLimitBy, Mode, Pool, PoolStats, Progress, StartMethod};

/// With batches of 10: first, last and middle of a batch, two side by side.
const CRASHERS: [u64; 6] = [0, 9, 14, 37, 38, 99];

fn crash_at_crashers(x: u64) -> u64 {
    if CRASHERS.contains(&x) {
        tandem::chaos::segfault();
    }
    x * 10
}

/// What must hold between a map's progress and its pool's counters when the
/// map is the pool's only work and its consumer is the only thread that
/// takes outcomes (so nothing moves between the two reads).
fn check_consistent(p: Progress, s: &PoolStats, yielded_ok: u64, yielded_err: u64, what: &str) {
    assert_eq!(s.submitted, p.done + p.failed + p.in_flight, "{what}: {p:?} {s:?}");
    assert_eq!((s.completed, s.failed), (p.done, p.failed), "{what}: {p:?} {s:?}");
    assert_eq!((s.queued + s.running) as u64, p.in_flight, "{what}: {p:?} {s:?}");
    assert!(
        p.done >= yielded_ok && p.failed >= yielded_err,
        "{what}: {p:?} yielded {yielded_ok}/{yielded_err}"
    );
}

#[test]
fn progress_and_counters_agree_at_every_point_of_a_map_with_crashing_items() {
    for method in METHODS {
        for retries in [0, 1] {
            let what = format!("{method:?}, retries {retries}");
            let pool = Pool::builder()
                .mode(Mode::Process)
                .workers(2)
                .start_method(method)
                .retries(retries)
                .build()
                .unwrap();
            let mut m = pool.map(0..100u64, crash_at_crashers).batch_size(10);
            assert_eq!(m.progress(), Progress::default());
            let (mut ok, mut err, mut last) = (0, 0, Progress::default());
            while let Some(r) = m.next() {
                match r {
                    Ok(_) => ok += 1,
                    Err(Error::WorkerDied { .. }) => err += 1,
                    Err(e) => panic!("{what}: {e:?}"),
                }
                let (p, s) = (m.progress(), pool.stats());
                check_consistent(p, &s, ok, err, &what);
                assert!(
                    p.done >= last.done && p.failed >= last.failed,
                    "{what}: went back: {last:?} -> {p:?}"
                );
                // Each crasher is retried `retries` times before it fails
                // (the retry is counted when its batch is taken, the failure
                // when the re-run is).
                assert!(s.retried >= p.failed * u64::from(retries), "{what}: {p:?} {s:?}");
                last = p;
            }
            let (p, s) = (m.progress(), pool.stats());
            check_consistent(p, &s, ok, err, &what);
            assert_eq!((p.done, p.failed, p.in_flight), (94, 6, 0), "{what}");
            assert_eq!(
                (s.submitted, s.completed, s.failed, s.queued, s.running),
                (100, 94, 6, 0, 0),
                "{what}"
            );
            assert_eq!(s.retried, 6 * u64::from(retries), "{what}");
        }
    }
}

#[test]
fn a_dropped_map_counts_what_it_had_in_flight_as_failed() {
    for mode in [Mode::Thread, Mode::Process] {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        let mut m = pool.map(0..1000u64, |x| x).batch_size(10);
        m.next().unwrap().unwrap();
        let p = m.progress();
        assert!(p.in_flight > 0, "{mode:?}: {p:?}");
        drop(m);
        let s = pool.stats();
        assert_eq!(s.submitted, p.done + p.failed + p.in_flight, "{mode:?}: {s:?}");
        assert_eq!(
            (s.completed, s.failed, s.running, s.queued),
            (p.done, p.failed + p.in_flight, 0, 0),
            "{mode:?}"
        );
    }
}

#[test]
fn submitted_tasks_count_retries_failures_queued_and_running() {
    for method in METHODS {
        let pool =
            Pool::builder().mode(Mode::Process).workers(1).start_method(method).retries(2).build().unwrap();
        // A real segfault on every try: two retries, then it fails.
        let crash = pool.submit(0u64, crash_at_crashers);
        assert!(matches!(crash.join(), Err(Error::WorkerDied { signal: Some(11), .. })));
        assert_eq!(pool.submit(2u64, crash_at_crashers).join().unwrap(), 20);
        let s = pool.stats();
        assert_eq!((s.submitted, s.completed, s.failed, s.retried), (2, 1, 1, 2), "{method:?}: {s:?}");

        // One task running (it says so through a FIFO), one waiting behind it.
        let started = Fifo::new();
        let path = started.path.clone();
        let running = pool.submit(path, |path: String| -> u8 {
            common::signal(&path, "started");
            common::sleep_forever(())
        });
        assert_eq!(started.wait(), "started");
        let waiting = pool.submit(1u8, |x| x);
        let s = pool.stats();
        assert_eq!((s.submitted, s.queued, s.running), (4, 1, 1), "{method:?}: {s:?}");
        assert!(waiting.cancel() && running.cancel());
        let s = pool.stats();
        assert_eq!(
            (s.submitted, s.completed, s.failed, s.queued, s.running),
            (4, 1, 3, 0, 0),
            "{method:?}: {s:?}"
        );
    }
}

#[test]
fn thread_mode_counts_panics_as_failures() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let handles: Vec<_> =
        (0..20u32).map(|i| pool.submit(i, |i| if i % 4 == 0 { panic!("{i}") } else { i })).collect();
    let failed = handles.into_iter().map(|h| h.join()).filter(Result::is_err).count();
    assert_eq!(failed, 5);
    let s = pool.stats();
    assert_eq!((s.submitted, s.completed, s.failed, s.retried, s.running), (20, 15, 5, 0, 0), "{s:?}");
}

// ---- Per-task reports (TaskHandle::join_report) ----

/// This thread's CPU time.
fn thread_cpu() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Burn `ms` milliseconds of this thread's CPU; return the pid.
fn burn(ms: u64) -> u32 {
    let until = thread_cpu() + std::time::Duration::from_millis(ms);
    let mut x = 1u64;
    while thread_cpu() < until {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    std::process::id()
}

/// Touch `mib` MiB (every page written), then free it; return the pid.
fn touch(mib: usize) -> u32 {
    let mut v = vec![0u8; mib << 20];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&v);
    std::process::id()
}

#[test]
fn reports_say_who_ran_a_task_what_it_burned_and_what_it_touched() {
    for method in METHODS {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .start_method(method)
            .reports(true)
            .build()
            .unwrap();
        let r = pool.submit(300u64, burn).join_report();
        let pid = r.result.unwrap();
        assert_eq!(r.worker, Some(tandem::UnitId::Process(pid)), "{method:?}");
        assert_eq!(r.attempts, 1);
        let cpu = r.cpu.unwrap();
        assert!(cpu >= std::time::Duration::from_millis(300), "{method:?}: cpu {cpu:?}");
        assert!(r.ran >= cpu, "{method:?}: ran {:?} < cpu {cpu:?}", r.ran);

        let big = pool.submit(100usize, touch).join_report();
        big.result.unwrap();
        let peak = big.peak_memory.unwrap();
        assert!(peak >= 100 << 20, "{method:?}: peak {peak} after touching 100 MiB");
        // The same worker next: its peak was reset when the task started,
        // so a small task does not inherit the 100 MiB.
        let small = pool.submit(1usize, touch).join_report();
        assert_eq!(small.result.unwrap(), pid, "{method:?}: the same worker");
        let small_peak = small.peak_memory.unwrap();
        assert!(
            small_peak < 50 << 20,
            "{method:?}: a 1 MiB task's peak {small_peak} (the 100 MiB one's {peak})"
        );
    }
}

#[test]
fn a_task_queued_behind_another_waits_at_least_its_run() {
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let started = Fifo::new();
    let path = started.path.clone();
    let first = pool.submit(path, |path: String| {
        common::signal(&path, "started");
        burn(200)
    });
    assert_eq!(started.wait(), "started");
    let second = pool.submit(1u8, |x| x);
    let (a, b) = (first.join_report(), second.join_report());
    a.result.unwrap();
    assert_eq!(b.result.unwrap(), 1);
    // It was submitted after the first started and burned 200 ms of CPU:
    // it waited those 200 ms, less the moments between the first's signal
    // and its own submit (measured up to 0.5 ms: a bound of 180 ms).
    assert!(b.queued >= std::time::Duration::from_millis(180), "queued {:?}", b.queued);
    assert!(a.ran >= std::time::Duration::from_millis(200), "ran {:?}", a.ran);
    // Without reports(true) nothing is measured.
    assert_eq!((a.cpu, a.peak_memory), (None, None));
}

#[test]
fn attempts_count_every_run_across_retries() {
    for method in METHODS {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .start_method(method)
            .retries(3)
            .reports(true)
            .build()
            .unwrap();
        // Segfaults on its first two runs (counted in a file), then succeeds.
        let dir = std::env::temp_dir().join(format!("tandem-attempts-{}-{method:?}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let path = dir.to_string_lossy().into_owned();
        let r = pool
            .submit(path.clone(), |path: String| {
                use std::io::Write;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap()
                    .write_all(b"x")
                    .unwrap();
                if std::fs::read(&path).unwrap().len() < 3 {
                    tandem::chaos::segfault();
                }
                std::process::id()
            })
            .join_report();
        let pid = r.result.unwrap();
        assert_eq!(r.attempts, 3, "{method:?}");
        assert_eq!(r.worker, Some(tandem::UnitId::Process(pid)), "{method:?}: the last worker");
        let _ = std::fs::remove_file(&dir);
        // One that always crashes: 1 run + 3 retries, then WorkerDied.
        let r = pool.submit(0u64, crash_at_crashers).join_report();
        assert!(matches!(r.result, Err(Error::WorkerDied { signal: Some(11), .. })), "{:?}", r.result);
        assert_eq!(r.attempts, 4, "{method:?}");
        // Cancelled before it ran: no worker, no attempt.
        let started = Fifo::new();
        let path = started.path.clone();
        let busy = pool.submit(path, |path: String| -> u8 {
            common::signal(&path, "started");
            common::sleep_forever(())
        });
        assert_eq!(started.wait(), "started");
        let queued = pool.submit(1u8, |x| x);
        assert!(queued.cancel() && busy.cancel());
        let r = queued.join_report();
        assert!(matches!(r.result, Err(Error::Cancelled)));
        assert_eq!((r.worker, r.attempts, r.ran, r.cpu), (None, 0, std::time::Duration::ZERO, None));
    }
}

#[test]
fn thread_mode_reports_the_thread_and_measures_nothing() {
    let pool = Pool::builder().workers(1).reports(true).build().unwrap();
    let r = pool.submit(20u64, burn).join_report();
    r.result.unwrap();
    assert!(matches!(r.worker, Some(tandem::UnitId::Thread(_))), "{:?}", r.worker);
    assert_eq!((r.attempts, r.cpu, r.peak_memory), (1, None, None));
    assert!(r.ran >= std::time::Duration::from_millis(20));
}

// ---- Captured output (PoolBuilder::capture_output, Error::output_tail) ----

/// Print `marker` lines to stdout and stderr (and through a program the
/// task runs), meeting the test halfway: say it started, wait to be let go.
fn chatty((marker, started, go): (String, String, String)) -> u32 {
    println!("{marker} out 1");
    eprintln!("{marker} err 1");
    common::signal(&started, "started");
    // Blocks until the test, which saw both tasks start, lets this one go.
    std::fs::read_to_string(&go).unwrap();
    println!("{marker} out 2");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo {marker} from sh; echo {marker} sh err >&2"))
        .status()
        .unwrap();
    assert!(status.success());
    eprintln!("{marker} err 2");
    std::process::id()
}

#[test]
fn two_tasks_running_at_once_each_get_only_their_own_output() {
    for method in METHODS {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(2)
            .start_method(method)
            .capture_output(true)
            .build()
            .unwrap();
        let fifos: Vec<(Fifo, Fifo)> = (0..2).map(|_| (Fifo::new(), Fifo::new())).collect();
        let handles: Vec<_> = ["AAA", "BBB"]
            .iter()
            .zip(&fifos)
            .map(|(m, (started, go))| {
                pool.submit((m.to_string(), started.path.clone(), go.path.clone()), chatty)
            })
            .collect();
        // Both are running now, and neither has finished.
        for (started, _) in &fifos {
            assert_eq!(started.wait(), "started");
        }
        for (_, go) in &fifos {
            common::signal(&go.path, "go");
        }
        let reports: Vec<_> = handles.into_iter().map(|h| h.join_report()).collect();
        assert_ne!(reports[0].worker, reports[1].worker, "{method:?}: two workers at once");
        for (r, m) in reports.iter().zip(["AAA", "BBB"]) {
            let out = String::from_utf8(r.stdout.clone().unwrap()).unwrap();
            let err = String::from_utf8(r.stderr.clone().unwrap()).unwrap();
            assert_eq!(out, format!("{m} out 1\n{m} out 2\n{m} from sh\n"), "{method:?}");
            assert_eq!(err, format!("{m} err 1\n{m} sh err\n{m} err 2\n"), "{method:?}");
        }
        // The next task on a worker starts from empty streams.
        let next = pool.submit(5u8, |x| {
            println!("only me");
            x
        });
        let r = next.join_report();
        assert_eq!(r.stdout.unwrap(), b"only me\n", "{method:?}");
        assert_eq!(r.stderr.unwrap(), b"", "{method:?}");
    }
}

fn write_then_segfault(lines: u32) -> u8 {
    for i in 0..lines {
        eprintln!("line {i} of what the task said before it crashed");
    }
    tandem::chaos::segfault()
}

#[test]
fn a_task_that_writes_to_stderr_then_segfaults_has_its_last_lines_in_the_error() {
    for method in METHODS {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .start_method(method)
            .capture_output(true)
            .build()
            .unwrap();
        let err = pool.submit(3u32, write_then_segfault).join().unwrap_err();
        assert!(matches!(err, Error::WorkerDied { signal: Some(11), .. }), "{err:?}");
        let tail = err.output_tail().expect("a tail");
        assert_eq!(
            tail,
            (0..3)
                .map(|i| format!("line {i} of what the task said before it crashed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(err.to_string().contains("line 2 of what the task said before it crashed"), "{err}");

        // A long stderr: the tail is its last whole lines, at most 4 KiB.
        let err = pool.submit(1000u32, write_then_segfault).join().unwrap_err();
        let tail = err.output_tail().unwrap();
        assert!(tail.len() <= 4096 && tail.len() > 3000, "{}", tail.len());
        assert!(
            tail.starts_with("line ") && tail.ends_with("line 999 of what the task said before it crashed"),
            "{tail}"
        );
        // The pool goes on, and a map's output is not any task's.
        assert_eq!(
            pool.map(0..10u8, |x| {
                println!("map item {x}");
                x
            })
            .filter(Result::is_ok)
            .count(),
            10
        );
        let r = pool.submit(1u8, |x| x).join_report();
        assert_eq!((r.stdout.unwrap(), r.stderr.unwrap()), (Vec::new(), Vec::new()));
    }
    // Without capture there is nothing to report.
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let err = pool.submit(3u32, write_then_segfault).join().unwrap_err();
    assert_eq!(err.output_tail(), None);
    assert_eq!(pool.submit(1u8, |x| x).join_report().stdout, None);
}

// ---- worker_memory_limit: resident memory, not address space ----
//
// Each test runs twice: with the mechanism the pool picks (a memory cgroup
// per worker where the process may make one: it must on a machine like the
// dev one and CI, root with cgroup v1's memory controller writable), and
// with sampling forced (`__worker_memory_by_sampling`, hidden, tests only).

const LIMIT: u64 = 256 << 20;

/// How a test pool enforces its limit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Enforced {
    /// What the pool picks here.
    Picked,
    /// Sampling, forced.
    Sampled,
}

const ENFORCED: [Enforced; 2] = [Enforced::Picked, Enforced::Sampled];

fn limited_pool(how: Enforced, method: StartMethod, workers: usize) -> Pool {
    let builder =
        Pool::builder().mode(Mode::Process).workers(workers).start_method(method).worker_memory_limit(LIMIT);
    match how {
        Enforced::Picked => builder,
        Enforced::Sampled => builder.__worker_memory_by_sampling(),
    }
    .build()
    .unwrap()
}

/// The calling process's cgroup paths, from `/proc/self/cgroup`: in the v1
/// memory hierarchy and in the v2 one.
fn cgroups_of_self(_: ()) -> (Option<String>, Option<String>) {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) =
            (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_string());
        }
    }
    (v1, v2)
}

/// Where a hierarchy is mounted (`cgroup2`, or the v1 one with `memory`).
fn mount_of(v2: bool) -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| {
            let after = l.split_once(" - ").unwrap().1;
            if v2 {
                after.starts_with("cgroup2 ")
            } else {
                after.starts_with("cgroup ") && after.contains("memory")
            }
        })
        .expect("the hierarchy is mounted");
    PathBuf::from(line.split(' ').nth(4).unwrap())
}

/// The directory of a worker's memory cgroup, and what enforces its pool's
/// limit (a cgroup named after this process, `tandem-<pid>-<n>`, or else
/// the sampler).
fn worker_cgroup(pool: &Pool) -> (Option<PathBuf>, MemoryLimitBy) {
    let (v1, v2) = pool.submit((), cgroups_of_self).join().unwrap();
    let mine = format!("/tandem-{}-", std::process::id());
    let under = |path: &Option<String>, v2: bool| {
        let path = path.as_ref().filter(|p| p.contains(&mine))?;
        Some(mount_of(v2).join(path.trim_start_matches('/')))
    };
    match (under(&v2, true), under(&v1, false)) {
        (Some(dir), _) => (Some(dir), MemoryLimitBy::CgroupV2),
        (None, Some(dir)) => (Some(dir), MemoryLimitBy::CgroupV1),
        (None, None) => (None, MemoryLimitBy::Sampling),
    }
}

/// Whether a pool here must get a memory cgroup: running as root, with
/// cgroup v1's memory controller at /sys/fs/cgroup/memory and this
/// process's cgroup in it writable (a child can be made).
fn cgroup_v1_must_work() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let Some(path) = cgroups_of_self(()).0 else { return false };
    let home = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
    let probe = home.join(format!("tandem-test-probe-{}", std::process::id()));
    let writable = std::fs::create_dir(&probe).is_ok() && probe.join("memory.limit_in_bytes").exists();
    let _ = std::fs::remove_dir(&probe);
    root && writable
}

/// What enforces `pool`'s limit, checked: sampling when forced; a cgroup
/// where one must work; otherwise whatever the pool could get, and if that
/// is sampling, said on stderr (the cgroup checks then check the sampler).
fn mechanism(pool: &Pool, how: Enforced, what: &str) -> (Option<PathBuf>, MemoryLimitBy) {
    let (dir, by) = worker_cgroup(pool);
    match how {
        Enforced::Sampled => assert_eq!(by, MemoryLimitBy::Sampling, "{what}: sampling was forced"),
        Enforced::Picked if cgroup_v1_must_work() => assert_eq!(
            by,
            MemoryLimitBy::CgroupV1,
            "{what}: root with a writable cgroup v1 memory controller must get a cgroup"
        ),
        Enforced::Picked if by == MemoryLimitBy::Sampling => eprintln!(
            "{what}: NOTE no memory cgroup could be made here (not root, or no writable memory controller): checking the sampling path instead"
        ),
        Enforced::Picked => {}
    }
    (dir, by)
}

/// Reserve 64 GiB of address space (16 untouched 4 GiB vectors: each is
/// one mapping, never touched) and touch one page; the worker's VmSize.
fn reserve_64_gib_touch_one_page(_: ()) -> Result<u64, String> {
    let mut reserved: Vec<Vec<u8>> = Vec::new();
    for _ in 0..16 {
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve_exact(4 << 30).map_err(|e| format!("could not reserve: {e}"))?;
        reserved.push(v);
    }
    reserved[0].push(1);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmSize:")).unwrap();
    let kib: u64 = line[7..].trim().trim_end_matches("kB").trim().parse().unwrap();
    Ok(kib << 10)
}

#[test]
fn a_task_reserving_64_gib_and_touching_one_page_runs_under_a_256_mib_limit() {
    for how in ENFORCED {
        let pool = limited_pool(how, StartMethod::Spawn, 1);
        mechanism(&pool, how, &format!("{how:?}"));
        let vm_size = pool.submit((), reserve_64_gib_touch_one_page).join().unwrap().unwrap();
        assert!(vm_size >= 64 << 30, "{how:?}: VmSize {vm_size}");
    }
    // The address-space cap refuses the same task.
    let capped =
        Pool::builder().mode(Mode::Process).workers(1).worker_address_space_limit(256 << 20).build().unwrap();
    let refused = capped.submit((), reserve_64_gib_touch_one_page).join().unwrap();
    assert!(refused.unwrap_err().contains("could not reserve"));
}

/// Check a death for the limit: SIGKILL, the limit, the mechanism and what
/// was seen (a cgroup: its peak, at most the limit; the sampler: past it).
fn check_killed_for_the_limit(err: &Error, by: MemoryLimitBy, what: &str) -> u64 {
    let Error::WorkerDied { signal, memory_limit, resident_at_kill, memory_limit_by, .. } = err else {
        panic!("{what}: {err:?}")
    };
    assert_eq!((*signal, *memory_limit, *memory_limit_by), (Some(9), Some(LIMIT), Some(by)), "{what}: {err}");
    let message = err.to_string();
    assert!(message.contains("memory limit of 268435456 bytes"), "{what}: {message}");
    assert!(message.contains(&by.to_string()), "{what}: {message}");
    let seen = resident_at_kill.expect("what was seen at the kill");
    if by == MemoryLimitBy::Sampling {
        assert!(seen > LIMIT && seen < 1 << 30, "{what}: {seen}");
        assert!(message.contains("resident memory"), "{what}: {message}");
    } else {
        // The kernel charges each page before it is used: no overshoot.
        assert!(seen <= LIMIT && seen > LIMIT / 2, "{what}: peak {seen}");
        assert!(message.contains("OOM killer"), "{what}: {message}");
    }
    seen
}

#[test]
fn a_task_touching_1_gib_fails_naming_the_limit_and_its_mechanism() {
    for how in ENFORCED {
        for method in METHODS {
            let what = format!("{how:?}, {method:?}");
            let pool = limited_pool(how, method, 1);
            let (_, by) = mechanism(&pool, how, &what);
            let err = pool.submit(1024usize, touch).join().unwrap_err();
            let seen = check_killed_for_the_limit(&err, by, &what);
            // How far past the limit it got (sampling: between two samples).
            eprintln!("{what}: {by:?} saw {} MiB at the kill, limit {} MiB: {err}", seen >> 20, LIMIT >> 20);
            // The pool goes on, below the limit.
            assert_ne!(pool.submit(64usize, touch).join().unwrap(), 0);
            // A map item over the limit fails alone.
            let out: Vec<_> = pool.map([1usize, 1024, 1], touch).collect();
            assert!(out[0].is_ok() && out[2].is_ok(), "{what}: {out:?}");
            check_killed_for_the_limit(out[1].as_ref().unwrap_err(), by, &what);
            // And the next task works.
            assert_eq!(pool.submit(7u8, |x| x).join().unwrap(), 7);
        }
    }
}

/// Run `dd`, which reads 1 GiB from /dev/zero into one buffer (touching
/// every page); how it ended, and this worker's pid.
fn run_a_program_touching_1_gib(_: ()) -> (Option<i32>, Option<i32>, u32) {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new("dd")
        .args(["if=/dev/zero", "of=/dev/null", "bs=1G", "count=1"])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("dd runs");
    (status.code(), status.signal(), std::process::id())
}

#[test]
fn a_program_a_worker_runs_is_under_the_workers_cgroup_limit() {
    for how in ENFORCED {
        let pool = limited_pool(how, StartMethod::Spawn, 1);
        let (_, by) = mechanism(&pool, how, &format!("{how:?}"));
        let (code, signal, worker) = pool.submit((), run_a_program_touching_1_gib).join().unwrap();
        if by == MemoryLimitBy::Sampling {
            // The sampler reads the worker alone (documented): dd runs to the end.
            assert_eq!((code, signal), (Some(0), None), "{how:?}");
        } else {
            // The program was born in the worker's cgroup: the kernel's OOM
            // killer killed it (the biggest process there), not the worker.
            assert_eq!((code, signal), (None, Some(9)), "{how:?}");
            assert_eq!(pool.submit((), |()| std::process::id()).join().unwrap(), worker, "the worker lives");
        }
    }
}

/// Start `sleep` in the background (it outlives this worker); its pid.
fn leave_a_process_behind(_: ()) -> u32 {
    let out = std::process::Command::new("sh")
        .args(["-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh runs");
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn no_memory_cgroup_is_left_behind_when_the_pool_is_dropped() {
    for method in METHODS {
        let what = format!("{method:?}");
        // Recycled every 2 tasks: workers come and go, each with its cgroup.
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(2)
            .start_method(method)
            .worker_memory_limit(LIMIT)
            .max_tasks_per_worker(2)
            .build()
            .unwrap();
        let (first, by) = mechanism(&pool, Enforced::Picked, &what);
        let Some(first) = first else {
            eprintln!("{what}: NOTE no memory cgroup here, so none to leave behind");
            return;
        };
        let pool_dir = first.parent().unwrap().to_path_buf();
        assert!(pool_dir.file_name().unwrap().to_str().unwrap().starts_with("tandem-"), "{pool_dir:?}");
        let mut leaves = vec![first];
        for _ in 0..5 {
            leaves.push(worker_cgroup(&pool).0.expect("every worker has a cgroup"));
        }
        // A worker killed for the limit, and one that leaves a process in its cgroup.
        check_killed_for_the_limit(&pool.submit(1024usize, touch).join().unwrap_err(), by, &what);
        let stray = pool.submit((), leave_a_process_behind).join().unwrap();
        leaves.push(worker_cgroup(&pool).0.unwrap());
        leaves.sort();
        leaves.dedup();
        assert!(leaves.len() >= 3, "{what}: recycled workers get cgroups of their own: {leaves:?}");
        assert!(leaves.iter().all(|l| l.parent() == Some(&pool_dir)), "{what}: {leaves:?}");
        drop(pool);
        assert!(!pool_dir.exists(), "{what}: {pool_dir:?} is left behind");
        // The process that outlived its worker went back to ours.
        let stray_cgroup = std::fs::read_to_string(format!("/proc/{stray}/cgroup")).unwrap_or_default();
        let _ = std::process::Command::new("kill").args(["-9", &stray.to_string()]).status();
        let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let memory_line = |text: &str| text.lines().find(|l| l.contains(":memory:")).map(str::to_string);
        assert_eq!(memory_line(&stray_cgroup), memory_line(&ours), "{what}: the stray sleep");
    }
}
