//! Replacement probe: a worker crashes, then the time until the next
//! task's result (the replacement's start plus one round trip), with the
//! crash task's own join timed too. `cargo run --release --example
//! replace_probe -- [rounds] [spawn|forkserver]`
use std::time::{Duration, Instant};
use tandem::{Mode, Pool, StartMethod};

fn median(v: &mut [Duration]) -> String {
    v.sort();
    let n = v.len();
    format!(
        "median {:.1} us p10 {:.1} p90 {:.1}",
        v[n / 2].as_secs_f64() * 1e6,
        v[n / 10].as_secs_f64() * 1e6,
        v[n * 9 / 10].as_secs_f64() * 1e6
    )
}

fn main() {
    tandem::init();
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let method = match std::env::args().nth(2).as_deref() {
        Some("spawn") => StartMethod::Spawn,
        _ => StartMethod::ForkServer,
    };
    let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
    pool.submit(0u8, |x| x).join().unwrap();
    let (mut crash, mut next) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        assert!(pool.submit((), |()| -> u8 { std::process::abort() }).join().is_err());
        crash.push(t.elapsed());
        let t = Instant::now();
        pool.submit(0u8, |x| x).join().unwrap();
        next.push(t.elapsed());
    }
    println!("{method:?} crash_join {}", median(&mut crash));
    println!("{method:?} death_to_next_result {}", median(&mut next));
}
