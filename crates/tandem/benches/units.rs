//! Spawn + join of a trivial task, beside the OS floor measured in the same run.
//!
//! `cargo bench -p tandem --bench units`

use criterion::{Criterion, criterion_group, criterion_main};
use std::time::Duration;
use tandem::StartMethod;

fn creation(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn_join");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));

    g.bench_function("floor/std_thread", |b| b.iter(|| std::thread::spawn(|| 1u64).join().unwrap()));
    g.bench_function("tandem/thread", |b| {
        b.iter(|| tandem::thread::spawn(1u64, |x| x + 1).unwrap().join().unwrap())
    });

    g.bench_function("floor/fork_waitpid", |b| b.iter(|| tandem_floor::fork_wait().unwrap()));
    g.bench_function("floor/posix_spawn_true", |b| b.iter(|| tandem_floor::spawn_true_wait().unwrap()));
    for (name, method) in
        [("tandem/process_spawn", StartMethod::Spawn), ("tandem/process_forkserver", StartMethod::ForkServer)]
    {
        let builder = tandem::process::Builder::new().start_method(method);
        g.bench_function(name, |b| b.iter(|| builder.spawn(1u64, |x| x + 1).unwrap().join().unwrap()));
    }
    g.finish();
}

criterion_group!(benches, creation);
criterion_main!(benches);
