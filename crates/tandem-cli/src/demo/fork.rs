//! The os.fork() demo: a parent and a child process, each saying who it is.
//!
//! tandem never forks the calling program itself: forking a process that has
//! threads copies only the forking thread and can leave locks held forever in
//! the child. So a process unit starts one of two safe ways, and the demo runs
//! one child of each and shows who its parent really is:
//! - `StartMethod::Spawn` re-executes this binary: the child's parent is us.
//! - `StartMethod::ForkServer` asks a single-threaded template process (itself
//!   started once by re-executing this binary) to fork: the child's parent is
//!   the template, and the template's parent is us.

use serde::{Deserialize, Serialize};
use tandem::StartMethod;

use super::{ms, now_ns, pid, pid_of, ppid, shows};

/// What the child sees of itself and its ancestry.
#[derive(Serialize, Deserialize)]
struct ChildView {
    at_ns: u64,
    pid: u32,
    ppid: u32,
    /// The parent's own parent, read from /proc: who started the parent.
    grandparent: Option<u32>,
}

fn who_am_i(_: ()) -> ChildView {
    let parent = ppid();
    ChildView { at_ns: now_ns(), pid: pid(), ppid: parent, grandparent: parent_of(parent) }
}

/// The parent pid of process `of`, from /proc/PID/status.
fn parent_of(of: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{of}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    let me = pid();
    println!(
        "tandem does not fork this program itself (a fork copies only the calling thread, so locks held by \
         other threads\nstay locked in the child): a process unit starts by Spawn (re-executing this binary) or \
         ForkServer\n(forked from a single-threaded template process). One child of each:\n"
    );
    println!("{:>8.1} ms  parent: my pid is {me}, my own parent is {}", ms(origin, now_ns()), ppid());

    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        println!();
        let handle = tandem::process::Builder::new().start_method(method).spawn((), who_am_i)?;
        let started = now_ns();
        let child_pid = pid_of(&handle);
        println!(
            "{:>8.1} ms  parent: started a child with {method:?}; its pid is {child_pid}",
            ms(origin, started)
        );
        let child = handle.join()?;
        println!(
            "{:>8.1} ms  child:  my pid is {}, my parent's pid is {}",
            ms(origin, child.at_ns),
            child.pid,
            child.ppid
        );
        println!("{:>8.1} ms  parent: joined the child (pid {})", ms(origin, now_ns()), child.pid);
        match method {
            StartMethod::Spawn if child.ppid == me => println!(
                "             Spawn re-executed this binary as a new process, so the child's parent is this \
                 process ({me})."
            ),
            StartMethod::ForkServer if child.ppid != me && child.grandparent == Some(me) => println!(
                "             ForkServer forked the child from the template process {}, so the child's parent \
                 is the template; the template's parent is this process ({me}).",
                child.ppid
            ),
            _ => println!(
                "             unexpected ancestry for {method:?}: parent {}, grandparent {:?}, this process {me}",
                child.ppid, child.grandparent
            ),
        }
    }
    shows(
        "a child process has its own pid and knows its parent's pid; with Spawn the parent is this program, \
         with ForkServer it is the fork server template that this program started",
    );
    Ok(())
}
