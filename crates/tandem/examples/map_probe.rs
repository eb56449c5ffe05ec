//! Runs `map` of 1,000,000 trivial items over and over, collected into a
//! Vec (through `next` and with `try_collect_vec`), beside rayon on as many
//! threads, alternating in one run, for profiling and A/B checks:
//! `cargo run --release -p tandem --example map_probe -- process 20`.
use rayon::prelude::*;
use std::time::{Duration, Instant};

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    tandem::init();
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("thread") => tandem::Mode::Thread,
        _ => tandem::Mode::Process,
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(20);
    let pool = tandem::Pool::builder().mode(mode).workers(2).build().unwrap();
    let rayon = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (mut next, mut whole, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let out: Vec<u64> = pool.map(0..1_000_000u64, |x| x.wrapping_mul(x)).map(Result::unwrap).collect();
        next.push(start.elapsed());
        assert_eq!(out[999_999], 999_999u64.wrapping_mul(999_999));
        drop(out);
        let start = Instant::now();
        let out = pool.map(0..1_000_000u64, |x| x.wrapping_mul(x)).try_collect_vec().unwrap();
        whole.push(start.elapsed());
        assert_eq!(out[999_999], 999_999u64.wrapping_mul(999_999));
        drop(out);
        let start = Instant::now();
        let out: Vec<u64> =
            rayon.install(|| (0..1_000_000u64).into_par_iter().map(|x| x.wrapping_mul(x)).collect());
        peer.push(start.elapsed());
        drop(out);
    }
    println!(
        "{mode:?}: medians over {rounds} rounds: next+collect {:?}, try_collect_vec {:?}, rayon {:?}",
        median(next),
        median(whole),
        median(peer)
    );
}
