//! What a sandbox costs: a pool round trip and a one-off unit's start to
//! result, sandboxed and not, in the same run.
//!
//! `cargo bench -p tandem --bench sandbox`

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;
use tandem::sandbox::Sandbox;
use tandem::{Mode, Pool, StartMethod};

fn sandbox() -> Sandbox {
    Sandbox::new().max_open_files(256)
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("sandbox_round_trip");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for sandboxed in [false, true] {
        let mut b = Pool::builder().mode(Mode::Process).workers(2);
        if sandboxed {
            b = b.sandbox(sandbox());
        }
        let pool = b.build().unwrap();
        let name = if sandboxed { "sandboxed" } else { "plain" };
        g.bench_function(format!("process/{name}/submit_join"), |b| {
            b.iter(|| pool.submit(1u64, |x| x + 1).join().unwrap())
        });
    }
    g.finish();
}

fn worker_start(c: &mut Criterion) {
    let mut g = c.benchmark_group("sandbox_worker_start");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        for sandboxed in [false, true] {
            let mut b = tandem::process::Builder::new().start_method(method);
            if sandboxed {
                b = b.sandbox(sandbox());
            }
            let name = if sandboxed { "sandboxed" } else { "plain" };
            g.bench_function(format!("{method:?}/{name}/spawn_join"), |bench| {
                bench.iter(|| b.spawn(1u64, |x| x + 1).unwrap().join().unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, round_trip, worker_start);
criterion_main!(benches);
