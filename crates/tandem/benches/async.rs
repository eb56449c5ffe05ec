//! Awaiting handles: an await round trip on a current-thread runtime beside
//! `join` on the same pool in the same run, and 10,000 handles awaited at
//! once (wall time; the parent's thread count is printed before and while
//! they wait).
//!
//! `cargo bench -p tandem --bench async`

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tandem::{Mode, Pool};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("await_round_trip");
    g.sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for mode in [Mode::Thread, Mode::Process] {
        let pool = Pool::builder().mode(mode).workers(2).build().unwrap();
        g.bench_function(format!("{mode:?}/submit_join"), |b| {
            b.iter(|| pool.submit(1u64, |x| x + 1).join().unwrap())
        });
        g.bench_function(format!("{mode:?}/submit_await_current_thread"), |b| {
            b.iter(|| rt.block_on(async { pool.submit(1u64, |x| x + 1).await.unwrap() }))
        });
    }
    g.finish();
}

fn ten_thousand(c: &mut Criterion) {
    let mut g = c.benchmark_group("await_10000_at_once");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let pool = Pool::builder().mode(Mode::Process).workers(2).build().unwrap();
    let before = threads();
    let mut during = 0;
    g.bench_function("Process/2_workers", |b| {
        b.iter(|| {
            rt.block_on(async {
                let handles: Vec<_> = (0..10_000u64).map(|i| pool.submit(i, |x| x + 1)).collect();
                let mut all = Box::pin(futures::future::join_all(handles));
                let first = std::future::poll_fn(|cx| Poll::Ready(all.as_mut().poll(cx))).await;
                during = during.max(threads());
                match first {
                    Poll::Ready(v) => v.len(),
                    Poll::Pending => all.await.len(),
                }
            })
        })
    });
    g.finish();
    println!("await_10000_at_once: parent threads before {before}, while awaiting (max) {during}");
}

criterion_group!(benches, round_trip, ten_thousand);
criterion_main!(benches);
