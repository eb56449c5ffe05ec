//! `tandem demo`, run as the real binary: every demo exits 0, says what it
//! shows, and its printed observations prove what it claims.

use std::io::BufRead;
use std::process::{Command, Output, Stdio};

const NAMES: [&str; 10] = [
    "threads-and-processes",
    "fork",
    "thread-ids",
    "memory",
    "crash",
    "pipe",
    "queue",
    "shared-memory",
    "lock",
    "sandbox",
];

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

/// The number following `key` in `line`, when it may not fit a u32.
fn u64_after(line: &str, key: &str) -> u64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("no {key:?} in {line:?}")) + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// The only line containing `key`.
fn line_with<'a>(stdout: &'a str, key: &str) -> &'a str {
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(key)).collect();
    assert_eq!(lines.len(), 1, "one line with {key:?}:\n{stdout}");
    lines[0]
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

/// Run a demo whose reader goes away after its first line, as in
/// `tandem demo NAME | head -1`; return its exit status and stderr.
fn with_reader_gone_after_one_line(name: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["demo", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the tandem binary");
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with(&format!("tandem demo {name}")), "{first:?}");
    drop(reader);
    // Reading stderr to its end also waits for any process that inherited
    // it: a worker orphaned by an early exit would be caught here.
    let out = child.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_closed_stdout_silences_a_demo_without_a_panic() {
    // threads-and-processes prints its header, then nothing until its units
    // have worked for a second: by then the reader is surely gone, so the
    // demo's next write meets a closed pipe.
    // queue is closed while it starts its processes: they must not be left
    // behind.
    for name in ["threads-and-processes", "queue"] {
        let (status, stderr) = with_reader_gone_after_one_line(name);
        assert!(status.success(), "{name}: {status} on a closed stdout:\n{stderr}");
        assert!(stderr.is_empty(), "{name}: nothing to say on stderr when the reader left:\n{stderr}");
    }
}

#[test]
fn pipe_messages_go_both_ways_between_parent_and_child() {
    let stdout = demo("pipe");
    let parent = number_after(line_with(&stdout, "parent (pid"), "parent (pid");
    let child = number_after(line_with(&stdout, "parent: child started, pid"), "child started, pid");
    assert_ne!(child, parent);
    let hello = line_with(&stdout, "hello, my parent is pid");
    assert_eq!(number_after(hello, "child (pid"), child, "{stdout}");
    assert_eq!(number_after(hello, "my parent is pid"), parent, "{stdout}");

    // Each question: sent by the parent, then got by the child, then its
    // answer got by the parent, in that order on the one machine clock.
    let lines: Vec<&str> = stdout.lines().collect();
    let mut answers = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("parent: sent question") {
            continue;
        }
        let n = u64_after(line, "sent question");
        let (got, answered) = (lines[i + 1], lines[i + 2]);
        assert!(got.contains(&format!("child (pid {child}): got question {n} ")), "{stdout}");
        assert!(got.contains(&format!("replied {}", n * n)), "{stdout}");
        assert!(answered.contains(&format!("parent: got answer {} (right;", n * n)), "{stdout}");
        assert!(stamp(line) <= stamp(got) && stamp(got) <= stamp(answered), "out of order:\n{stdout}");
        answers.push(u64_after(answered, "got answer"));
    }
    assert_eq!(answers, [9, 144, 1_000_000, 4_294_967_296], "{stdout}");
    // Hanging up is seen on both sides.
    assert!(line_with(&stdout, "goodbye after").contains("disconnected: the parent hung up"), "{stdout}");
    assert_eq!(u64_after(line_with(&stdout, "goodbye after"), "goodbye after"), 4);
    assert_eq!(u64_after(line_with(&stdout, "it returned"), "it returned"), 4);
    line_with(&stdout, "my recv() says disconnected too");
}

#[test]
fn queue_delivers_every_item_exactly_once() {
    let stdout = demo("queue");
    // 2 producers x 5000 items, valued producer * 1_000_000 + i.
    let expected_sum: u64 = (1..=2u64).flat_map(|p| (0..5000).map(move |i| p * 1_000_000 + i)).sum();
    let totals = |key: &str| {
        let line = line_with(&stdout, key);
        (u64_after(line, key), u64_after(line, ", sum"), line.rsplit(' ').next().unwrap().to_string())
    };
    let (put_count, put_sum, put_checksum) = totals("total put:");
    let (got_count, got_sum, got_checksum) = totals("total got:");
    assert_eq!((put_count, put_sum), (10_000, expected_sum), "{stdout}");
    assert_eq!((got_count, got_sum, &got_checksum), (put_count, put_sum, &put_checksum), "{stdout}");
    line_with(&stdout, "every one of the 10000 items was taken exactly once");

    // The consumers' own tallies add up to the total, and each one's
    // per-producer breakdown adds up to its count.
    let consumers: Vec<&str> = stdout.lines().filter(|l| l.contains("took its stop marker after")).collect();
    assert_eq!(consumers.len(), 2, "{stdout}");
    let (mut count, mut sum) = (0, 0);
    let mut pids = vec![number_after(line_with(&stdout, "parent (pid"), "parent (pid")];
    for line in &consumers {
        let items = u64_after(line, "stop marker after");
        let from_each = u64_after(line, "items (") + u64_after(line, "from producer 1,");
        assert_eq!(from_each, items, "{line}");
        count += items;
        sum += u64_after(line, "; sum");
        pids.push(number_after(line, "(pid"));
    }
    assert_eq!((count, sum), (10_000, expected_sum), "{stdout}");
    for line in stdout.lines().filter(|l| l.contains(" ms  producer ")) {
        assert_eq!(u64_after(line, "put its"), 5000, "{line}");
        pids.push(number_after(line, "(pid"));
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 5, "parent, 2 producers and 2 consumers are 5 processes:\n{stdout}");
}

#[test]
fn shared_memory_children_writes_are_seen_by_the_parent() {
    let stdout = demo("shared-memory");
    let started = line_with(&stdout, "parent: started 4 processes (pids");
    let list = &started[started.find("(pids ").unwrap() + 6..started.find(')').unwrap()];
    let spawned: Vec<u32> = list.split(", ").map(|p| p.parse().unwrap()).collect();
    assert_eq!(spawned.len(), 4, "{stdout}");
    let parent = number_after(line_with(&stdout, "parent (pid"), "parent (pid");
    let slots: Vec<&str> = stdout.lines().filter(|l| l.contains(": pid slot says")).collect();
    assert_eq!(slots.len(), 4, "{stdout}");
    for (n, line) in slots.iter().enumerate() {
        let pid = number_after(line, "pid slot says");
        assert_eq!(pid, spawned[n], "the parent reads each child's own pid in its slot:\n{stdout}");
        assert_ne!(pid, parent);
        assert!(line.contains("262144 of its 262144 values are there"), "{stdout}");
    }
    assert_eq!(u64_after(line_with(&stdout, "total counter ="), "total counter ="), 1 << 20, "{stdout}");
    line_with(&stdout, "every child's write is in the parent's memory");
}

#[test]
fn lock_makes_the_count_exact_and_the_race_is_reported_honestly() {
    let stdout = demo("lock");
    let (unlocked, locked) = stdout.split_once("\n2) ").expect("two parts");
    let result = |part: &str| {
        let line = line_with(part, "parent: counter = ");
        let got = u64_after(line, "counter =");
        let expected = u64_after(line, "expected");
        let lost = u64_after(line, "):");
        assert_eq!(expected, 80_000, "{line}");
        assert_eq!(lost, expected - got, "the lost count is expected - got: {line}");
        assert_eq!(part.lines().filter(|l| l.contains("did its 20000 increments")).count(), 4, "{part}");
        got
    };
    assert_eq!(result(locked), 80_000, "holding the lock, no update is lost:\n{stdout}");
    let got = result(unlocked);
    assert!(got <= 80_000, "{stdout}");
    // Whatever the race did this time, the verdict matches the numbers.
    if got < 80_000 {
        line_with(unlocked, "wrote the same result over each other");
    } else {
        line_with(unlocked, "this time no update was lost");
    }
}

#[test]
fn sandbox_refuses_the_hostile_task_what_it_gets_without_one() {
    let stdout = demo("sandbox");
    let (free, boxed) = stdout.split_once("\nwith a sandbox (").expect("both runs");
    for what in ["  read /", "  write /", "connect to 127.0.0.1", "signal the demo process", "run /bin/sh"] {
        let line = line_with(free, what);
        assert!(line.contains("allowed:"), "without a sandbox: {line}\n{stdout}");
        let line = line_with(boxed, what);
        assert!(line.contains("refused:"), "with a sandbox: {line}\n{stdout}");
    }
    assert!(line_with(free, "the listener").contains("saw a connection"), "{stdout}");
    assert!(line_with(boxed, "the listener").contains("saw nothing"), "{stdout}");
    assert!(boxed.lines().next().unwrap_or("").contains("seccomp"), "{stdout}");
    assert!(stdout.contains("is still here"), "{stdout}");
}
