//! Thread ids: when two threads can carry the same id, and when they cannot.
//!
//! A thread has several ids. std's `ThreadId` is a counter that is never
//! reused while the process lives. The kernel's thread id (tid) is unique only
//! among living threads and tasks: Linux hands tids out in increasing order and
//! reuses one only after wrapping around at pid_max. The thread's stack, and
//! with it glibc's `pthread_t` (which points into the stack's top), is reused
//! as soon as a thread has been joined: glibc keeps freed stacks in a cache.

use std::sync::Barrier;

use serde::{Deserialize, Serialize};

use super::{ms, now_ns, pid, shows, tid};

/// One thread's ids as it saw them.
#[derive(Serialize, Deserialize, Clone)]
struct Ids {
    at_ns: u64,
    /// std's ThreadId, as it prints (it is not serializable itself).
    std_id: String,
    tid: u32,
    pid: u32,
    /// The address of a local variable: where this thread's stack is.
    stack_addr: usize,
}

fn my_ids() -> Ids {
    let marker = 0u8;
    Ids {
        at_ns: now_ns(),
        std_id: format!("{:?}", std::thread::current().id()),
        tid: tid(),
        pid: pid(),
        stack_addr: std::hint::black_box(&marker) as *const u8 as usize,
    }
}

fn report(_: ()) -> Ids {
    my_ids()
}

/// Both threads wait here after noting their ids, so each is certainly still
/// alive while the other notes its own.
static BOTH_ALIVE: Barrier = Barrier::new(2);

fn report_while_both_alive(_: ()) -> Ids {
    let ids = my_ids();
    BOTH_ALIVE.wait();
    ids
}

fn print_ids(origin: u64, name: &str, ids: &Ids) {
    println!(
        "{:>8.1} ms  {name}: std {:<13} kernel tid {:<7} pid {:<7} stack near {:#x}",
        ms(origin, ids.at_ns),
        ids.std_id,
        ids.tid,
        ids.pid,
        ids.stack_addr
    );
}

fn compare(a: &Ids, b: &Ids) {
    let same = |x: bool| if x { "SAME" } else { "different" };
    println!(
        "             std ThreadId: {}; kernel tid: {}; stack (and pthread_t): {}",
        same(a.std_id == b.std_id),
        same(a.tid == b.tid),
        same(a.stack_addr.abs_diff(b.stack_addr) < 4096)
    );
}

pub fn run() -> Result<(), tandem::Error> {
    let origin = now_ns();
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap_or_default();

    println!("1) one after another: thread A runs and is joined, then thread B starts");
    let a = tandem::thread::spawn((), report)?.join()?;
    let b = tandem::thread::spawn((), report)?.join()?;
    print_ids(origin, "thread A", &a);
    print_ids(origin, "thread B", &b);
    compare(&a, &b);
    println!(
        "             A was gone before B began, so B may get A's ids back: glibc hands B the stack A \
         left behind,\n             and the kernel may give B A's tid once tids wrap around at pid_max ({}).",
        pid_max.trim()
    );

    println!("\n2) at the same time: both threads note their ids, then wait for each other before ending");
    let c = tandem::thread::spawn((), report_while_both_alive)?;
    let d = tandem::thread::spawn((), report_while_both_alive)?;
    let (c, d) = (c.join()?, d.join()?);
    print_ids(origin, "thread C", &c);
    print_ids(origin, "thread D", &d);
    compare(&c, &d);
    println!("             C and D were alive at once, so no id of theirs can be the same.");

    shows(
        "thread ids are unique only among threads alive at the same time: a thread that ended may see its \
         kernel tid and its stack/pthread_t handed to a later one; std's ThreadId is never reused",
    );
    Ok(())
}
