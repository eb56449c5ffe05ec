//! A complete cluster program: the same binary is the driver and, on every
//! machine, an agent (see the README, "Many machines").
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no        # on the broker machine
//! TANDEM_KEY=... cluster agent redis://10.0.0.5:6379/0      # on each machine
//! TANDEM_KEY=... cluster driver redis://10.0.0.5:6379/0     # anywhere
//! ```
//!
//! The key comes from `TANDEM_KEY` (the same on every machine). The agent's
//! name is the host name unless `TANDEM_AGENT_NAME` says otherwise.

use std::time::{Duration, Instant};

use tandem::cluster::{Agent, Cluster};
use tandem::{Error, Pool};

/// The work: is `n` prime (by trial division, on purpose slow).
fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn main() -> Result<(), Error> {
    tandem::init();
    let args: Vec<String> = std::env::args().collect();
    let role = args.get(1).map(String::as_str).unwrap_or("");
    let url = args.get(2).cloned().or_else(|| std::env::var("TANDEM_AGENT_URL").ok());
    let key = std::env::var("TANDEM_KEY").or_else(|_| std::env::var("TANDEM_AGENT_KEY")).unwrap_or_default();
    let (Some(url), false) = (url, key.is_empty()) else {
        eprintln!("usage: TANDEM_KEY=secret cluster agent|driver redis://HOST:PORT/DB");
        std::process::exit(2);
    };
    match role {
        "agent" => {
            let mut agent = Agent::connect(&url)?.key(key.as_bytes());
            if let Ok(name) = std::env::var("TANDEM_AGENT_NAME") {
                agent = agent.name(name);
            }
            if let Some(n) = std::env::var("TANDEM_AGENT_WORKERS").ok().and_then(|n| n.parse().ok()) {
                agent = agent.workers(n);
            }
            agent.serve()
        }
        "driver" => {
            let pool = Pool::builder()
                .cluster(
                    Cluster::connect(&url)?.key(key.as_bytes()).lease(Duration::from_secs(10)).node_losses(3),
                )
                .task_timeout(Duration::from_secs(60))
                .build()?;
            let start = Instant::now();
            let primes =
                pool.map(1_000_000_000u64..1_000_010_000, is_prime).filter(|r| matches!(r, Ok(true))).count();
            println!(
                "{primes} primes among 10,000 numbers above 10^9, in {:?} on the cluster",
                start.elapsed()
            );
            // One crashing task fails alone and names its node.
            let crashed = pool.submit((), |()| -> u8 { std::process::abort() }).join();
            println!("a crashing task: {}", crashed.unwrap_err());
            Ok(())
        }
        // Run by the tests as an agent of another build: serve on the
        // broker's name, whatever role was asked (see tests/cluster.rs).
        _ if std::env::var("TANDEM_AGENT_URL").is_ok() => Agent::connect(&url)?
            .key(key.as_bytes())
            .name(std::env::var("TANDEM_AGENT_NAME").unwrap_or_else(|_| "other-build".into()))
            .workers(1)
            .serve(),
        _ => {
            eprintln!("usage: TANDEM_KEY=secret cluster agent|driver redis://HOST:PORT/DB");
            std::process::exit(2);
        }
    }
}
