//! Cluster mode on loopback (issue 17), each figure beside the broker's own
//! measured in the same run: a real `redis-server` on 127.0.0.1 and two
//! agents (this bench binary re-executed), one local worker each.
//!
//! `cargo bench -p tandem --bench cluster`
//!
//! - `round_trip`: one trivial task, submit to result, beside one `PING`
//!   round trip from the same client library (the `redis` crate, sync).
//! - `map_1M_trivial`: `map` of 1,000,000 `u64` items (`x + 1`) over two
//!   agents, beside the broker moving the same bytes (8 MB in 1,000
//!   batches) through a list with a plain client: pipelined `RPUSH`es, then
//!   `LPOP`s.
//! - `agent_death_to_rerun`: from an agent's SIGKILL in the middle of a task
//!   to the task starting on the other agent, with a 500 ms lease (goal:
//!   the lease plus at most 1 s).

#[path = "../tests/common/redis.rs"]
mod redis_support;

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use redis_support::{AgentProcess, Redis, eventually};
use tandem::Pool;
use tandem::cluster::Cluster;

const KEY: &str = "the benches' key";

fn agent(redis: &Redis, name: &str) -> AgentProcess {
    AgentProcess::start_exe(&std::env::current_exe().unwrap(), &["--agent"], &redis.url, name, KEY, 1)
}

fn agents_seen(con: &mut redis::Connection) -> usize {
    redis::cmd("KEYS").arg("tandem:agent:*").query::<Vec<String>>(con).unwrap().len()
}

fn pool(redis: &Redis, lease: Duration) -> Pool {
    Pool::builder()
        .cluster(Cluster::connect(&redis.url).unwrap().key(KEY.as_bytes()).lease(lease).node_losses(3))
        .build()
        .unwrap()
}

fn loopback(c: &mut Criterion) {
    let redis = Redis::start_tcp();
    let mut con = redis::Client::open(redis.url.as_str()).unwrap().get_connection().unwrap();
    let _agents = [agent(&redis, "bench-a"), agent(&redis, "bench-b")];
    assert!(eventually(Duration::from_secs(30), || agents_seen(&mut con) == 2));
    let pool = pool(&redis, Duration::from_secs(10));

    let mut g = c.benchmark_group("cluster_round_trip");
    g.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    g.bench_function("floor/redis_ping", |b| {
        b.iter(|| redis::cmd("PING").query::<String>(&mut con).unwrap())
    });
    g.bench_function("tandem/submit_join", |b| b.iter(|| pool.submit(1u64, |x| x + 1).join().unwrap()));
    g.finish();

    let mut g = c.benchmark_group("cluster_map_1M_trivial");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("floor/redis_list_8MB_in_1000_batches", |b| {
        let batch = vec![7u8; 8000];
        b.iter(|| {
            let mut push = redis::pipe();
            for _ in 0..1000 {
                push.cmd("RPUSH").arg("bench:list").arg(batch.as_slice()).ignore();
            }
            push.query::<()>(&mut con).unwrap();
            let popped: Vec<Vec<u8>> =
                redis::cmd("LPOP").arg("bench:list").arg(1000).query(&mut con).unwrap();
            assert_eq!(popped.len(), 1000);
        })
    });
    g.bench_function("tandem/map_2_agents", |b| {
        b.iter(|| assert_eq!(pool.map(0..1_000_000u64, |x| x + 1).filter(Result::is_ok).count(), 1_000_000))
    });
    g.finish();
}

/// Mark a start in `dir` (file `start-NODE-PID`), then sleep.
fn mark_and_sleep((dir, ms): (String, u64)) -> u64 {
    let node = std::env::var("TANDEM_AGENT_NAME").unwrap_or_default();
    let marker = Path::new(&dir).join(format!("start-{node}-{}", std::process::id()));
    std::fs::write(marker, b"").unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn starts(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()
}

fn agent_death(c: &mut Criterion) {
    let redis = Redis::start();
    let mut con = redis::Client::open(redis.url.as_str()).unwrap().get_connection().unwrap();
    let lease = Duration::from_millis(500);
    let mut agents = [agent(&redis, "death-a"), agent(&redis, "death-b")];
    assert!(eventually(Duration::from_secs(30), || agents_seen(&mut con) == 2));
    let pool = pool(&redis, lease);
    let dir = redis.dir.join("marks");
    let mut g = c.benchmark_group("cluster_agent_death_to_rerun");
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(1)).measurement_time(Duration::from_secs(10));
    g.bench_function("lease_500ms", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let h = pool.submit((dir.display().to_string(), 800), mark_and_sleep);
                assert!(eventually(Duration::from_secs(30), || starts(&dir).len() == 1));
                let first = starts(&dir).remove(0);
                let victim =
                    agents.iter().position(|a| first.starts_with(&format!("start-{}-", a.name))).unwrap();
                agents[victim].signal_group(rustix::process::Signal::KILL);
                let killed = Instant::now();
                assert!(eventually(Duration::from_secs(30), || starts(&dir).len() == 2));
                total += killed.elapsed();
                // A fresh agent in its place for the next round.
                let name = agents[victim].name.clone();
                redis::cmd("DEL")
                    .arg(format!("tandem:agent:{name}"))
                    .arg(format!("tandem:name:{name}"))
                    .query::<()>(&mut con)
                    .unwrap();
                agents[victim] = agent(&redis, &name);
                assert!(eventually(Duration::from_secs(30), || agents_seen(&mut con) == 2));
                h.join().unwrap();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, loopback, agent_death);

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--agent") {
        redis_support::serve_if_agent();
        return;
    }
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
}
