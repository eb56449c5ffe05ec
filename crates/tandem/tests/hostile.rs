//! A hostile or broken worker cannot harm its parent, and nothing outside
//! can get in.
//!
//! A task can reach its worker's socket to the parent (a Unix socket among
//! its descriptors) and write anything to it. The parent answers that task
//! with `Error::Codec` or `Error::WorkerDied`, never panics, never allocates
//! what a length prefix claims, and the pool goes on.
//!
//! The other direction: an unrelated process cannot become a worker by
//! setting the marker variable (tests/units.rs,
//! `the_marker_environment_alone_does_not_make_a_worker`), no tandem socket
//! has a name, and programs a task executes inherit no descriptor.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::METHODS;
use tandem::{Error, Mode, Pool};

/// Descriptors of this process that are Unix sockets, as numbers.
fn socket_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            (fd >= 3 && link.to_string_lossy().starts_with("socket:")).then_some(fd)
        })
        .collect()
}

/// Write `bytes` to the worker's socket to its parent, as a broken or
/// hostile worker could (the task can find it among its descriptors, see
/// `a_task_can_find_its_socket_to_the_parent`).
fn write_to_parent(bytes: &[u8]) {
    tandem::chaos::write_to_parent(bytes).unwrap();
}

fn header(kind: u8, fds: u8, len: u64) -> Vec<u8> {
    let mut h = vec![0x7a, 0xd3, kind, fds];
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// What a hostile task sends, then whether it exits or hangs.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
enum Attack {
    /// Bytes that are not a frame, then hang.
    Garbage,
    /// A Done header claiming 2^63 payload bytes, then hang.
    HugeLength,
    /// A Done header claiming 100 bytes, 5 of them, then exit.
    TruncatedThenExit,
    /// A Done header claiming 100 bytes, 5 of them, then close the socket
    /// and keep running.
    TruncatedThenHangUp,
    /// A well-formed frame of a kind the parent never expects, then hang.
    WrongKind,
    /// A header announcing descriptors that do not come, then hang.
    MissingDescriptors,
    /// A well-formed Done frame for some other task, then hang.
    WrongTask,
}

fn attack(how: Attack) -> u64 {
    match how {
        Attack::Garbage => write_to_parent(b"this is not a tandem frame at all"),
        Attack::HugeLength => write_to_parent(&header(3, 0, 1 << 63)),
        Attack::TruncatedThenExit | Attack::TruncatedThenHangUp => {
            let mut frame = header(3, 0, 100);
            frame.extend_from_slice(b"short");
            write_to_parent(&frame);
            if let Attack::TruncatedThenExit = how {
                std::process::exit(3);
            }
            tandem::chaos::hang_up_parent().unwrap();
        }
        Attack::WrongKind => write_to_parent(&header(6, 0, 0)),
        Attack::MissingDescriptors => write_to_parent(&header(3, 5, 0)),
        Attack::WrongTask => {
            let mut frame = header(3, 0, 9);
            frame.extend_from_slice(&u64::MAX.to_le_bytes());
            frame.push(0);
            write_to_parent(&frame);
        }
    }
    std::thread::sleep(Duration::from_secs(60));
    0
}

const ATTACKS: [Attack; 7] = [
    Attack::Garbage,
    Attack::HugeLength,
    Attack::TruncatedThenExit,
    Attack::TruncatedThenHangUp,
    Attack::WrongKind,
    Attack::MissingDescriptors,
    Attack::WrongTask,
];

fn assert_refused(how: Attack, result: Result<u64, Error>, context: &str) {
    match (how, &result) {
        (_, Err(Error::Codec(_))) | (_, Err(Error::WorkerDied { .. })) => {}
        _ => panic!("{context}: {how:?} gave {result:?}"),
    }
    if let Attack::TruncatedThenExit = how {
        assert!(
            matches!(result, Err(Error::WorkerDied { code: Some(3), .. })),
            "{context}: a worker that exits mid-frame is reported by its exit: {result:?}"
        );
    }
}

#[test]
fn a_task_can_find_its_socket_to_the_parent() {
    let h = tandem::process::spawn((), |()| socket_fds().len()).unwrap();
    assert!(h.join().unwrap() >= 1);
}

#[test]
fn a_one_off_unit_that_writes_garbage_to_its_parent_fails_cleanly() {
    for method in METHODS {
        for how in ATTACKS {
            let start = std::time::Instant::now();
            let h = tandem::process::Builder::new().start_method(method).spawn(how, attack).unwrap();
            // A limit only so a regression fails instead of hanging.
            assert_refused(how, h.join_timeout(Duration::from_secs(30)), &format!("one-off {method:?}"));
            // The attacker sleeps 60 s after its attack: the parent must not wait for it.
            assert!(start.elapsed() < Duration::from_secs(10), "one-off {method:?}: {how:?} held join");
        }
        assert_eq!(
            tandem::process::Builder::new()
                .start_method(method)
                .spawn(2u8, |x| x + 1)
                .unwrap()
                .join()
                .unwrap(),
            3
        );
    }
}

#[test]
fn a_pool_worker_that_writes_garbage_fails_its_task_and_the_pool_goes_on() {
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        for (i, how) in ATTACKS.into_iter().enumerate() {
            let start = std::time::Instant::now();
            assert_refused(how, pool.submit(how, attack).join(), &format!("pool {method:?}"));
            assert!(start.elapsed() < Duration::from_secs(10), "pool {method:?}: {how:?} held the task");
            assert_eq!(
                pool.submit(i as u64, |x| x + 1).join().unwrap(),
                i as u64 + 1,
                "{method:?} after {how:?}"
            );
        }
        assert_eq!(
            pool.stats().workers[0].restarts,
            ATTACKS.len() as u64,
            "{method:?}: each attacker was replaced"
        );
        drop(pool);
        // Other tests of this binary reap their own children a moment after
        // they die, so only a zombie that stays is a failure.
        assert!(
            common::eventually(Duration::from_secs(5), || common::zombies().is_empty()),
            "zombies: {:?}",
            common::zombies()
        );
    }
}

/// Bigger than a worker's answer slot: these answers travel the socket.
const OVER_THE_SLOT: usize = 5000;

fn answer_then_junk((): ()) -> Vec<u8> {
    tandem::chaos::write_after_answer(b"junk after the answer".to_vec()).unwrap();
    vec![1; OVER_THE_SLOT]
}

/// A worker that sends more than the one answer it owes on its socket is
/// always caught and replaced: a joiner whose read brings the junk with the
/// answer fails its task with `Error::Codec`; the loop, reading it with the
/// answer, replaces the worker before its next task; junk read alone fails
/// the task whose read meets it. At most one of the two tasks fails, neither
/// gets a wrong value, nothing resolves twice, and the pool goes on. (Junk
/// after an answer left in the answer slot waits in the socket for the next
/// read of it, and is caught then.)
#[test]
fn a_worker_that_sends_more_than_its_answer_is_replaced_and_the_pool_goes_on() {
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        for round in 0..20u64 {
            let first = pool.submit((), answer_then_junk);
            let second = pool.submit(round, |x| vec![x as u8; OVER_THE_SLOT]);
            let (first, second) = (first.join(), second.join());
            let whole = |v: &Vec<u8>, byte: u8| v.len() == OVER_THE_SLOT && v.iter().all(|&b| b == byte);
            // The loop, if it read the answer, reads the junk with it and
            // replaces the worker before the second task meets it.
            let at_most_one_failed = match (&first, &second) {
                (Err(Error::Codec(_)), Ok(v)) => whole(v, round as u8),
                (Ok(v), Ok(w)) => whole(v, 1) && whole(w, round as u8),
                (Ok(v), Err(Error::Codec(_))) => whole(v, 1),
                _ => false,
            };
            assert!(
                at_most_one_failed,
                "{method:?} round {round}: {:?} then {:?}",
                first.map(|v| v.len()),
                second.map(|v| v.len())
            );
            assert_eq!(pool.submit(round, |x| x * 2).join().unwrap(), round * 2, "{method:?} round {round}");
        }
        assert_eq!(pool.stats().workers[0].restarts, 20, "{method:?}: each junk writer was replaced");
    }
}

fn lie_in_the_answer_slot(size: u64) -> bool {
    tandem::chaos::lie_about_answer_size(size).unwrap();
    true
}

/// A worker whose answer slot claims more bytes than the slot holds (or a
/// size near 2^64) fails its task with `Error::Codec`: the parent reads at
/// most the slot, never allocates the claim, and replaces the worker.
#[test]
fn a_worker_that_lies_about_its_answer_size_in_the_slot_fails_its_task_and_the_pool_goes_on() {
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        // One byte over the slot's 3,968-byte answer half, then far over.
        for size in [3969u64, 1 << 40, u64::MAX - 1] {
            // The slot serves tasks sent on the direct path, to a worker
            // parked idle; a task the loop sent (the worker was starting or
            // not parked yet) answers on the socket, and the lie is moot:
            // send it again.
            let mut lied = None;
            for _ in 0..100 {
                match pool.submit(size, lie_in_the_answer_slot).join() {
                    Ok(true) => continue,
                    other => {
                        lied = Some(other);
                        break;
                    }
                }
            }
            match lied {
                Some(Err(Error::Codec(why))) => assert!(why.contains("slot"), "{method:?} {size}: {why}"),
                other => panic!("{method:?} {size}: {other:?}"),
            }
            assert_eq!(pool.submit(size, |x| x / 2).join().unwrap(), size / 2);
        }
        assert_eq!(pool.stats().workers[0].restarts, 3, "{method:?}: each liar was replaced");
    }
}

fn exit_before_the_next_task((): ()) -> bool {
    tandem::chaos::exit_before_taking_next_task().unwrap();
    true
}

/// A worker that dies after a task was left in its slot but before it took
/// it never saw the task: the task runs on a fresh worker and is not
/// counted as a try (no retries here, yet no `WorkerDied`), as a task whose
/// send failed.
#[test]
fn a_task_left_in_the_slot_of_a_worker_that_dies_before_taking_it_runs_on_a_fresh_worker() {
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        for round in 0..5u64 {
            // After its first answer the worker reads its slot; the tasks
            // below go there (small, to a parked worker) unless the lane
            // is not open yet when one is submitted (then the loop sends it
            // on the socket and the worker runs it): each must succeed,
            // and one of them meets the exit.
            assert_eq!(pool.submit(round, |x| x + 1).join().unwrap(), round + 1);
            assert!(pool.submit((), exit_before_the_next_task).join().unwrap());
            let restarts = pool.stats().workers[0].restarts;
            for _ in 0..100 {
                assert_eq!(
                    pool.submit(round, |x| x * 3).join().unwrap(),
                    round * 3,
                    "{method:?} round {round}"
                );
                if pool.stats().workers[0].restarts > restarts {
                    break;
                }
            }
            assert_eq!(
                pool.stats().workers[0].restarts,
                restarts + 1,
                "{method:?} round {round}: the worker exited"
            );
        }
        assert_eq!(pool.stats().workers[0].restarts, 5, "{method:?}: each worker exited once");
    }
}

#[test]
fn a_small_message_limit_refuses_a_big_honest_result_and_the_pool_goes_on() {
    let pool = Pool::builder().mode(Mode::Process).workers(1).max_message_size(1 << 16).build().unwrap();
    match pool.submit(1usize << 20, |n| vec![1u8; n]).join() {
        Err(Error::Codec(why)) => assert!(why.contains("over the limit"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.submit(3u8, |x| x * 2).join().unwrap(), 6);
}

// ------------------------------------------------------------------ nothing gets in

/// Inodes of this process's sockets.
fn socket_inodes() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_string_lossy();
            link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Of this process's sockets, those bound to a name (a path or an abstract
/// name) according to /proc/net/unix, and any line naming tandem.
fn named_sockets(_: ()) -> Vec<String> {
    let ours = socket_inodes();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.get(6).and_then(|i| i.parse().ok()).unwrap_or(0);
            let named = fields.len() > 7;
            (named && ours.contains(&inode)) || line.contains("tandem")
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn no_socket_of_a_parent_or_worker_has_a_name() {
    let (tx, _rx) = tandem::ipc::channel::<u8>().unwrap();
    let q = tandem::ipc::Queue::<u8>::bounded(4).unwrap();
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(2).start_method(method).build().unwrap();
        let in_worker = pool.submit((), named_sockets).join().unwrap();
        assert!(in_worker.is_empty(), "{method:?}: named sockets in a worker: {in_worker:?}");
        let one_off = tandem::process::Builder::new().start_method(method).spawn((), named_sockets);
        assert!(one_off.unwrap().join().unwrap().is_empty(), "{method:?}");
        let here = named_sockets(());
        assert!(here.is_empty(), "{method:?}: named sockets in the parent: {here:?}");
    }
    drop((tx, q));
}

/// Run `ls /proc/self/fd` and return the descriptors it saw.
fn fds_of_an_exec(_: (tandem::ipc::Sender<u8>, tandem::ipc::Queue<u8>)) -> Vec<u32> {
    let out = std::process::Command::new("ls").arg("/proc/self/fd").output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|f| f.parse().ok()).collect()
}

#[test]
fn programs_a_task_executes_inherit_only_the_standard_descriptors() {
    // Shareables in the argument bring extra descriptors into the worker.
    let (tx, _rx) = tandem::ipc::channel::<u8>().unwrap();
    let q = tandem::ipc::Queue::<u8>::bounded(4).unwrap();
    // `ls` opens one directory descriptor to list /proc/self/fd.
    let allowed = |fds: &[u32]| fds.iter().all(|&fd| fd <= 3) && fds.len() <= 4;
    // A thread shares this process's descriptors, including any that this
    // test process itself inherited without close-on-exec from whoever
    // started it: those are not tandem's. Nothing tandem opens may be added.
    let inherited: HashSet<u32> = fds_of_an_exec((tx.clone(), q.clone())).into_iter().collect();
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Thread).workers(1).start_method(method).build().unwrap();
        let fds = pool.submit((tx.clone(), q.clone()), fds_of_an_exec).join().unwrap();
        assert!(
            fds.iter().all(|fd| inherited.contains(fd)),
            "thread: ls saw {fds:?}, started with {inherited:?}"
        );
    }
    for method in METHODS {
        let pool = Pool::builder().mode(Mode::Process).workers(1).start_method(method).build().unwrap();
        let fds = pool.submit((tx.clone(), q.clone()), fds_of_an_exec).join().unwrap();
        assert!(fds.len() >= 3 && allowed(&fds), "process/{method:?}: ls saw {fds:?}");
    }
    for method in METHODS {
        let h = tandem::process::Builder::new()
            .start_method(method)
            .spawn((tx.clone(), q.clone()), fds_of_an_exec);
        let fds = h.unwrap().join().unwrap();
        assert!(fds.len() >= 3 && allowed(&fds), "one-off {method:?}: ls saw {fds:?}");
    }
}

fn no_new_privs_flag(_: ()) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find(|l| l.starts_with("NoNewPrivs:")).unwrap().split_whitespace().nth(1).unwrap().into()
}

#[test]
fn no_new_privs_hardens_workers_on_request_only() {
    for method in METHODS {
        for on in [false, true] {
            let want = if on { "1" } else { "0" };
            let b = tandem::process::Builder::new().start_method(method).no_new_privs(on);
            assert_eq!(b.spawn((), no_new_privs_flag).unwrap().join().unwrap(), want, "one-off {method:?}");
            let pool = Pool::builder()
                .mode(Mode::Process)
                .workers(1)
                .start_method(method)
                .no_new_privs(on)
                .build()
                .unwrap();
            assert_eq!(pool.submit((), no_new_privs_flag).join().unwrap(), want, "pool {method:?}");
        }
    }
}
