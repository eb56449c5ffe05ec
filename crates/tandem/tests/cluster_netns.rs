//! Two hosts on one machine (feature `cluster`, root only): two network
//! namespaces joined by a veth pair, Redis in host A, an agent in each, and
//! the driver in host A; then host B's link is cut (and its agent killed,
//! or the link brought back after a partition). The guarantees are those of
//! tests/cluster.rs: every handle resolves exactly once, with the right
//! value, within the lease and a bound.
//!
//! Only addresses inside the two namespaces are used (10.213.N.1 and .2),
//! and the namespaces (with the veth pair, which lives only inside them) are
//! deleted afterwards, on failure too. The test process itself stays in the
//! root namespace, where those addresses cannot be reached: it sets the
//! hosts up and runs the driver as this test binary re-executed inside host
//! A (the ignored `driver_entry`), whose exit status is the verdict.

#[path = "common/redis.rs"]
mod redis_support;

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use redis_support::{AgentProcess, eventually, serve_if_agent};
use rustix::process::Signal;
use tandem::Pool;
use tandem::cluster::Cluster;

const KEY: &str = "the two hosts' shared key";
const LEASE: Duration = Duration::from_millis(1000);
/// How long after the lease a lost node's tasks may take to resolve.
const SLACK: Duration = Duration::from_secs(5);
/// The port of Redis in host A (a fresh namespace: nothing else listens).
const PORT: u16 = 6379;
/// The tasks of each scenario, and how long each one sleeps.
const TASKS: u64 = 8;
const TASK_MS: u64 = 500;
/// How long a partition lasts at least.
const PARTITION: Duration = Duration::from_secs(3);
/// The veth ends' names (per namespace, so fixed).
const VETH_A: &str = "veth-a";
const VETH_B: &str = "veth-b";

/// One pair of hosts at a time: the two scenarios each load both cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Not a test: the body of an agent process (see `AgentProcess`).
#[test]
#[ignore]
fn agent_entry() {
    serve_if_agent();
}

/// Not a test: the driver of a scenario, run inside host A by
/// [`Hosts::drive`]; it fails (exits non-zero) when a guarantee fails.
#[test]
#[ignore]
fn driver_entry() {
    let Ok(scenario) = std::env::var("TDM_NETNS_SCENARIO") else { return };
    // A test that dies takes its driver with it.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).unwrap();
    tandem::init();
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let host_b = HostB { netns: env("TDM_NETNS_B"), agent: env("TDM_NETNS_AGENT_B").parse().unwrap() };
    let (url, dir) = (env("TDM_NETNS_URL"), PathBuf::from(env("TDM_NETNS_DIR")));
    match scenario.as_str() {
        "kill" => host_b_cut_off_and_killed(&url, &dir, &host_b),
        "partition" => host_b_partitioned_then_back(&url, &dir, &host_b),
        other => panic!("no scenario {other:?}"),
    }
}

#[test]
fn two_hosts_one_cut_off_and_killed_loses_only_its_running_tasks() {
    run("kill");
}

#[test]
fn two_hosts_one_partitioned_then_back_resolves_everything_once_and_serves_again() {
    run("partition");
}

/// Set two hosts up, run `scenario`'s driver in host A, take them down and
/// check that nothing of them is left.
fn run(scenario: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    {
        let Some(mut hosts) = Hosts::up() else { return };
        hosts.start_redis();
        hosts.start_agents();
        let status = hosts.drive(scenario, Duration::from_secs(60));
        assert!(status.success(), "the {scenario} scenario's driver failed ({status}): see its panic above");
        match scenario {
            "kill" => assert!(hosts.agents[1].exited(), "host B's agent survived its SIGKILL"),
            _ => assert!(!hosts.agents[1].exited(), "host B's agent died of the partition"),
        }
    }
    let left = our_namespaces();
    assert!(left.is_empty(), "network namespaces left behind: {left:?}");
    eprintln!("two hosts, {scenario}: {:?} in all (setup, scenario, teardown)", started.elapsed());
}

// --- the hosts (in the test process, in the root namespace) ---

/// Two network namespaces joined by a veth pair, and what runs in them.
/// Its drop kills everything started in them and deletes them, so a
/// failing test leaves nothing behind. A test killed outright leaves its
/// namespaces (its processes die with it, by their parent-death signal):
/// the next run deletes them (and its directory).
struct Hosts {
    /// Namespaces made so far (A, then B).
    made: Vec<String>,
    a: String,
    b: String,
    ip_a: String,
    ip_b: String,
    url: String,
    /// Shared by the hosts (the namespaces share the filesystem): Redis's
    /// directory and the tasks' marks.
    dir: PathBuf,
    redis: Option<Child>,
    /// Host A's agent, then host B's.
    agents: Vec<AgentProcess>,
    driver: Option<Child>,
}

impl Hosts {
    /// Make the namespaces and the link; `None` (the test is skipped) when
    /// not root. As root, failing to make them fails the test.
    fn up() -> Option<Hosts> {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "NOTE: cluster_netns skipped: not root (euid {}), and making network namespaces \
                 (`ip netns add`) needs root; CI runs this test as root",
                rustix::process::geteuid().as_raw()
            );
            return None;
        }
        remove_stale_hosts();
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("tdm-netns-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("marks")).unwrap();
        let ip_a = format!("10.213.{}.1", n % 250);
        let mut hosts = Hosts {
            made: Vec::new(),
            a: format!("tdm-a-{pid}-{n}"),
            b: format!("tdm-b-{pid}-{n}"),
            url: format!("redis://{ip_a}:{PORT}/0"),
            ip_a,
            ip_b: format!("10.213.{}.2", n % 250),
            dir,
            redis: None,
            agents: Vec::new(),
            driver: None,
        };
        for ns in [hosts.a.clone(), hosts.b.clone()] {
            if let Err(e) = ip(&["netns", "add", &ns]) {
                panic!("running as root, but `ip netns add {ns}` failed: {e}; this test must run here");
            }
            hosts.made.push(ns);
        }
        let (a, b) = (hosts.a.as_str(), hosts.b.as_str());
        // The pair is made inside A with its peer end straight in B: it is
        // never in the root namespace, and goes with the namespaces.
        let steps: [&[&str]; 7] = [
            &["-n", a, "link", "add", VETH_A, "type", "veth", "peer", "name", VETH_B, "netns", b],
            &["-n", a, "addr", "add", &format!("{}/24", hosts.ip_a), "dev", VETH_A],
            &["-n", b, "addr", "add", &format!("{}/24", hosts.ip_b), "dev", VETH_B],
            &["-n", a, "link", "set", "lo", "up"],
            &["-n", b, "link", "set", "lo", "up"],
            &["-n", a, "link", "set", VETH_A, "up"],
            &["-n", b, "link", "set", VETH_B, "up"],
        ];
        for step in steps {
            ip(step).unwrap_or_else(|e| panic!("setting the hosts up: {e}"));
        }
        Some(hosts)
    }

    /// Redis in host A, on A's address only; wait until it answers from
    /// both hosts (so the link works too).
    fn start_redis(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.a])
            // Dies with the thread that started it if the test is killed (no drop runs then).
            .args(["setpriv", "--pdeathsig", "KILL", "redis-server"])
            .args(["--bind", &self.ip_a, "--port", &PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("ip (iproute2) is not installed");
        let redis = self.redis.insert(child);
        for ns in [self.a.clone(), self.b.clone()] {
            let answers = || {
                if let Some(status) = redis.try_wait().unwrap() {
                    panic!(
                        "redis-server exited ({status}) in {}: is it installed (scripts/setup.sh)?",
                        self.a
                    );
                }
                Command::new("ip")
                    .args(["netns", "exec", &ns, "redis-cli", "-h", &self.ip_a, "-p", &PORT.to_string()])
                    .arg("ping")
                    .stderr(Stdio::null())
                    .output()
                    .is_ok_and(|out| out.stdout.starts_with(b"PONG"))
            };
            assert!(
                eventually(Duration::from_secs(20), answers),
                "Redis at {} never answered from {ns}",
                self.url
            );
        }
    }

    /// An agent in each host (2 workers each), named host-a and host-b.
    fn start_agents(&mut self) {
        for (ns, name) in [(self.a.clone(), "host-a"), (self.b.clone(), "host-b")] {
            self.agents.push(AgentProcess::start_in_netns(&ns, "agent_entry", &self.url, name, KEY, 2));
        }
    }

    /// Run `scenario`'s driver in host A; its exit status. A driver still
    /// running after `limit` (a hang) is killed and fails the test.
    fn drive(&mut self, scenario: &str, limit: Duration) -> std::process::ExitStatus {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.a])
            .arg(std::env::current_exe().unwrap())
            .args(["driver_entry", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("TDM_NETNS_SCENARIO", scenario)
            .env("TDM_NETNS_URL", &self.url)
            .env("TDM_NETNS_DIR", self.dir.join("marks"))
            .env("TDM_NETNS_B", &self.b)
            .env("TDM_NETNS_AGENT_B", self.agents[1].pid().to_string())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let driver = self.driver.insert(child);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = driver.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the {scenario} scenario's driver hung for {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            kill_group(driver.id());
            let _ = driver.wait();
        }
        self.agents.clear(); // each kills its process group and reaps the agent
        if let Some(mut redis) = self.redis.take() {
            kill_group(redis.id());
            let _ = redis.wait();
        }
        // Deleting a namespace deletes its end of the veth pair, and with
        // it the pair.
        for ns in self.made.drain(..) {
            if let Err(e) = ip(&["netns", "delete", &ns]) {
                eprintln!("deleting network namespace {ns}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill_group(pid: u32) {
    if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

/// Run `ip ARGS`; its stderr if it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The names of the network namespaces there are.
fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip is not installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// This process's namespaces (`tdm-a-PID-N`, `tdm-b-PID-N`).
fn our_namespaces() -> Vec<String> {
    let pid = std::process::id();
    namespaces().into_iter().filter(|ns| ns_owner(ns) == Some(pid)).collect()
}

/// The test process that made namespace `ns`, if it is one of ours.
fn ns_owner(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix("tdm-a-").or_else(|| ns.strip_prefix("tdm-b-"))?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Delete the namespaces and directories of an earlier run of this test
/// whose process is gone (killed before its drops ran).
fn remove_stale_hosts() {
    let dead = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
    for ns in namespaces() {
        if ns_owner(&ns).is_some_and(dead) {
            let _ = ip(&["netns", "delete", &ns]);
        }
    }
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.strip_prefix("tdm-netns-").and_then(|rest| rest.split_once('-')?.0.parse().ok());
        if owner.is_some_and(dead) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

// --- the driver (a process inside host A) ---

/// What the driver may do to host B.
struct HostB {
    netns: String,
    /// Its agent's pid, which is also its process group.
    agent: u32,
}

impl HostB {
    /// Cut (`up == false`) or restore host B's link.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["netns", "exec", &self.netns, "ip", "link", "set", VETH_B, state])
            .unwrap_or_else(|e| panic!("setting host B's link {state}: {e}"));
    }

    fn kill_agent(&self) {
        kill_group(self.agent);
    }
}

/// The pool's end on a failed check: a cluster pool's drop waits for its
/// running tasks, which a broken cluster may never answer.
struct TerminateOnPanic<'a>(&'a Pool);

impl Drop for TerminateOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.terminate();
        }
    }
}

fn connect(url: &str) -> Pool {
    // Both agents first, so the pool counts their workers.
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut agents = || redis::cmd("KEYS").arg("tandem:agent:*").query::<Vec<String>>(&mut con).unwrap();
    assert!(eventually(Duration::from_secs(20), || agents().len() == 2), "agents registered: {:?}", agents());
    Pool::builder()
        .cluster(Cluster::connect(url).unwrap().key(KEY.as_bytes()).lease(LEASE).node_losses(3))
        .build()
        .unwrap()
}

fn node() -> String {
    std::env::var("TANDEM_AGENT_NAME").unwrap_or_else(|_| "driver".into())
}

/// Mark its start (file `start-I-NODE` holding the worker's pid), sleep,
/// mark its end; `i * 10` and the node it ran on.
fn mark_and_sleep((dir, i, ms): (String, u64, u64)) -> (u64, String) {
    let dir = Path::new(&dir);
    std::fs::write(dir.join(format!("start-{i}-{}", node())), std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(dir.join(format!("end-{i}-{}", node())), b"").unwrap();
    (i * 10, node())
}

fn marked(dir: &Path, mark: &str) -> bool {
    dir.join(mark).exists()
}

/// The tasks started on `node` (their numbers).
fn started_on(dir: &Path, node: &str) -> Vec<u64> {
    let suffix = format!("-{node}");
    let mut tasks: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("start-")?.strip_suffix(&suffix)?.parse().ok())
        .collect();
    tasks.sort_unstable();
    tasks
}

/// The tasks started on `node` that have not finished there.
fn unfinished_on(dir: &Path, node: &str) -> Vec<u64> {
    started_on(dir, node).into_iter().filter(|i| !marked(dir, &format!("end-{i}-{node}"))).collect()
}

/// Submit every task, then wait until one has started on host B (the
/// moment each scenario strikes).
fn submit_until_host_b_runs_one(pool: &Pool, dir: &Path) -> Vec<tandem::TaskHandle<(u64, String)>> {
    let handles =
        (0..TASKS).map(|i| pool.submit((dir.display().to_string(), i, TASK_MS), mark_and_sleep)).collect();
    assert!(
        eventually(Duration::from_secs(20), || !started_on(dir, "host-b").is_empty()),
        "no task started on host B"
    );
    handles
}

/// Join every handle by `deadline` (a hang fails the test); the node each
/// one's answer came from, checking its value.
fn resolve_all(handles: Vec<tandem::TaskHandle<(u64, String)>>, deadline: Instant) -> Vec<String> {
    let mut nodes = Vec::new();
    for (i, h) in (0u64..).zip(handles) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(h.wait_timeout(left), "task {i} did not resolve in time");
        let (value, node) = h.join().unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(value, i * 10, "task {i}'s value");
        nodes.push(node);
    }
    nodes
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Host B's link is cut and its agent SIGKILLed (with its workers) while
/// it runs tasks: they run again on host A; every handle resolves once,
/// right, within the lease and a bound.
fn host_b_cut_off_and_killed(url: &str, dir: &Path, host_b: &HostB) {
    let pool = connect(url);
    let _terminate = TerminateOnPanic(&pool);
    let handles = submit_until_host_b_runs_one(&pool, dir);
    host_b.link(false);
    host_b.kill_agent();
    let killed = Instant::now();
    // The whole host is gone: its workers too (the marks hold their pids).
    let workers: Vec<u32> = started_on(dir, "host-b")
        .iter()
        .map(|i| std::fs::read_to_string(dir.join(format!("start-{i}-host-b"))).unwrap().parse().unwrap())
        .collect();
    assert!(eventually(SLACK, || workers.iter().all(|&w| gone(w))), "host B's workers {workers:?} live on");
    let lost = unfinished_on(dir, "host-b");
    assert!(!lost.is_empty(), "host B was killed with no task running");
    let nodes = resolve_all(handles, killed + LEASE + SLACK);
    let took = killed.elapsed();
    eprintln!("kill: {lost:?} lost on host B; every handle resolved {took:?} after the kill");
    for &i in &lost {
        assert_eq!(nodes[i as usize], "host-a", "task {i} was lost with host B; answered by");
        assert!(marked(dir, &format!("end-{i}-host-a")), "task {i} (lost with host B) never ran on host A");
    }
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed, stats.failed), (TASKS, TASKS, 0), "each once: {stats:?}");
    assert!(gone(host_b.agent), "host B's agent survived its SIGKILL");
}

/// Host B's link is cut for a while, its agent alive: its tasks run again
/// on host A and resolve without it; once back, its late answers are
/// dropped and it serves again.
fn host_b_partitioned_then_back(url: &str, dir: &Path, host_b: &HostB) {
    let pool = connect(url);
    let _terminate = TerminateOnPanic(&pool);
    let handles = submit_until_host_b_runs_one(&pool, dir);
    host_b.link(false);
    let cut = Instant::now();
    // Not finished when the link went: their answers cannot have left.
    let cut_off = unfinished_on(dir, "host-b");
    assert!(!cut_off.is_empty(), "host B was cut off with no task running");
    // Every handle resolves while host B is still cut off.
    let nodes = resolve_all(handles, cut + LEASE + SLACK);
    let took = cut.elapsed();
    eprintln!("partition: {cut_off:?} cut off on host B; every handle resolved {took:?} after the cut");
    for &i in &cut_off {
        assert_eq!(nodes[i as usize], "host-a", "task {i} was cut off on host B; answered by");
        assert!(marked(dir, &format!("end-{i}-host-a")), "task {i} (cut off on host B) never ran on host A");
    }
    // The partition is the scenario: it lasts its time, then heals.
    std::thread::sleep(PARTITION.saturating_sub(cut.elapsed()));
    host_b.link(true);
    let healed = Instant::now();
    // Host B wakes to leases it lost: its late answers are dropped.
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.completed, stats.failed), (TASKS, TASKS, 0), "each once: {stats:?}");
    // And it serves again.
    let mut nodes = HashSet::new();
    let serving = eventually(Duration::from_secs(20), || {
        let ran: Vec<String> = pool
            .map(0..40u64, |_| {
                std::thread::sleep(Duration::from_millis(20));
                node()
            })
            .batch_size(2)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(ran.len(), 40);
        nodes.extend(ran);
        nodes.contains("host-b")
    });
    assert!(serving, "host B never served again after the partition: only {nodes:?}");
    eprintln!("partition: host B served again {:?} after the link came back", healed.elapsed());
    let stats = pool.stats();
    assert_eq!((stats.submitted, stats.failed), (stats.completed, 0), "{stats:?}");
}
