//! A real Redis server for the cluster tests and benches, started and
//! stopped by them (`redis-server`, installed by scripts/setup.sh), and
//! agents: this same test binary re-executed to run one test entry that
//! serves.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of our own, on a unix socket in a fresh directory,
/// with persistence off.
pub struct Redis {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub url: String,
}

impl Redis {
    /// On a unix socket only.
    pub fn start() -> Redis {
        Redis::start_on(None)
    }

    /// Also on TCP loopback (`127.0.0.1`, a free port); `url` is the TCP one.
    pub fn start_tcp() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Redis::start_on(Some(port))
    }

    fn start_on(port: Option<u16>) -> Redis {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("redis-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("r.sock");
        let port_arg = port.map_or("0".to_owned(), |p| p.to_string());
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port_arg,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/setup.sh");
        let url = match port {
            Some(p) => format!("redis://127.0.0.1:{p}/0"),
            None => format!("redis+unix://{}", socket.display()),
        };
        let redis = Redis { child, dir, socket, url };
        redis.wait_ready();
        redis
    }

    /// Until the server accepts a connection (bounded).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start listening on {:?}", self.socket);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL the server now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent process: this test binary re-executed to run test `entry`
/// (an ignored test that serves when `TANDEM_AGENT_URL` is set), in its own
/// process group so the group can be stopped or killed as one machine.
pub struct AgentProcess {
    child: Child,
    pub name: String,
}

impl AgentProcess {
    pub fn start(entry: &str, url: &str, name: &str, key: &str, workers: usize) -> AgentProcess {
        let exe = std::env::current_exe().unwrap();
        AgentProcess::start_exe(
            &exe,
            &[entry, "--exact", "--ignored", "--nocapture", "--test-threads=1"],
            url,
            name,
            key,
            workers,
        )
    }

    pub fn start_exe(
        exe: &std::path::Path,
        args: &[&str],
        url: &str,
        name: &str,
        key: &str,
        workers: usize,
    ) -> AgentProcess {
        let mut command = Command::new(exe);
        command.args(args);
        AgentProcess::spawn(command, url, name, key, workers)
    }

    /// As [`start`](AgentProcess::start), with more environment
    /// (`TANDEM_AGENT_MEMORY_LIMIT`, `TANDEM_AGENT_SANDBOX`: what the agent's
    /// local pool enforces).
    pub fn start_with_env(
        entry: &str,
        url: &str,
        name: &str,
        key: &str,
        workers: usize,
        env: &[(&str, &str)],
    ) -> AgentProcess {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([entry, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied());
        AgentProcess::spawn(command, url, name, key, workers)
    }

    /// As [`start`](AgentProcess::start), inside network namespace `netns`
    /// (`ip netns exec NETNS <this test binary> ENTRY ...`: `ip` execs the
    /// binary, so the child is the agent itself).
    pub fn start_in_netns(
        netns: &str,
        entry: &str,
        url: &str,
        name: &str,
        key: &str,
        workers: usize,
    ) -> AgentProcess {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).arg(std::env::current_exe().unwrap()).args([
            entry,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        AgentProcess::spawn(command, url, name, key, workers)
    }

    fn spawn(mut command: Command, url: &str, name: &str, key: &str, workers: usize) -> AgentProcess {
        let child = command
            .env("TANDEM_AGENT_URL", url)
            .env("TANDEM_AGENT_NAME", name)
            .env("TANDEM_AGENT_KEY", key)
            .env("TANDEM_AGENT_WORKERS", workers.to_string())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        AgentProcess { child, name: name.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` to the agent and its workers (its process group).
    pub fn signal_group(&self, signal: rustix::process::Signal) {
        let group = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(group, signal);
    }

    /// Send `signal` to the agent and every process below it (its workers
    /// are in process groups of their own): the whole "machine".
    pub fn signal_tree(&self, signal: rustix::process::Signal) {
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
                let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
                if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(parent) && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
            i += 1;
        }
        for pid in pids {
            let _ =
                rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), signal);
        }
    }

    /// Whether it has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.signal_group(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

/// Serve as an agent if this process was started as one (see
/// [`AgentProcess`]); the body of the ignored entry test.
pub fn serve_if_agent() {
    let Ok(url) = std::env::var("TANDEM_AGENT_URL") else { return };
    // A test that dies (or is killed) takes its agents with it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).unwrap();
    tandem::init();
    let name = std::env::var("TANDEM_AGENT_NAME").unwrap();
    let key = std::env::var("TANDEM_AGENT_KEY").unwrap();
    let workers: usize = std::env::var("TANDEM_AGENT_WORKERS").unwrap().parse().unwrap();
    // What the local pool enforces, for the tests of limits that apply on the agent.
    let mut local = tandem::Pool::builder();
    if let Some(bytes) = std::env::var("TANDEM_AGENT_MEMORY_LIMIT").ok().and_then(|b| b.parse().ok()) {
        local = local.worker_memory_limit(bytes);
    }
    if std::env::var("TANDEM_AGENT_SANDBOX").is_ok() {
        local = local.sandbox(tandem::sandbox::Sandbox::new());
    }
    tandem::cluster::Agent::connect(&url)
        .unwrap()
        .key(key.as_bytes())
        .name(name)
        .workers(workers)
        .pool(local)
        .serve()
        .unwrap();
}

/// Wait until `done()` holds, at most `limit`; false if it never did.
pub fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
