//! The probes: each measures one side of one row and returns its samples.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use tandem::{Error, StartMethod, UnitId};
use tandem_floor::{self as floor, Echo, Peer, ShmEcho, ShmSink, Sink, Transport};

use crate::Plan;
use crate::machine::meminfo_kib;

type Samples = Result<Vec<f64>, String>;

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Warm up, then take `n` samples of `one`.
fn sample<E: std::fmt::Display>(
    warmup: usize,
    n: usize,
    what: &str,
    mut one: impl FnMut() -> Result<f64, E>,
) -> Samples {
    for _ in 0..warmup {
        one().map_err(|e| err(what, e))?;
    }
    (0..n).map(|_| one().map_err(|e| err(what, e))).collect()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Average time of `batch` calls of `op`, in microseconds.
fn batch_us<E>(batch: usize, mut op: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    let start = Instant::now();
    for _ in 0..batch {
        op()?;
    }
    Ok(micros(start.elapsed()) / batch as f64)
}

// ---------------------------------------------------------------- creation

/// Creation is measured with the creating thread on CPU 0: where the
/// scheduler puts a new unit otherwise decides whether its start pays an
/// idle CPU's wake-up (tens of microseconds in a VM), which would swamp
/// the cost of creating it.
fn on_cpu0(plan: &Plan, probe: fn(&Plan) -> Samples) -> Samples {
    let plan = plan.clone();
    placed(Place::SameCpu, move |_| probe(&plan))
}

pub fn create_std_thread(plan: &Plan) -> Samples {
    on_cpu0(plan, |plan| {
        sample(plan.warmup, plan.samples, "thread spawn", || {
            Ok::<_, io::Error>(micros(floor::thread_spawn_join()))
        })
    })
}

pub fn create_fork(plan: &Plan) -> Samples {
    on_cpu0(plan, |plan| sample(plan.warmup, plan.samples, "fork", || floor::fork_wait().map(micros)))
}

pub fn create_posix_spawn(plan: &Plan) -> Samples {
    on_cpu0(plan, |plan| {
        sample(plan.warmup, plan.samples, "posix_spawn /bin/true", || floor::spawn_true_wait().map(micros))
    })
}

fn nothing(_: ()) {}

pub fn create_tandem_thread(plan: &Plan) -> Samples {
    on_cpu0(plan, |plan| {
        sample(plan.warmup, plan.samples, "tandem::thread::spawn", || {
            let start = Instant::now();
            tandem::thread::spawn((), nothing)?.join()?;
            Ok::<_, Error>(micros(start.elapsed()))
        })
    })
}

fn create_tandem_process(plan: &Plan, method: StartMethod) -> Samples {
    let builder = tandem::process::Builder::new().start_method(method);
    sample(plan.warmup, plan.samples, "tandem process unit", || {
        let start = Instant::now();
        builder.spawn((), nothing)?.join()?;
        Ok::<_, Error>(micros(start.elapsed()))
    })
}

/// Start tandem's fork server from this (unpinned) thread. The template
/// process inherits the CPU affinity of the thread that first needs it, and
/// every unit it forks inherits it in turn: started from a probe pinned to
/// CPU 0, it would confine every later process unit to that CPU.
pub fn start_fork_server_unpinned() {
    let _ = tandem::process::Builder::new()
        .start_method(StartMethod::ForkServer)
        .spawn((), nothing)
        .map(|h| h.join());
}

pub fn create_tandem_spawn(plan: &Plan) -> Samples {
    on_cpu0(plan, |plan| create_tandem_process(plan, StartMethod::Spawn))
}

pub fn create_tandem_forkserver(plan: &Plan) -> Samples {
    on_cpu0(plan, |plan| create_tandem_process(plan, StartMethod::ForkServer))
}

// ------------------------------------------------------------------ memory

#[derive(Clone, Copy)]
enum Metric {
    Uss,
    Pss,
    Kernel,
}

/// USS and PSS of a process, KiB, from /proc/PID/smaps_rollup.
fn rollup(pid: &str) -> io::Result<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name| meminfo_kib(&text, name).unwrap_or(0.0);
    Ok((field("Private_Clean") + field("Private_Dirty"), field("Pss")))
}

/// KernelStack, KiB, machine-wide (/proc/meminfo).
fn kernel_stacks_kib() -> io::Result<f64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    Ok(meminfo_kib(&text, "KernelStack").unwrap_or(0.0))
}

/// Page tables of one process, KiB (VmPTE in /proc/PID/status). Read per
/// process rather than from the machine-wide PageTables total, which other
/// programs starting and stopping make too noisy to difference.
fn page_tables_kib(pid: &str) -> io::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(meminfo_kib(&text, "VmPTE").unwrap_or(0.0))
}

/// Per-unit memory of `n` idle units started by `start`, which returns
/// their pids (empty for threads: they show in this process) and a guard
/// that stops them when dropped.
fn per_unit<G>(
    n: usize,
    metric: Metric,
    start: impl FnOnce(usize) -> io::Result<(Vec<u32>, G)>,
) -> io::Result<f64> {
    let (uss0, pss0) = rollup("self")?;
    let stacks0 = kernel_stacks_kib()?;
    let pte0 = page_tables_kib("self")?;
    let (pids, guard) = start(n)?;
    let stacks1 = kernel_stacks_kib()?;
    let (mut uss, mut pss, mut pte) = if pids.is_empty() {
        let (uss1, pss1) = rollup("self")?;
        (uss1 - uss0, pss1 - pss0, page_tables_kib("self")? - pte0)
    } else {
        // Processes: their own memory, not this process's change (which is
        // mostly its pages becoming shared with forked children).
        (0.0, 0.0, 0.0)
    };
    for pid in pids.iter().map(|p| p.to_string()) {
        let (u, p) = rollup(&pid)?;
        uss += u;
        pss += p;
        pte += page_tables_kib(&pid)?;
    }
    drop(guard);
    let total = match metric {
        Metric::Uss => uss,
        Metric::Pss => pss,
        Metric::Kernel => stacks1 - stacks0 + pte,
    };
    Ok(total / n as f64)
}

/// A stack size no earlier thread used: glibc reuses the stacks of exited
/// threads, whose pages are already resident, which would hide what a new
/// thread costs.
fn fresh_stack_size() -> usize {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    (2 << 20) + (CALLS.fetch_add(1, Ordering::Relaxed) + 1) * (64 << 10)
}

/// N std threads parked on a condition variable until the guard drops.
struct IdleThreads {
    gate: Arc<(Mutex<bool>, Condvar)>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl IdleThreads {
    fn start(n: usize) -> io::Result<(Vec<u32>, IdleThreads)> {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let ready = Arc::new(Barrier::new(n + 1));
        let stack = fresh_stack_size();
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            let (gate, ready) = (Arc::clone(&gate), Arc::clone(&ready));
            handles.push(std::thread::Builder::new().stack_size(stack).spawn(move || {
                ready.wait();
                let (lock, cv) = &*gate;
                let mut open = lock.lock().expect("gate");
                while !*open {
                    open = cv.wait(open).expect("gate");
                }
            })?);
        }
        ready.wait();
        Ok((Vec::new(), IdleThreads { gate, handles }))
    }
}

impl Drop for IdleThreads {
    fn drop(&mut self) {
        *self.gate.0.lock().expect("gate") = true;
        self.gate.1.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn mem_thread(plan: &Plan, metric: Metric) -> Samples {
    sample(1, plan.few_samples, "idle threads", || per_unit(plan.idle_units, metric, IdleThreads::start))
}

fn mem_fork(plan: &Plan, metric: Metric) -> Samples {
    sample(1, plan.few_samples, "idle forked children", || {
        per_unit(plan.idle_units, metric, |n| {
            let idle = floor::IdleProcesses::start(n)?;
            Ok((idle.pids(), idle))
        })
    })
}

pub fn mem_thread_uss(plan: &Plan) -> Samples {
    mem_thread(plan, Metric::Uss)
}
pub fn mem_thread_pss(plan: &Plan) -> Samples {
    mem_thread(plan, Metric::Pss)
}
pub fn mem_thread_kernel(plan: &Plan) -> Samples {
    mem_thread(plan, Metric::Kernel)
}
pub fn mem_fork_uss(plan: &Plan) -> Samples {
    mem_fork(plan, Metric::Uss)
}
pub fn mem_fork_pss(plan: &Plan) -> Samples {
    mem_fork(plan, Metric::Pss)
}
pub fn mem_fork_kernel(plan: &Plan) -> Samples {
    mem_fork(plan, Metric::Kernel)
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

struct IdleTandemProcesses(Vec<tandem::JoinHandle<()>>);

impl Drop for IdleTandemProcesses {
    fn drop(&mut self) {
        for h in &self.0 {
            let _ = h.kill();
        }
        for h in self.0.drain(..) {
            let _ = h.join();
        }
    }
}

fn unit_pid(h: &tandem::JoinHandle<()>) -> u32 {
    match h.id() {
        UnitId::Process(pid) => pid,
        UnitId::Thread(_) => 0,
    }
}

/// All threads of `pid` asleep (state S), i.e. the worker waits in its task.
fn all_asleep(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut any = false;
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if state != Some('S') {
            return false;
        }
        any = true;
    }
    any
}

fn start_tandem_processes(n: usize) -> io::Result<(Vec<u32>, IdleTandemProcesses)> {
    let mut idle = IdleTandemProcesses(Vec::with_capacity(n));
    for _ in 0..n {
        idle.0.push(tandem::process::spawn(600_000, sleep_ms).map_err(io::Error::other)?);
    }
    let pids: Vec<u32> = idle.0.iter().map(unit_pid).collect();
    // A unit returns from spawn while its worker may still be starting;
    // measure once every thread of every worker sleeps (in the task) and
    // its private memory has stopped changing.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = f64::NAN;
    while Instant::now() < deadline {
        if pids.iter().all(|p| all_asleep(*p)) {
            let uss: f64 = pids.iter().filter_map(|p| rollup(&p.to_string()).ok()).map(|r| r.0).sum();
            if uss == last {
                break;
            }
            last = uss;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((pids, idle))
}

fn mem_tandem_process(plan: &Plan, metric: Metric) -> Samples {
    sample(1, plan.few_samples, "idle tandem process units", || {
        per_unit(plan.idle_tandem_units, metric, start_tandem_processes)
    })
}

pub fn mem_tandem_process_uss(plan: &Plan) -> Samples {
    mem_tandem_process(plan, Metric::Uss)
}
pub fn mem_tandem_process_pss(plan: &Plan) -> Samples {
    mem_tandem_process(plan, Metric::Pss)
}
pub fn mem_tandem_process_kernel(plan: &Plan) -> Samples {
    mem_tandem_process(plan, Metric::Kernel)
}

// --------------------------------------------------------------- placement

/// Where the two sides of a communication measurement run.
#[derive(Clone, Copy)]
enum Place {
    /// Both on CPU 0: every round trip is two context switches.
    SameCpu,
    /// The peer on CPU 1, the measuring side on CPU 0: two units running in
    /// parallel, as they do in real work (no pinning on a 1-CPU machine).
    AcrossCpus,
}

fn pin(cpu: usize) -> Result<(), String> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(|e| err(&format!("sched_setaffinity CPU {cpu}"), e))
}

/// Run `f` on a new thread placed as asked. `f` starts its peer (a thread
/// it spawns or a child it forks inherits the current CPU), then calls the
/// callback it is given, which moves the measuring thread to CPU 0.
fn placed<T: Send + 'static>(
    place: Place,
    f: impl FnOnce(&dyn Fn() -> Result<(), String>) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::spawn(move || match place {
        Place::SameCpu => {
            pin(0)?;
            f(&|| Ok(()))
        }
        Place::AcrossCpus if cpus >= 2 => {
            pin(1)?;
            f(&|| pin(0))
        }
        Place::AcrossCpus => f(&|| Ok(())),
    })
    .join()
    .map_err(|_| "a placed measurement panicked".to_string())?
}

// ----------------------------------------------------------------- latency

pub fn lat_std_channel(plan: &Plan) -> Samples {
    let plan = plan.clone();
    placed(Place::AcrossCpus, move |peer_started| std_channel(&plan, peer_started))
}

fn std_channel(plan: &Plan, peer_started: &dyn Fn() -> Result<(), String>) -> Samples {
    let (to_tx, to_rx) = std::sync::mpsc::channel::<u8>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<u8>();
    let echo = std::thread::spawn(move || {
        while let Ok(b) = to_rx.recv() {
            if back_tx.send(b).is_err() {
                break;
            }
        }
    });
    peer_started()?;
    let result = sample(plan.warmup, plan.samples, "std channel", || {
        batch_us(plan.batch, || {
            to_tx.send(1).map_err(|_| "echo thread gone")?;
            back_rx.recv().map(|_| ()).map_err(|_| "echo thread gone")
        })
    });
    drop(to_tx);
    let _ = echo.join();
    result
}

fn lat_echo(plan: &Plan, transport: Transport, peer: Peer, place: Place) -> Samples {
    let plan = plan.clone();
    placed(place, move |peer_started| {
        let mut echo = Echo::start(transport, peer).map_err(|e| err("start echo", e))?;
        peer_started()?;
        sample(plan.warmup, plan.samples, "round trip", || batch_us(plan.batch, || echo.round_trip()))
    })
}

pub fn lat_pipe_thread(plan: &Plan) -> Samples {
    lat_echo(plan, Transport::Pipe, Peer::Thread, Place::AcrossCpus)
}
pub fn lat_pipe_process(plan: &Plan) -> Samples {
    lat_echo(plan, Transport::Pipe, Peer::Process, Place::AcrossCpus)
}
pub fn lat_unix_thread(plan: &Plan) -> Samples {
    lat_echo(plan, Transport::UnixSocket, Peer::Thread, Place::AcrossCpus)
}
pub fn lat_unix_process(plan: &Plan) -> Samples {
    lat_echo(plan, Transport::UnixSocket, Peer::Process, Place::AcrossCpus)
}
pub fn lat_tcp_thread(plan: &Plan) -> Samples {
    lat_echo(plan, Transport::TcpLoopback, Peer::Thread, Place::AcrossCpus)
}
pub fn lat_tcp_process(plan: &Plan) -> Samples {
    lat_echo(plan, Transport::TcpLoopback, Peer::Process, Place::AcrossCpus)
}

/// Spins before a futex sleep in the "spin then futex" rows: about 20-40 us
/// of polling, longer than a cross-CPU answer takes when both sides run.
const SPIN: u32 = 20_000;

fn lat_shm(plan: &Plan, peer: Peer, spin: u32, place: Place) -> Samples {
    let plan = plan.clone();
    placed(place, move |peer_started| {
        let mut echo = ShmEcho::start(peer, spin).map_err(|e| err("start shared-memory echo", e))?;
        peer_started()?;
        sample(plan.warmup, plan.samples, "round trip", || {
            batch_us(plan.batch, || {
                echo.round_trip();
                Ok::<_, String>(())
            })
        })
    })
}

pub fn lat_shm_futex_thread(plan: &Plan) -> Samples {
    lat_shm(plan, Peer::Thread, 0, Place::AcrossCpus)
}
pub fn lat_shm_futex_process(plan: &Plan) -> Samples {
    lat_shm(plan, Peer::Process, 0, Place::AcrossCpus)
}
pub fn lat_shm_spin_thread(plan: &Plan) -> Samples {
    lat_shm(plan, Peer::Thread, SPIN, Place::AcrossCpus)
}
pub fn lat_shm_spin_process(plan: &Plan) -> Samples {
    lat_shm(plan, Peer::Process, SPIN, Place::AcrossCpus)
}

fn double(x: u64) -> u64 {
    x * 2
}

pub fn lat_tandem_thread(plan: &Plan) -> Samples {
    sample(plan.warmup, plan.samples, "tandem thread unit", || {
        let start = Instant::now();
        let r = tandem::thread::spawn(21u64, double)?.join()?;
        assert_eq!(r, 42);
        Ok::<_, Error>(micros(start.elapsed()))
    })
}

pub fn lat_tandem_process(plan: &Plan) -> Samples {
    let builder = tandem::process::Builder::new().start_method(StartMethod::ForkServer);
    sample(plan.warmup, plan.samples, "tandem process unit", || {
        let start = Instant::now();
        let r = builder.spawn(21u64, double)?.join()?;
        assert_eq!(r, 42);
        Ok::<_, Error>(micros(start.elapsed()))
    })
}

/// Runs in a thread or process unit: pin to `cpu` (when there is one to
/// spare), then answer every request on `rx` on `tx` until the requests'
/// sender is gone.
/// Returns the CPU it ended on.
fn channel_echo(
    (cpu, rx, tx): (Option<usize>, tandem::ipc::Receiver<u64>, tandem::ipc::Sender<u64>),
) -> usize {
    if let Some(cpu) = cpu {
        let _ = pin(cpu);
    }
    while let Ok(v) = rx.recv() {
        if tx.send(v).is_err() {
            break;
        }
    }
    rustix::thread::sched_getcpu()
}

fn lat_tandem_channel(plan: &Plan, mode: tandem::Mode) -> Samples {
    let plan = plan.clone();
    // Counted here: inside `placed` this thread is pinned to one CPU.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    placed(Place::AcrossCpus, move |peer_started| {
        let (req_tx, req_rx) = tandem::ipc::channel::<u64>().map_err(|e| err("ipc channel", e))?;
        let (resp_tx, resp_rx) = tandem::ipc::channel::<u64>().map_err(|e| err("ipc channel", e))?;
        let peer_cpu = (cpus >= 2).then_some(1);
        let arg = (peer_cpu, req_rx, resp_tx);
        let unit = match mode {
            tandem::Mode::Thread => tandem::thread::spawn(arg, channel_echo),
            tandem::Mode::Process => {
                tandem::process::Builder::new().start_method(StartMethod::ForkServer).spawn(arg, channel_echo)
            }
        }
        .map_err(|e| err("start the echo unit", e))?;
        peer_started()?;
        let result = sample(plan.warmup, plan.samples, "channel round trip", || {
            batch_us(plan.batch, || {
                req_tx.send(7).map_err(|e| e.to_string())?;
                resp_rx.recv().map(|_| ()).map_err(|e| e.to_string())
            })
        });
        drop(req_tx);
        let ended_on = unit.join().map_err(|e| err("echo unit", e))?;
        match peer_cpu {
            Some(cpu) if ended_on != cpu => {
                Err(format!("the echo unit ran on CPU {ended_on}, not on CPU {cpu}"))
            }
            _ => result,
        }
    })
}

pub fn lat_tandem_channel_thread(plan: &Plan) -> Samples {
    lat_tandem_channel(plan, tandem::Mode::Thread)
}
pub fn lat_tandem_channel_process(plan: &Plan) -> Samples {
    lat_tandem_channel(plan, tandem::Mode::Process)
}

fn lat_tandem_pool(plan: &Plan, mode: tandem::Mode) -> Samples {
    let pool = tandem::Pool::builder()
        .mode(mode)
        .workers(2)
        .start_method(StartMethod::ForkServer)
        .build()
        .map_err(|e| err("build the pool", e))?;
    let result = sample(plan.warmup, plan.samples, "pool task", || {
        batch_us(plan.batch / 4 + 1, || {
            let r = pool.submit(21u64, double).join()?;
            assert_eq!(r, 42);
            Ok::<_, Error>(())
        })
    });
    pool.shutdown();
    result
}

pub fn lat_tandem_pool_thread(plan: &Plan) -> Samples {
    lat_tandem_pool(plan, tandem::Mode::Thread)
}
pub fn lat_tandem_pool_process(plan: &Plan) -> Samples {
    lat_tandem_pool(plan, tandem::Mode::Process)
}

// --------------------------------------------------------------- bandwidth

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn bw_kernel(plan: &Plan, transport: Transport, peer: Peer) -> Samples {
    let plan = plan.clone();
    placed(Place::AcrossCpus, move |peer_started| {
        let mut sink = Sink::start(transport, peer, plan.chunk_bytes).map_err(|e| err("start reader", e))?;
        peer_started()?;
        sample(plan.warmup, plan.few_samples.max(plan.samples / 2), "transfer", || {
            let start = Instant::now();
            for _ in 0..plan.chunks_per_sample {
                sink.transfer()?;
            }
            Ok::<_, io::Error>(gbps(sink.chunk_bytes() * plan.chunks_per_sample, start.elapsed()))
        })
    })
}

pub fn bw_pipe_thread(plan: &Plan) -> Samples {
    bw_kernel(plan, Transport::Pipe, Peer::Thread)
}
pub fn bw_pipe_process(plan: &Plan) -> Samples {
    bw_kernel(plan, Transport::Pipe, Peer::Process)
}
pub fn bw_unix_thread(plan: &Plan) -> Samples {
    bw_kernel(plan, Transport::UnixSocket, Peer::Thread)
}
pub fn bw_unix_process(plan: &Plan) -> Samples {
    bw_kernel(plan, Transport::UnixSocket, Peer::Process)
}
pub fn bw_tcp_thread(plan: &Plan) -> Samples {
    bw_kernel(plan, Transport::TcpLoopback, Peer::Thread)
}
pub fn bw_tcp_process(plan: &Plan) -> Samples {
    bw_kernel(plan, Transport::TcpLoopback, Peer::Process)
}

fn bw_shm(plan: &Plan, peer: Peer) -> Samples {
    let plan = plan.clone();
    placed(Place::AcrossCpus, move |peer_started| {
        let mut sink =
            ShmSink::start(peer, plan.chunk_bytes).map_err(|e| err("start shared-memory reader", e))?;
        peer_started()?;
        sample(plan.warmup, plan.few_samples.max(plan.samples / 2), "transfer", || {
            let start = Instant::now();
            for _ in 0..plan.chunks_per_sample {
                sink.transfer();
            }
            Ok::<_, String>(gbps(sink.chunk_bytes() * plan.chunks_per_sample, start.elapsed()))
        })
    })
}

pub fn bw_shm_thread(plan: &Plan) -> Samples {
    bw_shm(plan, Peer::Thread)
}
pub fn bw_shm_process(plan: &Plan) -> Samples {
    bw_shm(plan, Peer::Process)
}

// ---------------------------------------------------------- context switch

/// Half a round trip: each round trip is two switches.
fn halve(samples: Samples) -> Samples {
    samples.map(|v| v.into_iter().map(|x| x / 2.0).collect())
}

fn cs_pipe(plan: &Plan, peer: Peer) -> Samples {
    halve(lat_echo(plan, Transport::Pipe, peer, Place::SameCpu))
}

fn cs_futex(plan: &Plan, peer: Peer) -> Samples {
    halve(lat_shm(plan, peer, 0, Place::SameCpu))
}

pub fn cs_pipe_thread(plan: &Plan) -> Samples {
    cs_pipe(plan, Peer::Thread)
}
pub fn cs_pipe_process(plan: &Plan) -> Samples {
    cs_pipe(plan, Peer::Process)
}
pub fn cs_futex_thread(plan: &Plan) -> Samples {
    cs_futex(plan, Peer::Thread)
}
pub fn cs_futex_process(plan: &Plan) -> Samples {
    cs_futex(plan, Peer::Process)
}

// ------------------------------------------------------------------- crash

/// Runs inside a sacrificial process unit: start `n - 1` threads that would
/// sleep for a minute, then crash one more thread with a real SIGSEGV.
fn threads_then_segfault(n: usize) -> usize {
    let ready = Arc::new(Barrier::new(n));
    let mut sleepers = Vec::new();
    for _ in 1..n {
        let ready = Arc::clone(&ready);
        sleepers.push(std::thread::spawn(move || {
            ready.wait();
            std::thread::sleep(Duration::from_secs(60));
        }));
    }
    let crasher = std::thread::spawn(move || {
        ready.wait();
        tandem::chaos::segfault()
    });
    let _ = crasher.join();
    sleepers.len() // not reached
}

/// Threads of the process still alive (0 once it is gone).
fn live_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

pub fn crash_segv_threads(plan: &Plan) -> Samples {
    let n = plan.crash_units;
    sample(0, plan.few_samples, "threads + SIGSEGV", || {
        let h = tandem::process::spawn(n, threads_then_segfault).map_err(|e| err("spawn", e))?;
        let pid = match h.id() {
            UnitId::Process(pid) => pid,
            UnitId::Thread(_) => 0,
        };
        match h.join() {
            Err(Error::WorkerDied { signal: Some(11), .. }) => Ok(live_threads(pid) as f64),
            Err(e) => Err(format!("expected the unit to die of SIGSEGV, got: {e}")),
            Ok(_) => Err("the segfaulting unit returned".to_string()),
        }
    })
}

fn segfault_now(_: ()) -> bool {
    tandem::chaos::segfault()
}

fn panic_now(_: ()) -> bool {
    quiet_deliberate_panics();
    panic!("deliberate panic for tandem compare")
}

/// How long the other units run: far longer than a failing unit takes.
const SURVIVOR_MS: u64 = 300;

fn survive(ms: u64) -> bool {
    std::thread::sleep(Duration::from_millis(ms));
    true
}

/// Start `n - 1` units that run for a while and one that fails; count the
/// units that were still running when the failing one was done and then
/// finished with their result.
fn survivors(n: usize, mode: tandem::Mode, fail: fn(()) -> bool) -> Result<f64, String> {
    let spawn_survivor = || match mode {
        tandem::Mode::Thread => tandem::thread::spawn(SURVIVOR_MS, survive),
        tandem::Mode::Process => {
            tandem::process::Builder::new().start_method(StartMethod::ForkServer).spawn(SURVIVOR_MS, survive)
        }
    };
    let others: Vec<_> =
        (1..n).map(|_| spawn_survivor()).collect::<Result<_, _>>().map_err(|e| err("spawn", e))?;
    let failing = match mode {
        tandem::Mode::Thread => tandem::thread::spawn((), fail),
        tandem::Mode::Process => {
            tandem::process::Builder::new().start_method(StartMethod::ForkServer).spawn((), fail)
        }
    }
    .map_err(|e| err("spawn", e))?;
    if failing.join().is_ok() {
        return Err("the failing unit succeeded".into());
    }
    let running_at_failure: Vec<bool> = others.iter().map(|h| !h.is_finished()).collect();
    let mut alive = 0;
    for (h, was_running) in others.into_iter().zip(running_at_failure) {
        if matches!(h.join(), Ok(true)) && was_running {
            alive += 1;
        }
    }
    Ok(alive as f64)
}

pub fn crash_segv_processes(plan: &Plan) -> Samples {
    sample(0, plan.few_samples, "processes + SIGSEGV", || {
        survivors(plan.crash_units, tandem::Mode::Process, segfault_now)
    })
}

static QUIET_PANICS: AtomicBool = AtomicBool::new(false);

/// Keep the deliberate panics out of the terminal; others still print.
fn quiet_deliberate_panics() {
    if !QUIET_PANICS.swap(true, Ordering::SeqCst) {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let deliberate = info.payload().downcast_ref::<&str>().is_some_and(|m| m.contains("deliberate"));
            if !deliberate {
                default(info);
            }
        }));
    }
}

pub fn crash_panic_threads(plan: &Plan) -> Samples {
    quiet_deliberate_panics();
    sample(0, plan.few_samples, "threads + panic", || {
        survivors(plan.crash_units, tandem::Mode::Thread, panic_now)
    })
}

pub fn crash_panic_processes(plan: &Plan) -> Samples {
    sample(0, plan.few_samples, "processes + panic", || {
        survivors(plan.crash_units, tandem::Mode::Process, panic_now)
    })
}
