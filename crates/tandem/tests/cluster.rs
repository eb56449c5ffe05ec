//! Many machines on one (feature `cluster`): a real Redis server per test
//! and agents that are this test binary re-executed, killed, stopped and
//! refused for real.

#[path = "common/redis.rs"]
mod redis_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis_support::{AgentProcess, Redis, eventually, serve_if_agent};
use rustix::process::Signal;
use tandem::cluster::Cluster;
use tandem::{Error, Pool};

const KEY: &str = "the tests' shared key";

/// Not a test: the body of an agent process (see `AgentProcess`).
#[test]
#[ignore]
fn agent_entry() {
    serve_if_agent();
}

/// Not a test: a driver process that submits two long tasks and waits on
/// them, to be killed (see `a_dead_drivers_tasks_are_dropped_by_its_agents`).
#[test]
#[ignore]
fn driver_entry() {
    let Ok(url) = std::env::var("TANDEM_DRIVER_URL") else { return };
    tandem::init();
    let dir = std::env::var("TANDEM_DRIVER_DIR").unwrap();
    let pool = driver(&url, KEY, Duration::from_secs(1));
    let handles: Vec<_> = (0..2u64).map(|i| pool.submit((dir.clone(), i, 60_000), mark_and_sleep)).collect();
    for h in handles {
        let _ = h.join();
    }
}

fn driver(url: &str, key: &str, lease: Duration) -> Pool {
    tandem::init();
    Pool::builder()
        .cluster(Cluster::connect(url).unwrap().key(key.as_bytes()).lease(lease).node_losses(3))
        .build()
        .unwrap()
}

/// Join `h`, failing the test if it takes longer than `limit` (a hang).
fn within<R>(h: tandem::TaskHandle<R>, limit: Duration) -> Result<R, Error> {
    assert!(h.wait_timeout(limit), "a handle did not resolve within {limit:?}");
    h.join()
}

const BOUND: Duration = Duration::from_secs(20);

fn agents_seen(url: &str) -> usize {
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let names: Vec<String> = redis::cmd("KEYS").arg("tandem:agent:*").query(&mut con).unwrap();
    names.len()
}

/// Start agents `names` (each with `workers`) and wait until all have
/// registered with the broker.
fn agents(redis: &Redis, names: &[&str], workers: usize) -> Vec<AgentProcess> {
    let started: Vec<_> =
        names.iter().map(|n| AgentProcess::start("agent_entry", &redis.url, n, KEY, workers)).collect();
    assert!(
        eventually(Duration::from_secs(30), || agents_seen(&redis.url) >= names.len()),
        "agents never registered"
    );
    started
}

fn node() -> String {
    std::env::var("TANDEM_AGENT_NAME").unwrap_or_else(|_| "driver".into())
}

fn where_am_i(x: u64) -> (u64, String) {
    (x * 2, node())
}

/// Mark its start (file `start-I-NODE` holding the worker's pid), sleep,
/// mark its end; `i * 10`.
fn mark_and_sleep((dir, i, ms): (String, u64, u64)) -> u64 {
    let dir = Path::new(&dir);
    std::fs::write(dir.join(format!("start-{i}-{}", node())), std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(dir.join(format!("end-{i}-{}", node())), b"").unwrap();
    i * 10
}

fn markers(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn scratch(redis: &Redis) -> PathBuf {
    let dir = redis.dir.join("marks");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tasks_maps_and_awaits_come_back_from_two_agents() {
    let redis = Redis::start();
    let _agents = agents(&redis, &["node-a", "node-b"], 2);
    let pool = driver(&redis.url, KEY, Duration::from_secs(5));
    assert!(pool.workers() >= 4, "the pool counts the agents' workers: {}", pool.workers());
    let handles: Vec<_> = (0..40u64).map(|i| pool.submit(i, where_am_i)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (value, node) = within(h, BOUND).unwrap();
        assert_eq!(value, 2 * i as u64);
        assert!(node.starts_with("node-"), "ran on {node}");
    }
    let squares: Vec<u64> = pool.map(0..20_000u64, |x| x * x).map(Result::unwrap).collect();
    assert_eq!(squares.len(), 20_000);
    assert!(squares.iter().enumerate().all(|(i, &s)| s == (i * i) as u64));
    // Slow items in small batches spread over both agents.
    let nodes: HashSet<String> = pool
        .map(0..200u64, |_| {
            std::thread::sleep(Duration::from_millis(3));
            node()
        })
        .batch_size(4)
        .map(Result::unwrap)
        .collect();
    assert_eq!(nodes, HashSet::from(["node-a".to_owned(), "node-b".to_owned()]));
    let mut seen: Vec<usize> = pool
        .map_unordered(0..1000u64, |x| x + 1)
        .map(|(i, r)| {
            assert_eq!(r.unwrap(), i as u64 + 1);
            i
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    assert_eq!(futures::executor::block_on(pool.submit(20u64, |x| x + 1)).unwrap(), 21);
    let big = pool.submit(vec![7u8; 1 << 20], |v| v.into_iter().map(u64::from).sum::<u64>()).join().unwrap();
    assert_eq!(big, 7 << 20, "a 1 MiB argument crosses as bytes");
    let echoed = pool.submit(3u32, |n| vec![n as u8; 2 << 20]).join().unwrap();
    assert_eq!(echoed.len(), 2 << 20, "a 2 MiB result (a memfd on the agent) crosses as bytes");
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.completed + stats.failed, "{stats:?}");
}

#[test]
fn a_crashing_task_fails_alone_naming_its_node_and_runs_again_only_with_retries() {
    let redis = Redis::start();
    let _agents = agents(&redis, &["node-a"], 1);
    let dir = scratch(&redis);
    let tries = |dir: &Path| markers(dir, "start-").len();
    let pool = driver(&redis.url, KEY, Duration::from_secs(5));
    let crash = pool.submit(dir.display().to_string(), |dir| -> u8 {
        let _ = mark_and_sleep((dir, 0, 0));
        std::process::abort()
    });
    let err = within(crash, BOUND).unwrap_err();
    match &err {
        Error::WorkerDied { node: Some(node), signal: Some(6), task: Some(_), .. } => {
            assert_eq!(&**node, "node-a")
        }
        other => panic!("not a death on node-a: {other:?}"),
    }
    assert!(err.to_string().contains("on node node-a"), "{err}");
    assert_eq!(tries(&dir), 1, "a crash is not re-run without retries");
    assert_eq!(within(pool.submit(2u8, |x| x * 2), BOUND).unwrap(), 4, "the pool goes on");
    let map: Vec<Result<u64, Error>> =
        pool.map(0..50u64, |x| if x == 7 { std::process::abort() } else { x }).collect();
    assert!(matches!(map[7], Err(Error::WorkerDied { item: Some(7), node: Some(_), .. })), "{:?}", map[7]);
    assert_eq!(map.iter().filter(|r| r.is_ok()).count(), 49, "only the crashing item failed");
    drop(pool);

    let retrying = Pool::builder()
        .cluster(Cluster::connect(&redis.url).unwrap().key(KEY.as_bytes()))
        .retries(2)
        .build()
        .unwrap();
    let dir2 = redis.dir.join("retries");
    std::fs::create_dir_all(&dir2).unwrap();
    let crash = retrying.submit(dir2.display().to_string(), |dir| -> u8 {
        std::fs::write(Path::new(&dir).join(format!("start-{}", std::process::id())), b"").unwrap();
        std::process::abort()
    });
    let err = within(crash, BOUND).unwrap_err();
    assert!(matches!(err, Error::WorkerDied { .. }));
    assert_eq!(tries(&dir2), 3, "retries(2): three runs");
    let crash = retrying.submit((), |()| -> u8 { std::process::abort() });
    assert!(crash.wait_timeout(BOUND));
    assert_eq!(crash.join_report().attempts, 3, "join_report counts every run on the cluster");
    let report = retrying.submit(1u8, |x| x + 1).join_report();
    assert_eq!((report.result.unwrap(), report.attempts, report.worker), (2, 1, None));
}

#[test]
fn an_agent_sigkilled_mid_task_loses_only_its_running_tasks() {
    let redis = Redis::start();
    let mut agents = agents(&redis, &["node-a", "node-b"], 2);
    let dir = scratch(&redis);
    let lease = Duration::from_millis(1000);
    let pool = driver(&redis.url, KEY, lease);
    let handles: Vec<_> =
        (0..8u64).map(|i| pool.submit((dir.display().to_string(), i, 400), mark_and_sleep)).collect();
    assert!(eventually(Duration::from_secs(30), || markers(&dir, "start-")
        .iter()
        .any(|m| m.ends_with("node-a"))));
    agents[0].signal_group(Signal::KILL);
    let killed = Instant::now();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within(h, BOUND).unwrap(), i as u64 * 10, "task {i}");
    }
    let took = killed.elapsed();
    assert!(took < lease + Duration::from_secs(5), "the lost tasks took {took:?} after the kill");
    for i in 0..8 {
        assert!(!markers(&dir, &format!("end-{i}-")).is_empty(), "task {i} never finished anywhere");
    }
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed, stats.failed), (8, 8, 0), "each resolved once: {stats:?}");
    assert!(agents[0].exited());
}

#[test]
fn an_agent_stopped_past_its_lease_then_resumed_resolves_nothing_twice() {
    let redis = Redis::start();
    let agents = agents(&redis, &["node-a", "node-b"], 1);
    let dir = scratch(&redis);
    let lease = Duration::from_millis(800);
    let pool = driver(&redis.url, KEY, lease);
    let handles: Vec<_> =
        (0..4u64).map(|i| pool.submit((dir.display().to_string(), i, 1500), mark_and_sleep)).collect();
    assert!(eventually(Duration::from_secs(30), || markers(&dir, "start-")
        .iter()
        .any(|m| m.ends_with("node-a"))));
    agents[0].signal_tree(Signal::STOP);
    let on_a: Vec<String> = markers(&dir, "start-").into_iter().filter(|m| m.ends_with("node-a")).collect();
    // The stopped node's tasks run again on node-b and resolve from there.
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within(h, BOUND).unwrap(), i as u64 * 10, "task {i}");
    }
    for m in &on_a {
        let i = m.trim_start_matches("start-").trim_end_matches("-node-a");
        assert!(
            !markers(&dir, &format!("end-{i}-node-b")).is_empty(),
            "task {i} (stopped on node-a) never ran on node-b"
        );
    }
    agents[0].signal_tree(Signal::CONT);
    // Node-a wakes, finds its leases gone, and its late answers (if any)
    // are dropped: nothing resolves twice, and it serves again.
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed, stats.failed), (4, 4, 0), "{stats:?}");
    let nodes: HashSet<String> = pool
        .map(0..100u64, |_| {
            std::thread::sleep(Duration::from_millis(5));
            node()
        })
        .batch_size(2)
        .map(Result::unwrap)
        .collect();
    assert!(nodes.contains("node-a"), "the resumed agent serves again: {nodes:?}");
    let stats = pool.stats();
    assert_eq!(stats.submitted, stats.completed + stats.failed, "{stats:?}");
}

#[test]
fn a_wrong_key_and_another_build_are_refused_with_clear_errors() {
    let redis = Redis::start();
    let _other_key = AgentProcess::start("agent_entry", &redis.url, "keyed-otherwise", "not the key", 1);
    assert!(eventually(Duration::from_secs(30), || agents_seen(&redis.url) == 1));
    let pool = driver(&redis.url, KEY, Duration::from_secs(5));
    let err = within(pool.submit(1u8, |x| x), BOUND).unwrap_err();
    match &err {
        Error::Refused { node, reason } => {
            assert_eq!(node, "keyed-otherwise");
            assert!(reason.contains("key"), "{reason}");
        }
        other => panic!("not refused: {other:?}"),
    }
    assert!(err.to_string().contains("same key"), "{err}");
    drop(pool);
    drop(_other_key);

    // The example program is another build of "the program".
    let example =
        std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples/cluster");
    assert!(example.exists(), "{} is missing: cargo test builds the examples", example.display());
    let redis = Redis::start();
    let _other_build = AgentProcess::start_exe(&example, &["serve"], &redis.url, "other-build", KEY, 1);
    assert!(eventually(Duration::from_secs(30), || agents_seen(&redis.url) == 1));
    let pool = driver(&redis.url, KEY, Duration::from_secs(5));
    let err = within(pool.submit(1u8, |x| x), BOUND).unwrap_err();
    match &err {
        Error::Refused { node, reason } => {
            assert_eq!(node, "other-build");
            assert!(reason.contains("different build"), "{reason}");
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_broker_killed_mid_run_resolves_every_handle_within_the_lease() {
    let mut redis = Redis::start();
    let _agents = agents(&redis, &["node-a"], 2);
    let dir = scratch(&redis);
    let lease = Duration::from_millis(1000);
    let pool = driver(&redis.url, KEY, lease);
    let handles: Vec<_> =
        (0..6u64).map(|i| pool.submit((dir.display().to_string(), i, 30_000), mark_and_sleep)).collect();
    assert!(eventually(Duration::from_secs(30), || !markers(&dir, "start-").is_empty()));
    redis.kill();
    let killed = Instant::now();
    for h in handles {
        assert!(matches!(within(h, BOUND), Err(Error::Io(_))));
    }
    let took = killed.elapsed();
    assert!(took < lease + Duration::from_secs(5), "the handles took {took:?} to resolve");
    let late = within(pool.submit(1u8, |x| x), BOUND);
    assert!(matches!(late, Err(Error::Io(_))), "{late:?}");
    assert!(killed.elapsed() < lease + Duration::from_secs(8));
}

#[test]
fn a_dead_drivers_tasks_are_dropped_by_its_agents() {
    let redis = Redis::start();
    let _agents = agents(&redis, &["node-a"], 2);
    let dir = scratch(&redis);
    let exe = std::env::current_exe().unwrap();
    let mut driver = std::process::Command::new(exe)
        .args(["driver_entry", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("TANDEM_DRIVER_URL", &redis.url)
        .env("TANDEM_DRIVER_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(30), || markers(&dir, "start-").len() == 2));
    let pids: Vec<u32> = markers(&dir, "start-")
        .iter()
        .map(|m| std::fs::read_to_string(dir.join(m)).unwrap().parse().unwrap())
        .collect();
    driver.kill().unwrap();
    driver.wait().unwrap();
    // Within its heartbeat's life (the lease) and a renewal, the agent
    // cancels the dead driver's tasks: their workers are killed.
    let gone = |pid: &u32| {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    };
    assert!(
        eventually(Duration::from_secs(6), || pids.iter().all(gone)),
        "the workers of a dead driver's tasks still run: {pids:?}"
    );
    assert!(markers(&dir, "end-").is_empty());
}

#[test]
fn cancel_and_time_limits_stop_work_on_the_agent() {
    let redis = Redis::start();
    let _agents = agents(&redis, &["node-a"], 2);
    let dir = scratch(&redis);
    let pool = driver(&redis.url, KEY, Duration::from_millis(600));
    let running = pool.submit((dir.display().to_string(), 0, 60_000), mark_and_sleep);
    assert!(eventually(BOUND, || markers(&dir, "start-0-").len() == 1));
    let pid: u32 = std::fs::read_to_string(dir.join(&markers(&dir, "start-0-")[0])).unwrap().parse().unwrap();
    assert!(running.cancel());
    assert!(matches!(within(running, BOUND), Err(Error::Cancelled)));
    // The agent finds the entry withdrawn at its next renewal and kills the
    // local worker.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.contains(") Z ") || s.contains(") X "))
    };
    assert!(eventually(Duration::from_secs(5), gone), "the cancelled task's worker {pid} still runs");
    drop(pool);

    let timed = Pool::builder()
        .cluster(Cluster::connect(&redis.url).unwrap().key(KEY.as_bytes()))
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let endless = timed.submit((), |()| -> u8 {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    assert!(matches!(within(endless, BOUND), Err(Error::TimedOut)));
    let items: Vec<Result<u64, Error>> = timed
        .map(0..20u64, |x| {
            if x == 5 {
                std::thread::sleep(Duration::from_secs(60));
            }
            x
        })
        .collect();
    assert!(matches!(items[5], Err(Error::TimedOut)), "{:?}", items[5]);
    assert_eq!(items.iter().filter(|r| r.is_ok()).count(), 19, "the endless item times out alone");
}

#[test]
fn with_no_agent_alive_for_a_lease_every_handle_resolves_and_the_pool_drops() {
    let redis = Redis::start();
    let lease = Duration::from_millis(500);
    let pool = driver(&redis.url, KEY, lease);
    let started = Instant::now();
    let handles: Vec<_> = (0..3u8).map(|i| pool.submit(i, |x| x)).collect();
    for h in handles {
        match within(h, BOUND) {
            Err(Error::Io(e)) => assert!(e.to_string().contains("no agent"), "{e}"),
            other => panic!("not failed for want of agents: {other:?}"),
        }
    }
    assert!(started.elapsed() < lease + Duration::from_secs(3), "took {:?}", started.elapsed());
    drop(pool);
    assert!(started.elapsed() < lease + Duration::from_secs(5), "the pool's drop waited");
}

#[test]
fn a_driver_clears_pending_entries_nobody_waits_for_any_more() {
    let redis = Redis::start();
    // An entry of a driver that is gone, taken by an agent that died: pending
    // for a consumer nobody is, forever, unless someone clears it.
    let mut con = redis::Client::open(redis.url.as_str()).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("tandem:tasks")
        .arg("agents")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut con)
        .unwrap();
    let mut ghost = vec![0u8; 200];
    ghost[33..49].copy_from_slice(&0xdead_u128.to_le_bytes());
    let _: String =
        redis::cmd("XADD").arg("tandem:tasks").arg("*").arg("t").arg(ghost).query(&mut con).unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("agents")
        .arg("ghost-agent")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("tandem:tasks")
        .arg(">")
        .query(&mut con)
        .unwrap();
    let pending = |con: &mut redis::Connection| {
        let summary: redis::Value =
            redis::cmd("XPENDING").arg("tandem:tasks").arg("agents").query(con).unwrap();
        match summary {
            redis::Value::Array(parts) => matches!(parts.first(), Some(redis::Value::Int(n)) if *n > 0),
            _ => true,
        }
    };
    assert!(pending(&mut con));
    let _agents = agents(&redis, &["node-a"], 1);
    let pool = driver(&redis.url, KEY, Duration::from_millis(300));
    assert!(eventually(Duration::from_secs(10), || !pending(&mut con)), "the ghost entry is still pending");
    assert_eq!(within(pool.submit(5u8, |x| x + 1), BOUND).unwrap(), 6);
}

#[test]
fn a_task_whose_node_is_lost_more_often_than_node_losses_allows_fails_node_lost() {
    let redis = Redis::start();
    let agents = agents(&redis, &["node-a"], 2);
    let dir = scratch(&redis);
    let lease = Duration::from_millis(500);
    let pool = Pool::builder()
        .cluster(Cluster::connect(&redis.url).unwrap().key(KEY.as_bytes()).lease(lease).node_losses(0))
        .build()
        .unwrap();
    let handles: Vec<_> =
        (0..2u64).map(|i| pool.submit((dir.display().to_string(), i, 30_000), mark_and_sleep)).collect();
    assert!(eventually(BOUND, || markers(&dir, "start-").len() == 2), "both tasks started");
    // A second agent, for the re-run that node_losses(0) must not make.
    let _b = AgentProcess::start("agent_entry", &redis.url, "node-b", KEY, 2);
    assert!(eventually(BOUND, || agents_seen(&redis.url) == 2));
    agents[0].signal_group(Signal::KILL);
    let killed = Instant::now();
    for h in handles {
        match within(h, BOUND) {
            Err(Error::NodeLost { node }) => assert_eq!(node, "node-a"),
            other => panic!("not NodeLost: {other:?}"),
        }
    }
    assert!(killed.elapsed() < lease + Duration::from_secs(3), "took {:?}", killed.elapsed());
    assert_eq!(markers(&dir, "start-").len(), 2, "node_losses(0): never run again");
    assert!(Error::NodeLost { node: "node-a".into() }.to_string().contains("node_losses"));
}

#[test]
fn the_agents_memory_limit_and_sandbox_apply_to_cluster_tasks() {
    let redis = Redis::start();
    let limit = (256u64 << 20).to_string();
    let _limited = AgentProcess::start_with_env(
        "agent_entry",
        &redis.url,
        "limited",
        KEY,
        1,
        &[("TANDEM_AGENT_MEMORY_LIMIT", &limit), ("TANDEM_AGENT_SANDBOX", "1")],
    );
    assert!(eventually(BOUND, || agents_seen(&redis.url) == 1));
    let pool = driver(&redis.url, KEY, Duration::from_secs(5));
    let err =
        within(pool.submit(1usize << 30, |n| vec![1u8; n].iter().map(|&b| b as usize).sum::<usize>()), BOUND)
            .unwrap_err();
    match &err {
        Error::WorkerDied { memory_limit: Some(l), memory_limit_by: Some(_), node: Some(node), .. } => {
            assert_eq!((*l, &**node), (256 << 20, "limited"));
        }
        other => panic!("not killed for the agent's memory limit: {other:?}"),
    }
    let read = within(
        pool.submit((), |()| std::fs::read("/etc/hostname").map(|b| b.len()).map_err(|e| e.raw_os_error())),
        BOUND,
    )
    .unwrap();
    assert!(read.is_err(), "the agent's sandbox let a task read /etc/hostname");
    assert_eq!(within(pool.submit(4u8, |x| x * 2), BOUND).unwrap(), 8, "the agent goes on");
}

#[test]
fn a_second_agent_of_the_same_name_is_refused_with_a_clear_error() {
    let redis = Redis::start();
    let _first = agents(&redis, &["twin"], 1);
    tandem::init();
    let second =
        tandem::cluster::Agent::connect(&redis.url).unwrap().key(KEY.as_bytes()).name("twin").serve();
    match second {
        Err(Error::Io(e)) => assert!(e.to_string().contains("already serving"), "{e}"),
        other => panic!("a second agent named twin served: {other:?}"),
    }
}

#[test]
fn maps_and_tasks_come_back_right_and_once_while_agents_keep_being_killed() {
    let redis = Redis::start();
    let mut agents = agents(&redis, &["chaos-0", "chaos-1", "chaos-2"], 2);
    let pool = Pool::builder()
        .cluster(
            Cluster::connect(&redis.url)
                .unwrap()
                .key(KEY.as_bytes())
                .lease(Duration::from_millis(400))
                .node_losses(20),
        )
        .build()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (stop, url) = (stop.clone(), redis.url.clone());
        std::thread::spawn(move || {
            let mut kills = 0u32;
            let mut next = 3;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && kills < 8 {
                std::thread::sleep(Duration::from_millis(250));
                // Kill one agent (and its workers) and start another in its place.
                let victim = kills as usize % agents.len();
                agents[victim].signal_group(Signal::KILL);
                agents[victim] = AgentProcess::start("agent_entry", &url, &format!("chaos-{next}"), KEY, 2);
                next += 1;
                kills += 1;
            }
            (kills, agents)
        })
    };
    let handles: Vec<_> = (0..40u64)
        .map(|i| {
            pool.submit(i, |x| {
                std::thread::sleep(Duration::from_millis(20));
                x * 7
            })
        })
        .collect();
    let mapped: Vec<Result<u64, Error>> = pool
        .map(0..400u64, |x| {
            std::thread::sleep(Duration::from_millis(5));
            x * 3
        })
        .batch_size(5)
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within(h, Duration::from_secs(60)).unwrap(), i as u64 * 7, "task {i}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (kills, _agents) = killer.join().unwrap();
    assert!(kills >= 3, "only {kills} agents were killed while the work ran");
    for (i, r) in mapped.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap(), &(i as u64 * 3), "item {i}");
    }
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed, stats.failed), (440, 440, 0), "each once: {stats:?}");
}
