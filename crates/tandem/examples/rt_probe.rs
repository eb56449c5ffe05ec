use std::time::Instant;
use tandem::{Mode, Pool};
fn main() {
    tandem::init();
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20000);
    let workers: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let pool = Pool::builder().mode(Mode::Process).workers(workers).build().unwrap();
    for _ in 0..1000 {
        pool.submit(1u64, |x| x + 1).join().unwrap();
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        pool.submit(1u64, |x| x + 1).join().unwrap();
        v.push(t.elapsed().as_nanos() as u64);
    }
    v.sort();
    println!(
        "median {:.2} us p10 {:.2} p90 {:.2}",
        v[n / 2] as f64 / 1e3,
        v[n / 10] as f64 / 1e3,
        v[n * 9 / 10] as f64 / 1e3
    );
}
