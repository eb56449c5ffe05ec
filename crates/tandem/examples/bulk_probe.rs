//! Time big `ByteBuf` round trips through a 1-worker process pool, for
//! profiling the bulk path (`perf`, `strace -f -T`).
//!
//! Run: `cargo run --release -p tandem --example bulk_probe -- [bytes] [rounds] [argument|result]`

use std::time::Instant;

use serde_bytes::ByteBuf;
use tandem::{Mode, Pool};

fn main() {
    tandem::init();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(1 << 20, |a| a.parse().expect("bytes"));
    let rounds: usize = args.next().map_or(2000, |a| a.parse().expect("rounds"));
    let only = args.next();
    let pool = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    let buf = ByteBuf::from(vec![5u8; n]);
    for (name, result) in [("argument", false), ("result", true)] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = if result {
                let start = Instant::now();
                std::hint::black_box(pool.submit(n, |n| ByteBuf::from(vec![7u8; n])).join().unwrap());
                start
            } else {
                let arg = buf.clone();
                let start = Instant::now();
                std::hint::black_box(pool.submit(arg, |d| d.len()).join().unwrap());
                start
            };
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
