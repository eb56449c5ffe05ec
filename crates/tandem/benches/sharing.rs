//! Sharing primitives between processes, beside the raw OS floor measured in
//! the same run:
//!
//! - `channel/round_trip`: one u64 to an echo process and back over two
//!   tandem channels, vs `floor/pipe_round_trip` (1 byte over two pipes).
//! - `queue/2p2c`: items/s through one `Queue<u64>` with 2 producer and 2
//!   consumer processes.
//! - `hand_64mib/*`: give 64 MiB to a process worker that reads all of it:
//!   as a `SharedSlice` (only a descriptor travels) vs as a `Vec<u8>`
//!   message, beside one 64 MiB `memcpy` in this process.
//!
//! Run: `cargo bench -p tandem --bench sharing -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use serde::{Deserialize, Serialize};
use tandem::ipc::{self, Queue, Receiver, Sender};
use tandem::shm::SharedSlice;
use tandem::{JoinHandle, StartMethod};
use tandem_floor::PipeEcho;

fn start<A, R>(arg: A, f: fn(A) -> R) -> JoinHandle<R>
where
    A: Serialize + serde::de::DeserializeOwned + Send + 'static,
    R: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    tandem::process::Builder::new().start_method(StartMethod::ForkServer).spawn(arg, f).unwrap()
}

fn echo((rx, tx): (Receiver<u64>, Sender<u64>)) {
    for x in rx.iter() {
        if tx.send(x).is_err() {
            return;
        }
    }
}

fn round_trips(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    let mut pipe = PipeEcho::start().unwrap();
    g.bench_function("floor_pipe", |b| b.iter(|| pipe.round_trip().unwrap()));
    drop(pipe);

    let (to_tx, to_rx) = ipc::channel::<u64>().unwrap();
    let (back_tx, back_rx) = ipc::channel::<u64>().unwrap();
    let h = start((to_rx, back_tx), echo);
    g.bench_function("channel", |b| {
        b.iter(|| {
            to_tx.send(black_box(7)).unwrap();
            back_rx.recv().unwrap()
        })
    });
    drop(to_tx);
    h.join().unwrap();
    g.finish();
}

/// A queue worker: for each count received, put (producer) or get
/// (consumer) that many items, then report.
fn queue_worker((q, producer, orders, done): (Queue<u64>, bool, Receiver<u64>, Sender<()>)) {
    for n in orders.iter() {
        for i in 0..n {
            if producer {
                q.put(i).unwrap();
            } else {
                black_box(q.get().unwrap());
            }
        }
        done.send(()).unwrap();
    }
}

fn queue_throughput(c: &mut Criterion) {
    let q = Queue::<u64>::bounded(1024).unwrap();
    let (done_tx, done_rx) = ipc::channel::<()>().unwrap();
    let mut orders = Vec::new();
    let mut workers = Vec::new();
    for producer in [true, true, false, false] {
        let (tx, rx) = ipc::channel::<u64>().unwrap();
        orders.push(tx);
        workers.push(start((q.clone(), producer, rx, done_tx.clone()), queue_worker));
    }
    drop(done_tx);
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("2p2c_processes", |b| {
        b.iter_custom(|iters| {
            let each = iters.div_ceil(2);
            let t = Instant::now();
            for o in &orders {
                o.send(each).unwrap();
            }
            for _ in 0..4 {
                done_rx.recv().unwrap();
            }
            t.elapsed()
        })
    });
    g.finish();
    drop(orders);
    for w in workers {
        w.join().unwrap();
    }
}

#[derive(Serialize, Deserialize)]
enum Job {
    Shared(SharedSlice<u8>),
    Bytes(#[serde(with = "bytes_as_bytes")] Vec<u8>),
}

/// `Vec<u8>` as one byte string, not element by element.
mod bytes_as_bytes {
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| b as u64).sum()
}

fn reader((jobs, sums): (Receiver<Job>, Sender<u64>)) {
    for job in jobs.iter() {
        let total = match job {
            Job::Shared(s) => sum(&s),
            Job::Bytes(v) => sum(&v),
        };
        sums.send(total).unwrap();
    }
}

fn hand_64mib(c: &mut Criterion) {
    const LEN: usize = 64 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| i as u8).collect();
    let expected = sum(&data);
    let shared = SharedSlice::from_slice(&data).unwrap();
    let (jobs_tx, jobs_rx) = ipc::channel::<Job>().unwrap();
    let (sums_tx, sums_rx) = ipc::channel::<u64>().unwrap();
    let h = start((jobs_rx, sums_tx), reader);

    let mut g = c.benchmark_group("hand_64mib");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("memcpy_in_process", |b| {
        let mut dst = vec![0u8; LEN];
        b.iter(|| {
            dst.copy_from_slice(black_box(&data));
            black_box(&dst);
        })
    });
    g.bench_function("shared_slice_to_process_and_read", |b| {
        b.iter(|| {
            jobs_tx.send(Job::Shared(shared.clone())).unwrap();
            assert_eq!(sums_rx.recv().unwrap(), expected);
        })
    });
    g.bench_function("vec_to_process_and_read", |b| {
        b.iter(|| {
            jobs_tx.send(Job::Bytes(data.clone())).unwrap();
            assert_eq!(sums_rx.recv().unwrap(), expected);
        })
    });
    g.bench_function("read_in_process", |b| b.iter(|| assert_eq!(sum(black_box(&shared)), expected)));
    g.finish();
    drop(jobs_tx);
    h.join().unwrap();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = round_trips, queue_throughput, hand_64mib }

fn main() {
    tandem::init();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
