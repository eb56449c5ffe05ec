//! A progress bar over a long map, from `Map::progress()` and the pool's
//! counters: `cargo run --release --example progress`.
//!
//! Every 97th item crashes its worker (a real SIGSEGV): the bar counts it as
//! failed and the map goes on.

use indicatif::{ProgressBar, ProgressStyle};
use tandem::{Mode, Pool};

fn work(x: u64) -> u64 {
    if x % 97 == 96 {
        tandem::chaos::segfault();
    }
    // About 200 us of arithmetic per item.
    (0..20_000u64).fold(x, |a, i| a.wrapping_mul(6364136223846793005).wrapping_add(i))
}

fn main() {
    tandem::init();
    let n = 20_000u64;
    let pool = Pool::builder().mode(Mode::Process).workers(2).build().expect("a pool");
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} items {msg} [{elapsed_precise}, eta {eta}]")
            .expect("a template"),
    );
    let mut map = pool.map(0..n, work);
    let mut sum = 0u64;
    while let Some(result) = map.next() {
        if let Ok(v) = result {
            sum = sum.wrapping_add(v);
        }
        let p = map.progress();
        bar.set_position(p.done + p.failed);
        bar.set_message(format!("({} failed, {} in flight)", p.failed, p.in_flight));
    }
    bar.finish();
    let s = pool.stats();
    println!(
        "sum {sum:#x}; pool: {} submitted, {} completed, {} failed, {} retried, {} running",
        s.submitted, s.completed, s.failed, s.retried, s.running
    );
}
