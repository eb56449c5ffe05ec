//! Round-trip probe: a process pool's submit+join beside a pipe and a Unix
//! socket echo between two processes, all in one run (use `taskset -c 0`
//! to pin). `cargo run --release --example rt_probe -- [rounds] [workers]`
use std::time::Instant;
use tandem::{Mode, Pool};

fn median(mut f: impl FnMut(), n: usize) -> String {
    for _ in 0..1000 {
        f();
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_nanos() as u64);
    }
    v.sort();
    format!(
        "median {:.2} us p10 {:.2} p90 {:.2}",
        v[n / 2] as f64 / 1e3,
        v[n / 10] as f64 / 1e3,
        v[n * 9 / 10] as f64 / 1e3
    )
}

fn main() {
    tandem::init();
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20000);
    let workers: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let mut pipe = tandem_floor::PipeEcho::start().unwrap();
    println!("pipe   {}", median(|| pipe.round_trip().unwrap(), n));
    drop(pipe);
    let mut unix =
        tandem_floor::Echo::start(tandem_floor::Transport::UnixSocket, tandem_floor::Peer::Process).unwrap();
    println!("socket {}", median(|| unix.round_trip().unwrap(), n));
    drop(unix);
    let pool = Pool::builder().mode(Mode::Process).workers(workers).build().unwrap();
    println!("tandem {}", median(|| assert_eq!(pool.submit(1u64, |x| x + 1).join().unwrap(), 2), n));
}
