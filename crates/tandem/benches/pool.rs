//! Pool costs beside the OS floor measured in the same run.
//!
//! `cargo bench -p tandem --bench pool`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::time::{Duration, Instant};
use tandem::{Mode, Pool, StartMethod};

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let mut echo = tandem_floor::PipeEcho::start().unwrap();
    g.bench_function("floor/pipe_1_byte_two_processes", |b| b.iter(|| echo.round_trip().unwrap()));
    drop(echo);
    for mode in [Mode::Thread, Mode::Process] {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        g.bench_function(format!("tandem/{mode:?}/submit_join"), |b| {
            b.iter(|| pool.submit(1u64, |x| x + 1).join().unwrap())
        });
    }
    g.finish();
}

/// Issue 16: a process pool's round trip of a trivial task as `join`,
/// as `join_report` on the same pool, with `reports(true)` (the worker
/// measures CPU and peak memory around each task) and with
/// `capture_output(true)` (descriptors 1 and 2 on memfds, taken after each
/// task), on 2 workers like `round_trip`.
fn reports_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("reports_round_trip");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let plain = Pool::builder().mode(Mode::Process).workers(2).build().unwrap();
    g.bench_function("Process/join", |b| b.iter(|| plain.submit(1u64, |x| x + 1).join().unwrap()));
    g.bench_function("Process/join_report", |b| {
        b.iter(|| plain.submit(1u64, |x| x + 1).join_report().result.unwrap())
    });
    drop(plain);
    let reports = Pool::builder().mode(Mode::Process).workers(2).reports(true).build().unwrap();
    g.bench_function("Process/reports_on/join_report", |b| {
        b.iter(|| reports.submit(1u64, |x| x + 1).join_report().result.unwrap())
    });
    drop(reports);
    let capture = Pool::builder().mode(Mode::Process).workers(2).capture_output(true).build().unwrap();
    g.bench_function("Process/capture_on/join_report", |b| {
        b.iter(|| capture.submit(1u64, |x| x + 1).join_report().result.unwrap())
    });
    g.bench_function("Process/capture_on/join_report_printing_a_line", |b| {
        b.iter(|| {
            capture
                .submit(1u64, |x| {
                    println!("a line of output");
                    x + 1
                })
                .join_report()
                .result
                .unwrap()
        })
    });
    g.finish();
}

fn map_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_1M_trivial");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1_000_000));
    // The peer: rayon on a pool of as many threads as tandem has workers,
    // the same work collected into a Vec the same way.
    let rayon = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    g.bench_function("rayon/par_iter_collect", |b| {
        b.iter(|| {
            use rayon::prelude::*;
            rayon.install(|| {
                (0..1_000_000u64).into_par_iter().map(|x| x.wrapping_mul(x)).collect::<Vec<u64>>()
            })
        })
    });
    // The same through an opaque function pointer, as `map` takes its
    // function (`fn(A) -> R`, so a worker process can find it): no inlining,
    // no vectorized loop.
    g.bench_function("rayon/par_iter_collect_fn_pointer", |b| {
        let f: fn(u64) -> u64 = std::hint::black_box(|x| x.wrapping_mul(x));
        b.iter(|| {
            use rayon::prelude::*;
            rayon.install(|| (0..1_000_000u64).into_par_iter().map(f).collect::<Vec<u64>>())
        })
    });
    drop(rayon);
    // The floor of any iterator API: 1M values computed beforehand (in
    // 16,384-item chunks, as map's batches come back) handed out one by one
    // through `next` and collected. `collect` drives a non-`TrustedLen`
    // iterator item by item; rayon writes into the Vec in place.
    g.bench_function("floor/next_into_vec", |b| {
        b.iter_batched(
            || {
                let chunks: Vec<Vec<u64>> = (0..1_000_000u64)
                    .collect::<Vec<_>>()
                    .chunks(16_384)
                    .map(|c| c.iter().map(|x| x.wrapping_mul(*x)).collect())
                    .collect();
                Handout { chunks: chunks.into_iter(), current: Vec::new().into_iter() }
            },
            |h| h.collect::<Vec<u64>>(),
            BatchSize::LargeInput,
        )
    });
    for mode in [Mode::Thread, Mode::Process] {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        g.bench_function(format!("tandem/{mode:?}"), |b| {
            b.iter(|| {
                pool.map(0..1_000_000u64, |x| x.wrapping_mul(x)).map(Result::unwrap).collect::<Vec<u64>>()
            })
        });
        // Each batch's values taken whole, not one `next` at a time.
        g.bench_function(format!("tandem/{mode:?}/try_collect_vec"), |b| {
            b.iter(|| pool.map(0..1_000_000u64, |x| x.wrapping_mul(x)).try_collect_vec().unwrap())
        });
    }
    g.finish();
}

/// Values handed out one `next` at a time from chunks (see `map_throughput`).
struct Handout {
    chunks: std::vec::IntoIter<Vec<u64>>,
    current: std::vec::IntoIter<u64>,
}

impl Handout {
    #[inline(never)]
    fn next_chunk(&mut self) -> Option<u64> {
        self.current = self.chunks.next()?.into_iter();
        self.current.next()
    }
}

impl Iterator for Handout {
    type Item = u64;

    #[inline]
    fn next(&mut self) -> Option<u64> {
        match self.current.next() {
            Some(v) => Some(v),
            None => self.next_chunk(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.current.len() + self.chunks.as_slice().iter().map(Vec::len).sum::<usize>();
        (left, Some(left))
    }
}

fn replace_dead_worker(c: &mut Criterion) {
    let mut g = c.benchmark_group("replace_dead_worker");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        pool.submit(0u8, |x| x).join().unwrap();
        // Death (the crash task's result) to the next task's result, minus a
        // plain task's round trip measured alongside.
        g.bench_function(format!("{method:?}/death_to_next_result"), |b| {
            b.iter_custom(|iters| death_to_next_result(&pool, iters))
        });
    }
    g.finish();
}

/// `worker_memory_limit(256 MiB)` kept by a memory cgroup per worker (what
/// the pool picks where it can make one) or by sampling (forced): a
/// worker's replacement (the cgroup adds a `mkdir`, two or three writes
/// and an `rmdir` per worker) and a trivial task's round trip (the sampler
/// keeps tasks off the lanes).
fn memory_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_limit");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for sampled in [false, true] {
        let by = if sampled { "sampling" } else { "picked" };
        let builder = Pool::builder().mode(Mode::Process).workers(1).worker_memory_limit(256 << 20);
        let pool = if sampled { builder.__worker_memory_by_sampling() } else { builder }.build().unwrap();
        pool.submit(0u8, |x| x).join().unwrap();
        g.bench_function(format!("{by}/death_to_next_result"), |b| {
            b.iter_custom(|iters| death_to_next_result(&pool, iters))
        });
        g.bench_function(format!("{by}/submit_join"), |b| {
            b.iter(|| pool.submit(1u64, |x| x + 1).join().unwrap())
        });
    }
    g.finish();
}

/// `iters` times: a task crashes its worker, then the time until the next
/// task's result (the replacement's start plus one round trip).
fn death_to_next_result(pool: &Pool, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        assert!(pool.submit((), |()| -> u8 { std::process::abort() }).join().is_err());
        let start = Instant::now();
        pool.submit(0u8, |x| x).join().unwrap();
        total += start.elapsed();
    }
    total
}

/// A task that takes 10 ms of wall time and no CPU: the I/O-bound work a
/// wide pool is for.
fn ten_ms(i: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(10));
    i
}

/// Many workers: 10 tasks of 10 ms per worker, all submitted at once, then
/// joined; the ideal is 100 ms. Prints the threads the pool added.
fn wide_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("wide_pool_10_tasks_of_10ms_per_worker");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum },
    );
    for workers in [256usize, 1000] {
        // The OS floor: as many bare forked processes, each sent its 10
        // "tasks" at once through a pipe, sleeping 10 ms for each.
        let mut floor = tandem_floor::SleepyEchoes::start(workers, Duration::from_millis(10)).unwrap();
        g.bench_function(format!("{workers}_workers/floor_bare_processes_and_pipes"), |b| {
            b.iter(|| floor.run(10).unwrap())
        });
        drop(floor);
        for method in [StartMethod::ForkServer, StartMethod::Spawn] {
            let threads_before = threads();
            let built = Instant::now();
            let pool =
                Pool::builder().mode(Mode::Process).workers(workers).start_method(method).build().unwrap();
            // Every worker up: as many tasks as workers, each held 10 ms.
            let warm: Vec<_> = (0..workers as u32).map(|i| pool.submit(i, ten_ms)).collect();
            for h in warm {
                h.join().unwrap();
            }
            eprintln!(
                "{workers} {method:?} workers: built and all busy once in {:?}; the pool added {} threads",
                built.elapsed(),
                threads() - threads_before
            );
            g.bench_function(format!("{workers}_workers/{method:?}"), |b| {
                b.iter(|| {
                    let handles: Vec<_> = (0..workers as u32 * 10).map(|i| pool.submit(i, ten_ms)).collect();
                    handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
                })
            });
        }
    }
    g.finish();
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// The round trip with the whole process on one CPU (the caller, the pool's
/// threads and its workers inherit the caller's affinity), beside a pipe
/// round trip between two processes pinned the same way.
fn round_trip_pinned(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip_pinned_cpu0");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let before = rustix::thread::sched_getaffinity(None).unwrap();
    let mut cpu0 = rustix::thread::CpuSet::new();
    cpu0.set(0);
    rustix::thread::sched_setaffinity(None, &cpu0).unwrap();
    let mut echo = tandem_floor::PipeEcho::start().unwrap();
    g.bench_function("floor/pipe_1_byte_two_processes", |b| b.iter(|| echo.round_trip().unwrap()));
    drop(echo);
    let pool = Pool::builder().mode(Mode::Process).workers(2).build().unwrap();
    g.bench_function("tandem/Process/submit_join", |b| {
        b.iter(|| pool.submit(1u64, |x| x + 1).join().unwrap())
    });
    drop(pool);
    g.finish();
    rustix::thread::sched_setaffinity(None, &before).unwrap();
}

/// Building a pool until its first result (the workers start meanwhile).
fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_build_to_first_result");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        g.bench_function(format!("2_workers/{method:?}"), |b| {
            b.iter(|| {
                let pool =
                    Pool::builder().mode(Mode::Process).workers(2).start_method(method).build().unwrap();
                pool.submit(1u8, |x| x).join().unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    round_trip,
    reports_round_trip,
    map_throughput,
    replace_dead_worker,
    memory_limit,
    build,
    wide_pool,
    round_trip_pinned
);
criterion_main!(benches);
