//! Pool costs beside the OS floor measured in the same run.
//!
//! `cargo bench -p tandem --bench pool`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
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

fn map_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_1M_trivial");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1_000_000));
    for mode in [Mode::Thread, Mode::Process] {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        g.bench_function(format!("tandem/{mode:?}"), |b| {
            b.iter(|| {
                pool.map(0..1_000_000u64, |x| x.wrapping_mul(x))
                    .map(Result::unwrap)
                    .fold(0u64, u64::wrapping_add)
            })
        });
    }
    g.finish();
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
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    assert!(pool.submit((), |()| -> u8 { std::process::abort() }).join().is_err());
                    let start = Instant::now();
                    pool.submit(0u8, |x| x).join().unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, round_trip, map_throughput, replace_dead_worker);
criterion_main!(benches);
