//! Where the time of a Spawn start goes (a quick look, not a benchmark).
use std::time::Instant;
fn main() {
    tandem::init();
    for method in [tandem::StartMethod::Spawn, tandem::StartMethod::ForkServer] {
        let b = tandem::process::Builder::new().start_method(method);
        b.spawn(1u8, |x| x).unwrap().join().unwrap();
        let (mut s, mut j) = (0u128, 0u128);
        for _ in 0..200 {
            let t0 = Instant::now();
            let h = b.spawn(1u8, |x| x).unwrap();
            let t1 = Instant::now();
            h.join().unwrap();
            s += (t1 - t0).as_micros();
            j += t1.elapsed().as_micros();
        }
        println!("{method:?}: spawn {} us, join {} us", s / 200, j / 200);
    }
}
