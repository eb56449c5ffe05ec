//! Time the phases of a `SharedSliceMut<u8>` created here, filled by a
//! worker and summed here (the `shared_64MiB` benchmark), for profiling.
//!
//! Run: `cargo run --release -p tandem --example shared_probe -- [bytes] [rounds]`

use std::time::{Duration, Instant};

use tandem::shm::SharedSliceMut;
use tandem::{Mode, Pool};

fn main() {
    tandem::init();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(64 << 20, |a| a.parse().expect("bytes"));
    let rounds: usize = args.next().map_or(30, |a| a.parse().expect("rounds"));
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let mut phases: [Vec<Duration>; 5] = Default::default();
    let src = vec![5u8; n];
    let mut touched = vec![0u8; n];
    for _ in 0..rounds {
        let t0 = Instant::now();
        touched.copy_from_slice(std::hint::black_box(&src));
        let t1 = Instant::now();
        let buf = SharedSliceMut::<u8>::new(n).unwrap();
        let t2 = Instant::now();
        let buf = pool
            .submit(buf, |mut b| {
                b.fill(1);
                b
            })
            .join()
            .unwrap();
        let t3 = Instant::now();
        let sum: u64 = buf
            .chunks(1 << 16)
            .map(|block| u64::from(block.iter().map(|&x| u32::from(x)).sum::<u32>()))
            .sum();
        assert_eq!(sum, n as u64);
        let t4 = Instant::now();
        drop(buf);
        let t5 = Instant::now();
        for (p, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]) {
            p.push(d);
        }
    }
    for (name, mut p) in
        ["memcpy touched", "create", "submit+fill+join", "sum", "drop"].into_iter().zip(phases)
    {
        p.sort();
        println!("{name:>18}: median {:?}", p[p.len() / 2]);
    }
}
