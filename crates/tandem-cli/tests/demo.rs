//! `tandem demo`, run as the real binary: every demo exits 0, says what it
//! shows, and its printed observations prove what it claims.

use std::process::{Command, Output};

const NAMES: [&str; 5] = ["threads-and-processes", "fork", "thread-ids", "memory", "crash"];

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().expect("run the tandem binary")
}

/// Run one demo, require success and a `shows:` line, return its stdout.
fn demo(name: &str) -> String {
    let out = tandem(&["demo", name]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo {name} failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.lines().any(|l| l.starts_with("shows: ")), "demo {name} has no shows line:\n{stdout}");
    assert!(!stdout.contains("unexpected"), "demo {name} saw something unexpected:\n{stdout}");
    stdout
}

/// The milliseconds stamp at the start of an event line.
fn stamp(line: &str) -> f64 {
    let ms = line.trim_start().split(" ms").next().unwrap();
    ms.parse().unwrap_or_else(|_| panic!("no timestamp in {line:?}"))
}

/// The number following `key` in `line`.
fn number_after(line: &str, key: &str) -> u32 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("no {key:?} in {line:?}")) + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

#[test]
fn without_a_name_it_lists_every_demo_with_a_line_each() {
    let out = tandem(&["demo"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in NAMES {
        let line = stdout.lines().find(|l| l.trim_start().starts_with(name));
        let line = line.unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"));
        assert!(line.len() > name.len() + 10, "{name} has no description: {line:?}");
    }
}

#[test]
fn an_unknown_name_fails_and_lists_the_valid_names() {
    let out = tandem(&["demo", "no-such-demo"]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no demo called \"no-such-demo\""), "{stderr}");
    for name in NAMES {
        assert!(stderr.contains(name), "{name} missing from the error:\n{stderr}");
    }
}

#[test]
fn threads_and_processes_all_run_at_once() {
    let stdout = demo("threads-and-processes");
    let demo_pid = number_after(stdout.lines().find(|l| l.starts_with("demo pid ")).unwrap(), "demo pid");
    let events: Vec<&str> =
        stdout.lines().filter(|l| l.contains(" ms  start ") || l.contains(" ms  finish ")).collect();
    let starts: Vec<&str> = events.iter().copied().filter(|l| l.contains(" start ")).collect();
    let finishes: Vec<&str> = events.iter().copied().filter(|l| l.contains(" finish ")).collect();
    assert_eq!((starts.len(), finishes.len()), (10, 10), "ten units start and finish:\n{stdout}");
    for n in 1..=5 {
        for kind in ["thread", "process"] {
            let unit = format!("{kind} {n} ");
            assert_eq!(starts.iter().filter(|l| l.contains(&unit)).count(), 1, "{unit}:\n{stdout}");
            assert_eq!(finishes.iter().filter(|l| l.contains(&unit)).count(), 1, "{unit}:\n{stdout}");
        }
    }

    // Overlap, from the units' own stamps: every start comes before any finish.
    let last_start = starts.iter().map(|l| stamp(l)).fold(f64::MIN, f64::max);
    let first_finish = finishes.iter().map(|l| stamp(l)).fold(f64::MAX, f64::min);
    assert!(last_start < first_finish, "a unit finished before another started:\n{stdout}");
    let first_finish_line = events.iter().position(|l| l.contains(" finish ")).unwrap();
    assert!(events[..first_finish_line].iter().all(|l| l.contains(" start ")), "{stdout}");

    // Threads live in the demo's process; each process unit is its own.
    let mut process_pids = Vec::new();
    for line in &starts {
        let pid = number_after(line, "pid");
        if line.contains(" thread ") {
            assert_eq!(pid, demo_pid, "{line}");
        } else {
            assert_ne!(pid, demo_pid, "{line}");
            process_pids.push(pid);
        }
    }
    process_pids.sort_unstable();
    process_pids.dedup();
    assert_eq!(process_pids.len(), 5, "five distinct processes:\n{stdout}");

    let elapsed_line = stdout.lines().find(|l| l.starts_with("total elapsed: ")).unwrap();
    let elapsed: f64 =
        elapsed_line["total elapsed: ".len()..].split(' ').next().unwrap().parse().expect("seconds");
    assert!((1.0..2.0).contains(&elapsed), "ten one-second units took {elapsed} s:\n{stdout}");
}

#[test]
fn fork_shows_each_childs_real_parent() {
    let stdout = demo("fork");
    let me = number_after(stdout.lines().find(|l| l.contains("parent: my pid is")).unwrap(), "my pid is");
    let children: Vec<&str> = stdout.lines().filter(|l| l.contains("child:  my pid is")).collect();
    assert_eq!(children.len(), 2, "{stdout}");
    let parent_of = |line: &str| number_after(line, "my parent's pid is");
    // Spawn: the child's parent is the demo. ForkServer: it is the template.
    assert_eq!(parent_of(children[0]), me, "{stdout}");
    assert_ne!(parent_of(children[1]), me, "{stdout}");
    assert!(stdout.contains(&format!("template process {}", parent_of(children[1]))), "{stdout}");
    for child in &children {
        assert_ne!(number_after(child, "my pid is"), me);
    }
}

#[test]
fn thread_ids_differ_between_live_threads_and_std_ids_never_repeat() {
    let stdout = demo("thread-ids");
    let verdicts: Vec<&str> = stdout.lines().filter(|l| l.contains("std ThreadId: ")).collect();
    assert_eq!(verdicts.len(), 2, "{stdout}");
    assert!(verdicts[0].contains("std ThreadId: different;"), "{stdout}");
    assert!(
        verdicts[1]
            .contains("std ThreadId: different; kernel tid: different; stack (and pthread_t): different"),
        "threads alive together share no id:\n{stdout}"
    );
    let tids: Vec<u32> = stdout
        .lines()
        .filter(|l| l.contains(": std ThreadId("))
        .map(|l| number_after(l, "kernel tid"))
        .collect();
    assert_eq!(tids.len(), 4, "{stdout}");
    assert_ne!(tids[2], tids[3]);
}

#[test]
fn memory_threads_share_the_counter_processes_do_not() {
    let stdout = demo("memory");
    let parent_sees: Vec<u32> = stdout
        .lines()
        .filter(|l| l.contains("parent: counter = "))
        .map(|l| number_after(l, "counter ="))
        .collect();
    assert_eq!(parent_sees, [4000, 4000], "{stdout}");
    let mut thread_views: Vec<u32> = stdout
        .lines()
        .filter(|l| l.contains("Thread unit pid"))
        .map(|l| number_after(l, "counter after my adds ="))
        .collect();
    thread_views.sort_unstable();
    assert_eq!(thread_views.len(), 4, "{stdout}");
    assert_eq!(*thread_views.last().unwrap(), 4000, "the last thread sees everyone's adds:\n{stdout}");
    let process_views: Vec<u32> = stdout
        .lines()
        .filter(|l| l.contains("Process unit pid"))
        .map(|l| number_after(l, "counter after my adds ="))
        .collect();
    assert_eq!(process_views, [1000; 4], "each process sees only its own adds:\n{stdout}");
}

#[test]
fn crash_kills_the_threads_of_one_process_and_spares_other_processes() {
    let stdout = demo("crash");
    let (threads_part, processes_part) = stdout.split_once("\n2) ").expect("two parts");
    assert!(threads_part.contains("died, killed by signal 11 (SIGSEGV)"), "{stdout}");
    assert!(threads_part.contains("crashing thread: writing through a null pointer"), "{stdout}");
    // The steady threads were cut off mid-work: none reached its last step.
    assert!(threads_part.contains("step 1 of 10 done"), "the threads ran before the crash:\n{stdout}");
    assert!(!threads_part.contains("step 10 of 10"), "{stdout}");

    let finished = processes_part.lines().filter(|l| l.contains(": finished, sum of")).count();
    let died: Vec<&str> =
        processes_part.lines().filter(|l| l.contains("died, killed by signal 11")).collect();
    assert_eq!((finished, died.len()), (3, 1), "{stdout}");
    assert!(died[0].contains("process 3 "), "{stdout}");
    assert!(processes_part.contains("still running; 3 of 4 processes returned their results"), "{stdout}");
}
