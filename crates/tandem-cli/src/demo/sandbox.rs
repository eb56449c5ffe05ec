//! The same hostile task, run in a process worker without and with a
//! sandbox: it reads a file it was not given, writes one, connects to a TCP
//! listener on 127.0.0.1, signals the demo process and runs a program.
//! Without a sandbox every attempt works; with one, each is refused with the
//! OS error the task sees, and the demo process is unharmed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem::sandbox::Sandbox;
use tandem::{Mode, Pool};

use super::shows;

/// What the hostile task is told: where to strike.
#[derive(Clone, Serialize, Deserialize)]
struct Targets {
    secret: String,
    write_to: String,
    port: u16,
    demo_pid: i32,
}

/// One attempt and what the OS said.
type Attempt = (String, Result<String, String>);

fn said<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> Result<String, String> {
    r.map(ok).map_err(|e| e.to_string())
}

fn hostile(t: Targets) -> Vec<Attempt> {
    let mut tried = Vec::new();
    tried.push((
        format!("read {}", t.secret),
        said(std::fs::read_to_string(&t.secret), |s| format!("read {} bytes", s.len())),
    ));
    tried.push((
        format!("write {}", t.write_to),
        said(std::fs::write(&t.write_to, "x"), |()| "written".into()),
    ));
    tried.push((
        format!("connect to 127.0.0.1:{}", t.port),
        said(
            std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], t.port).into(), Duration::from_secs(5)),
            |_| "connected".into(),
        ),
    ));
    let pid = rustix::process::Pid::from_raw(t.demo_pid).expect("a pid");
    tried.push((
        format!("signal the demo process (pid {})", t.demo_pid),
        said(rustix::process::test_kill_process(pid).map_err(std::io::Error::from), |()| {
            "allowed to signal it".into()
        }),
    ));
    tried.push((
        "run /bin/sh -c 'exit 3'".into(),
        said(std::process::Command::new("/bin/sh").args(["-c", "exit 3"]).status(), |s| {
            format!("ran it: {s}")
        }),
    ));
    tried
}

pub fn run() -> Result<(), tandem::Error> {
    let dir = std::env::temp_dir().join(format!("tandem-demo-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("allowed")).map_err(tandem::Error::Io)?;
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "not for the task").map_err(tandem::Error::Io)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(tandem::Error::Io)?;
    listener.set_nonblocking(true).map_err(tandem::Error::Io)?;
    let targets = Targets {
        secret: secret.display().to_string(),
        write_to: dir.join("dropped.txt").display().to_string(),
        port: listener.local_addr().map_err(tandem::Error::Io)?.port(),
        demo_pid: std::process::id() as i32,
    };
    let result = (|| -> Result<(), tandem::Error> {
        for sandboxed in [false, true] {
            let mut builder = Pool::builder().mode(Mode::Process).workers(1);
            if sandboxed {
                builder = builder.sandbox(Sandbox::new().allow_write(dir.join("allowed")));
            }
            let pool = builder.build()?;
            if sandboxed {
                out!("\nwith a sandbox (enforced: {}):", pool.sandbox_report().join(", "));
            } else {
                out!("without a sandbox:");
            }
            for (what, outcome) in pool.submit(targets.clone(), hostile).join()? {
                match outcome {
                    Ok(how) => out!("  {what:<44} allowed: {how}"),
                    Err(why) => out!("  {what:<44} refused: {why}"),
                }
            }
            let arrived = listener.accept().is_ok();
            out!("  the listener {}", if arrived { "saw a connection" } else { "saw nothing" });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    out!("\nthe demo process (pid {}) is still here", std::process::id());
    shows(
        "a sandboxed worker is refused files, network, signals and programs it was not given; the same task without one gets them all",
    );
    Ok(())
}
