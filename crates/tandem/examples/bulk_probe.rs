//! Time big `ByteBuf` round trips through a 1-worker process pool, for
//! profiling the bulk path (`perf`, `strace -f -T`).
//!
//! Run: `cargo run --release -p tandem --example bulk_probe -- [bytes] [rounds]`

use std::time::Instant;

use serde_bytes::ByteBuf;
use tandem::{Mode, Pool};

fn main() {
    tandem::init();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1 << 20, |a| a.parse().expect("bytes"));
    let rounds: usize = args.next().map_or(2000, |a| a.parse().expect("rounds"));
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let buf = ByteBuf::from(vec![5u8; n]);
    for (name, result) in [("argument", false), ("result", true)] {
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let arg = buf.clone();
            let start = Instant::now();
            if result {
                std::hint::black_box(pool.submit(n, |n| ByteBuf::from(vec![7u8; n])).join().unwrap());
            } else {
                std::hint::black_box(pool.submit(arg, |d| d.len()).join().unwrap());
            }
            times.push(start.elapsed());
        }
        times.sort();
        println!(
            "{name}: {n} bytes, median {:?}, p10 {:?}, p90 {:?}",
            times[rounds / 2],
            times[rounds / 10],
            times[rounds * 9 / 10]
        );
    }
}
