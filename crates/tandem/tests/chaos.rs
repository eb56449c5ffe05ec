//! Chaos soak: a killer thread SIGKILLs random pool workers every few
//! milliseconds while tasks and maps run. Every handle resolves exactly once,
//! every success carries the right value, and with enough retries every task
//! succeeds. `TANDEM_SOAK=1` runs a longer variant.

mod common;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal};
use tandem::{Error, Mode, Pool, StartMethod, UnitId};

/// How much work each phase does: short by default, long under `TANDEM_SOAK=1`.
fn scale() -> u64 {
    if std::env::var_os("TANDEM_SOAK").is_some_and(|v| v == "1") { 20 } else { 1 }
}

fn mix(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5555
}

/// A tiny xorshift generator: the killer's choices need no quality, only spread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILL `pid` only if it is still one of our workers: our child (Spawn)
/// or our child's child (a fork-server worker). The pidfd is opened first,
/// so the signal can only reach the process that was checked.
fn kill_if_ours(pid: u32) -> bool {
    let Some(raw) = Pid::from_raw(pid as i32) else { return false };
    let Ok(pidfd): Result<OwnedFd, _> = rustix::process::pidfd_open(raw, PidfdFlags::empty()) else {
        return false;
    };
    let me = std::process::id();
    let ours = match parent_of(pid) {
        Some(p) if p == me => true,
        Some(p) => parent_of(p) == Some(me),
        None => false,
    };
    ours && rustix::process::pidfd_send_signal(&pidfd, Signal::KILL).is_ok()
}

/// Kill a random worker of `pool` every 1-8 ms until `stop` is set; the
/// number of kills. Sleeping here paces the load; nothing waits on it.
fn killer(pool: Arc<Pool>, stop: Arc<AtomicBool>, kills: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
        while !stop.load(Ordering::SeqCst) {
            let pids: Vec<u32> = pool
                .stats()
                .workers
                .iter()
                .filter_map(|w| match w.id {
                    UnitId::Process(pid) if pid != 0 => Some(pid),
                    _ => None,
                })
                .collect();
            if !pids.is_empty() && kill_if_ours(pids[(rng.next() % pids.len() as u64) as usize]) {
                kills.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_micros(1000 + rng.next() % 7000));
        }
    })
}

fn chaos_pool(method: StartMethod, retries: u32) -> Arc<Pool> {
    Arc::new(
        Pool::builder().mode(Mode::Process).workers(2).start_method(method).retries(retries).build().unwrap(),
    )
}

/// Kills each phase must see before it stops repeating its work.
fn min_kills() -> u64 {
    400 * scale()
}

/// Run `work` on a pool while the killer runs, again and again until the
/// killer has struck `min_kills()` times (a fast machine finishes one round
/// between two kills); the number of kills and of rounds.
fn under_fire(pool: &Arc<Pool>, mut work: impl FnMut()) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let k = killer(pool.clone(), stop.clone(), kills.clone());
    let give_up = Instant::now() + Duration::from_secs(40 * scale());
    let mut rounds = 0;
    while rounds == 0 || (kills.load(Ordering::SeqCst) < min_kills() && Instant::now() < give_up) {
        work();
        rounds += 1;
    }
    stop.store(true, Ordering::SeqCst);
    k.join().unwrap();
    let kills = kills.load(Ordering::SeqCst);
    assert!(kills >= min_kills(), "the killer struck only {kills} times");
    (kills, rounds)
}

fn check_map_all_succeed(method: StartMethod, items: u64) {
    let pool = chaos_pool(method, u32::MAX);
    let start = Instant::now();
    let (kills, rounds) = under_fire(&pool, || {
        let mut seen = 0u64;
        for (i, r) in pool.map(0..items, mix).enumerate() {
            assert_eq!(r.unwrap(), mix(i as u64), "{method:?}: item {i}");
            seen += 1;
        }
        assert_eq!(seen, items, "{method:?}: every item yields exactly one result");
    });
    eprintln!("{method:?} map: {rounds} x {items} items, {kills} workers killed, {:?}", start.elapsed());
    finish(pool);
}

fn check_submits_all_succeed(method: StartMethod, tasks: u64) {
    let pool = chaos_pool(method, u32::MAX);
    let start = Instant::now();
    let (kills, rounds) = under_fire(&pool, || {
        let handles: Vec<_> = (0..tasks).map(|i| (i, pool.submit(i, mix))).collect();
        for (i, h) in handles {
            assert_eq!(h.join().unwrap(), mix(i), "{method:?}: task {i}");
        }
    });
    eprintln!("{method:?} submits: {rounds} x {tasks} tasks, {kills} workers killed, {:?}", start.elapsed());
    finish(pool);
}

/// Big byte results under the killer: each is lent (read by the parent out
/// of its worker) or, once a worker is killed before the parent read it,
/// retried, so every task still resolves once with its own bytes, whether
/// the kill lands while the task runs, while its result waits to be read,
/// or during the read.
fn check_big_results_all_succeed(method: StartMethod, tasks: u64) {
    fn big(i: u64) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from(big_bytes(i))
    }
    fn big_bytes(i: u64) -> Vec<u8> {
        let mut bytes = vec![mix(i) as u8; 512 << 10];
        bytes[..8].copy_from_slice(&i.to_le_bytes());
        bytes[(512 << 10) - 8..].copy_from_slice(&mix(i).to_le_bytes());
        bytes
    }
    let pool = chaos_pool(method, u32::MAX);
    let start = Instant::now();
    let (kills, rounds) = under_fire(&pool, || {
        let handles: Vec<_> = (0..tasks).map(|i| (i, pool.submit(i, big))).collect();
        for (i, h) in handles {
            let back = h.join().unwrap();
            assert!(back.as_slice() == big_bytes(i).as_slice(), "{method:?}: task {i}'s own bytes");
        }
    });
    eprintln!(
        "{method:?} big results: {rounds} x {tasks} tasks, {kills} workers killed, {:?}",
        start.elapsed()
    );
    finish(pool);
}

/// Without retries a task may fail, but only as `WorkerDied` by SIGKILL; a
/// success still has the right value.
fn check_no_retries_fail_cleanly(method: StartMethod, tasks: u64) {
    let pool = chaos_pool(method, 0);
    let (mut ok, mut died) = (0u64, 0u64);
    let (kills, _) = under_fire(&pool, || {
        let handles: Vec<_> = (0..tasks).map(|i| (i, pool.submit(i, mix))).collect();
        for (i, h) in handles {
            match h.join() {
                Ok(v) => {
                    assert_eq!(v, mix(i), "{method:?}: task {i}");
                    ok += 1;
                }
                Err(Error::WorkerDied { signal: Some(9), task: Some(_), .. }) => died += 1,
                Err(e) => panic!("{method:?}: task {i}: unexpected {e:?}"),
            }
        }
    });
    assert_eq!((ok + died) % tasks, 0, "every handle resolves once");
    assert!(ok > 0, "{method:?}: some tasks must get through ({kills} kills)");
    eprintln!("{method:?} no retries: {ok} ok, {died} died, {kills} kills");
    finish(pool);
}

/// The log a map item writes to: `s<i>` as it starts, `e<i>` as it ends,
/// each line one O_APPEND write of exactly 16 bytes. A write that a SIGKILL
/// cuts short stops at a page boundary, and 16-byte lines never straddle
/// one, so no line is ever torn. Opened once per worker process.
fn log_item(path: &str, line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    static LOG: std::sync::Mutex<Option<(String, std::fs::File)>> = std::sync::Mutex::new(None);
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    if log.as_ref().is_none_or(|(p, _)| p != path) {
        let file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        *log = Some((path.to_string(), file));
    }
    let file = &mut log.as_mut().unwrap().1;
    let line = format!("{:<15}\n", line.to_string());
    assert_eq!(line.len(), 16);
    file.write_all(line.as_bytes()).unwrap();
}

fn logged_mix((path, i): (String, u64)) -> u64 {
    log_item(&path, format_args!("s{i}"));
    let v = mix(i);
    log_item(&path, format_args!("e{i}"));
    v
}

/// Without retries, random SIGKILLs during maps fail only items that were
/// running: no item runs twice (an item that finished keeps its result, an
/// item that never started runs once elsewhere), a successful item ran
/// exactly once, a failure names its own item, and a kill fails at most one
/// item (a whole batch failing would fail many). Every index resolves once.
///
/// (A failed item may have logged its end: a SIGKILL that lands during its
/// last write takes effect as the write returns, before its result is
/// published; it may also have logged nothing, if the kill came between
/// the worker marking it started and its first line.)
fn check_map_items_fail_alone(method: StartMethod, items: u64) {
    let pool = chaos_pool(method, 0);
    let dir = std::env::temp_dir().join(format!("tandem-chaos-map-{}-{method:?}", std::process::id()));
    let path = dir.to_string_lossy().into_owned();
    let (mut ok, mut failed) = (0u64, 0u64);
    let (kills, rounds) = under_fire(&pool, || {
        std::fs::write(&path, b"").unwrap();
        let args = (0..items).map(|i| (path.clone(), i));
        let results: Vec<Result<u64, Error>> = pool.map(args, logged_mix).collect();
        assert_eq!(results.len() as u64, items, "{method:?}: every index once");
        let log = std::fs::read_to_string(&path).unwrap();
        let (mut starts, mut ends) = (vec![0u32; items as usize], vec![0u32; items as usize]);
        for line in log.lines() {
            let (kind, i) = line.split_at(1);
            let i: usize = i.trim_end().parse().unwrap_or_else(|_| panic!("log line {line:?}"));
            if kind == "s" { starts[i] += 1 } else { ends[i] += 1 }
        }
        for (i, r) in results.into_iter().enumerate() {
            assert!(starts[i] <= 1, "{method:?}: item {i} ran {} times without retries", starts[i]);
            match r {
                Ok(v) => {
                    assert_eq!(v, mix(i as u64), "{method:?}: item {i}");
                    assert_eq!((starts[i], ends[i]), (1, 1), "{method:?}: item {i} succeeded");
                    ok += 1;
                }
                Err(Error::WorkerDied { signal: Some(9), item: Some(at), .. }) => {
                    assert_eq!(at, i as u64, "{method:?}: the error names another item");
                    failed += 1;
                }
                Err(e) => panic!("{method:?}: item {i}: unexpected {e:?}"),
            }
        }
    });
    let _ = std::fs::remove_file(&path);
    assert!(failed <= kills, "{method:?}: {failed} items failed from {kills} kills");
    assert!(ok > 0, "{method:?}: some items must get through");
    eprintln!("{method:?} map items: {rounds} x {items}, {ok} ok, {failed} failed alone, {kills} kills");
    finish(pool);
}

/// The two tests check for zombies, so they must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Drop the pool; no worker may be left, not even as a zombie.
fn finish(pool: Arc<Pool>) {
    let pool = Arc::into_inner(pool).expect("the killer let go of the pool");
    drop(pool);
    assert!(common::zombies().is_empty(), "zombies: {:?}", common::zombies());
}

#[test]
fn fork_server_pool_survives_random_sigkills() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = scale();
    check_map_all_succeed(StartMethod::ForkServer, 100_000 * n);
    check_submits_all_succeed(StartMethod::ForkServer, 1_500 * n);
    check_big_results_all_succeed(StartMethod::ForkServer, 200 * n);
    check_no_retries_fail_cleanly(StartMethod::ForkServer, 1_000 * n);
    check_map_items_fail_alone(StartMethod::ForkServer, 20_000 * n);
}

#[test]
fn spawn_pool_survives_random_sigkills() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = scale();
    check_map_all_succeed(StartMethod::Spawn, 20_000 * n);
    check_submits_all_succeed(StartMethod::Spawn, 500 * n);
    check_big_results_all_succeed(StartMethod::Spawn, 100 * n);
    check_map_items_fail_alone(StartMethod::Spawn, 5_000 * n);
}

/// A pool of 256 workers under the killer: every task resolves once, with
/// its right value (retries), and the pool keeps all its workers.
#[test]
fn a_pool_of_256_workers_survives_random_sigkills() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
    );
    let pool = Arc::new(
        Pool::builder()
            .mode(Mode::Process)
            .workers(256)
            .start_method(StartMethod::ForkServer)
            .retries(u32::MAX)
            .build()
            .unwrap(),
    );
    let tasks = 2_560 * scale();
    let start = Instant::now();
    let (kills, rounds) = under_fire(&pool, || {
        let handles: Vec<_> = (0..tasks).map(|i| (i, pool.submit(i, mix))).collect();
        for (i, h) in handles {
            assert_eq!(h.join().unwrap(), mix(i), "task {i}");
        }
        let items: Vec<u64> = pool.map(0..tasks, mix).map(Result::unwrap).collect();
        assert_eq!(items, (0..tasks).map(mix).collect::<Vec<_>>());
    });
    eprintln!(
        "256 workers: {rounds} x {tasks} tasks and items, {kills} workers killed, {:?}",
        start.elapsed()
    );
    assert_eq!(pool.stats().workers.len(), 256);
    finish(pool);
}
