//! Bulk data across the process boundary (issue 14), beside the floors
//! measured in the same run:
//!
//! - `bulk_<size>/floor_memcpy_touched`: one copy into a buffer already
//!   touched; `floor_memcpy_fresh`: into a new `Vec` (what a decoded
//!   `ByteBuf` must end in; at 64 MiB glibc maps it fresh, page faults and
//!   all); `floor_socket_to_process`: the raw bytes through a Unix socket to
//!   a forked reader (tandem-floor's `Sink`, no serde, no buffer kept).
//! - `postcard_vec_encode_decode`: postcard's own encode + decode of a
//!   `Vec<u8>` in this process (serde, element by element).
//! - `process_bytebuf_arg`, `process_vec_arg`: a 1-worker process pool,
//!   `serde_bytes::ByteBuf` / plain `Vec<u8>` argument, its length back;
//!   `process_vec_nested_arg`: a `(Vec<u8>,)` (serde's element path, in the
//!   memfd); `process_vec_arg_socket`: a `Vec<u8>` argument with the bulk
//!   path off in this process (inline through the socket, as before);
//!   `thread_vec_arg`: a thread pool (a move).
//! - `process_bytebuf_result` / `thread_bytebuf_result`: a task that makes
//!   and returns a `ByteBuf` (`vec![7; n]`); the thread figure is making it.
//!   The process worker lends it (its parent reads it out of the worker's
//!   memory); `process_bytebuf_result_arena`: the same through the
//!   worker's arena (lending off), and `floor_read_child_memory`: one
//!   `process_vm_readv(2)` of as many bytes out of a forked child into a
//!   new `Vec` (tandem-floor's `ChildMemory`).
//! - `shared_64MiB`: a `SharedSliceMut<u8>` created here, filled by a
//!   worker (`fill`), handed back and summed here; beside one touched copy,
//!   and the kernel's part with no worker (`floor_fresh_shared_*`: a bare
//!   memfd made, populated, filled and summed in this process).
//! - `threshold/{inline,memfd}/<bytes>`: a `ByteBuf` argument through the
//!   socket or through a memfd, to place the threshold; `threshold/result/
//!   <bytes>`: a `ByteBuf` result, inline or not as the build's threshold
//!   says (compare two builds).
//!
//! Run: `cargo bench -p tandem --bench bulk`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use serde_bytes::ByteBuf;
use tandem::shm::SharedSliceMut;
use tandem::{Mode, Pool};
use tandem_floor::{ChildMemory, FreshSharedBytes, Peer, Sink, Transport};

const MIB: usize = 1 << 20;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

fn process_pool() -> Pool {
    Pool::builder().mode(Mode::Process).workers(1).build().unwrap()
}

/// The floor: one copy of `src` into a buffer whose pages are touched.
fn memcpy_touched(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, src: &[u8]) {
    let mut touched = vec![0u8; src.len()];
    g.bench_function("floor_memcpy_touched", |b| {
        b.iter(|| {
            touched.copy_from_slice(black_box(src));
            black_box(&touched);
        })
    });
}

fn sizes(c: &mut Criterion) {
    let process = process_pool();
    // The same pool with results copied through the worker's arena
    // instead of lent (read out of the worker by the parent).
    tandem::__fuzz::allow_lending(false);
    let process_arena = process_pool();
    tandem::__fuzz::allow_lending(true);
    let threads = Pool::builder().mode(Mode::Thread).workers(1).build().unwrap();
    for n in [MIB, 16 * MIB, 64 * MIB] {
        let mut g = c.benchmark_group(format!("bulk_{}MiB", n / MIB));
        g.throughput(Throughput::Bytes(n as u64));
        let src = vec![5u8; n];
        memcpy_touched(&mut g, &src);
        g.bench_function("floor_memcpy_fresh", |b| {
            b.iter(|| {
                let mut fresh = Vec::with_capacity(n);
                fresh.extend_from_slice(black_box(&src));
                black_box(fresh)
            })
        });
        let mut sink = Sink::start(Transport::UnixSocket, Peer::Process, n).unwrap();
        g.bench_function("floor_socket_to_process", |b| b.iter(|| sink.transfer().unwrap()));
        drop(sink);
        g.bench_function("postcard_vec_encode_decode", |b| {
            b.iter(|| {
                let bytes = postcard::to_stdvec(black_box(&src)).unwrap();
                let back: Vec<u8> = postcard::from_bytes(&bytes).unwrap();
                black_box(back)
            })
        });
        let buf = ByteBuf::from(src.clone());
        g.bench_function("process_bytebuf_arg", |b| {
            b.iter_batched(
                || buf.clone(),
                |a| process.submit(a, |d| d.len()).join().unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
        g.bench_function("process_vec_arg", |b| {
            b.iter_batched(
                || src.clone(),
                |a| process.submit(a, |d| d.len()).join().unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
        g.bench_function("process_vec_nested_arg", |b| {
            b.iter_batched(
                || (src.clone(),),
                |a| process.submit(a, |(d,)| d.len()).join().unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
        tandem::__fuzz::set_bulk_threshold(usize::MAX);
        g.bench_function("process_vec_arg_socket", |b| {
            b.iter_batched(
                || src.clone(),
                |a| process.submit(a, |d| d.len()).join().unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
        tandem::__fuzz::set_bulk_threshold(256 << 10);
        g.bench_function("thread_vec_arg", |b| {
            b.iter_batched(
                || src.clone(),
                |a| threads.submit(a, |d| d.len()).join().unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
        g.bench_function("process_bytebuf_result", |b| {
            b.iter(|| process.submit(n, |n| ByteBuf::from(vec![7u8; n])).join().unwrap())
        });
        g.bench_function("process_bytebuf_result_arena", |b| {
            b.iter(|| process_arena.submit(n, |n| ByteBuf::from(vec![7u8; n])).join().unwrap())
        });
        let child = ChildMemory::start(n).unwrap();
        g.bench_function("floor_read_child_memory", |b| b.iter(|| black_box(child.read().unwrap())));
        drop(child);
        g.bench_function("thread_bytebuf_result", |b| {
            b.iter(|| threads.submit(n, |n| ByteBuf::from(vec![7u8; n])).join().unwrap())
        });
        g.finish();
    }
}

fn shared(c: &mut Criterion) {
    let n = 64 * MIB;
    let process = process_pool();
    let mut g = c.benchmark_group("shared_64MiB");
    g.throughput(Throughput::Bytes(n as u64));
    memcpy_touched(&mut g, &vec![5u8; n]);
    g.bench_function("create_fill_in_worker_sum_here", |b| {
        b.iter(|| {
            let buf = SharedSliceMut::<u8>::new(n).unwrap();
            let buf = process
                .submit(buf, |mut b| {
                    b.fill(1);
                    b
                })
                .join()
                .unwrap();
            assert_eq!(sum_bytes(&buf), n as u64);
        })
    });
    g.bench_function("create_only", |b| b.iter(|| black_box(SharedSliceMut::<u8>::new(n).unwrap())));
    // The kernel's part: the same memory made, used and freed in this
    // process with no library and no worker.
    g.bench_function("floor_fresh_shared_create", |b| {
        b.iter(|| black_box(FreshSharedBytes::new(n).unwrap()))
    });
    g.bench_function("floor_fresh_shared_create_fill_sum", |b| {
        b.iter(|| {
            let mut fresh = FreshSharedBytes::new(n).unwrap();
            fresh.bytes_mut().fill(1);
            assert_eq!(sum_bytes(black_box(fresh.bytes_mut())), n as u64);
        })
    });
    g.finish();
}

/// The sum of `bytes`, read at memory speed: `u32` sums of 64 KiB blocks
/// (they cannot overflow), which the compiler vectorizes, where widening
/// every byte to `u64` runs at a third of the speed.
fn sum_bytes(bytes: &[u8]) -> u64 {
    bytes.chunks(1 << 16).map(|block| u64::from(block.iter().map(|&x| u32::from(x)).sum::<u32>())).sum()
}

fn threshold(c: &mut Criterion) {
    let process = process_pool();
    let mut g = c.benchmark_group("threshold");
    for n in [4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, MIB] {
        let buf = ByteBuf::from(vec![5u8; n]);
        for (name, limit) in [("inline", usize::MAX), ("memfd", 0)] {
            tandem::__fuzz::set_bulk_threshold(limit);
            g.bench_with_input(BenchmarkId::new(name, n), &buf, |b, buf| {
                b.iter_batched(
                    || buf.clone(),
                    |a| process.submit(a, |d| d.len()).join().unwrap(),
                    criterion::BatchSize::PerIteration,
                )
            });
        }
    }
    tandem::__fuzz::set_bulk_threshold(256 << 10);
    // Results: the worker's own threshold decides (the build's default).
    for n in [4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10] {
        g.bench_with_input(BenchmarkId::new("result", n), &n, |b, &n| {
            b.iter(|| process.submit(n, |n| ByteBuf::from(vec![7u8; n])).join().unwrap())
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = sizes, shared, threshold }

fn main() {
    tandem::init();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
