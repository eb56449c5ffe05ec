//! Independent Rust check of tandem compare's thread-creation figure:
//! std::thread::spawn + join, median of 220 after 4 warm-ups. Run pinned
//! like tandem compare's creation rows:
//!   rustc -O -o /tmp/std_spawn bench/std_spawn.rs && taskset -c 0 /tmp/std_spawn
use std::time::Instant;

fn main() {
    let mut v = Vec::new();
    for i in 0..224 {
        let t = Instant::now();
        std::thread::spawn(|| {}).join().unwrap();
        if i >= 4 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(f64::total_cmp);
    println!("std::thread::spawn+join median {:.1} us", v[v.len() / 2]);
}
