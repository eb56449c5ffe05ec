//! A tokio service that offloads a crashy, sometimes endless parser to a
//! process pool, with a time limit per request, and keeps serving.
//!
//! Each request is parsed in a worker process. A parser that crashes fails
//! only its request (`WorkerDied`); one that never ends is stopped by the
//! request's time limit: `tokio::time::timeout` drops the handle, and
//! `cancel_on_drop` turns that drop into a kill of its worker (the pool
//! starts a fresh one). The runtime's thread never blocks.
//!
//! `cargo run --release -p tandem --example async_offload`

use std::time::{Duration, Instant};

use tandem::{Error, Mode, Pool};

/// A deliberately bad parser: "crash" aborts its process, "loop" never
/// returns, anything else is parsed as a number.
fn parse(input: String) -> Result<u64, String> {
    match input.as_str() {
        "crash" => std::process::abort(),
        "loop" => loop {
            std::hint::spin_loop();
        },
        text => text.trim().parse().map_err(|e| format!("{text:?}: {e}")),
    }
}

async fn serve(pool: &Pool, request: String) -> String {
    let handle = pool.submit(request.clone(), parse).cancel_on_drop();
    match tokio::time::timeout(Duration::from_millis(300), handle).await {
        Ok(Ok(Ok(n))) => format!("{request:>8} -> {n}"),
        Ok(Ok(Err(bad))) => format!("{request:>8} -> refused: {bad}"),
        Ok(Err(Error::WorkerDied { signal, .. })) => {
            format!("{request:>8} -> parser crashed (signal {signal:?})")
        }
        Ok(Err(e)) => format!("{request:>8} -> failed: {e}"),
        Err(_) => format!("{request:>8} -> timed out: its worker was killed"),
    }
}

fn main() {
    tandem::init();
    let pool = Pool::builder().mode(Mode::Process).workers(4).build().expect("starting the pool");
    let requests = ["12", "crash", "7", "loop", "x1", "40", "loop", "crash", "99", "5"];
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let started = Instant::now();
    runtime.block_on(async {
        // Two rounds of requests at once: the bad ones never hold up the rest.
        for round in 0..2 {
            let replies =
                futures::future::join_all(requests.iter().map(|r| serve(&pool, r.to_string()))).await;
            println!("round {round}:");
            for reply in replies {
                println!("  {reply}");
            }
        }
        // Still serving after crashes and kills.
        println!("{}", serve(&pool, "123".into()).await);
    });
    println!("served {} requests in {:.2?}", 2 * requests.len() + 1, started.elapsed());
}
