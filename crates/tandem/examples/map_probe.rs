//! Runs `map` of 1,000,000 trivial items over and over, collected into a Vec, for profiling:
//! `cargo run --release -p tandem --example map_probe -- process 20`.
fn main() {
    tandem::init();
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("thread") => tandem::Mode::Thread,
        _ => tandem::Mode::Process,
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(20);
    let pool = tandem::Pool::builder().mode(mode).workers(2).build().unwrap();
    let mut times = Vec::new();
    for _ in 0..rounds {
        let start = std::time::Instant::now();
        let out: Vec<u64> = pool.map(0..1_000_000u64, |x| x.wrapping_mul(x)).map(Result::unwrap).collect();
        times.push(start.elapsed());
        assert_eq!(out[999_999], 999_999u64.wrapping_mul(999_999));
    }
    times.sort();
    println!("{mode:?}: median {:?} over {rounds} rounds", times[rounds / 2]);
}
