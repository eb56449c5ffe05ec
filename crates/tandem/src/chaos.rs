//! Deliberate failures, for demos, tests and `tandem compare`'s crash rows.
//!
//! ```no_run
//! tandem::init();
//! let h = tandem::process::spawn((), |()| -> u8 { tandem::chaos::segfault() }).unwrap();
//! assert!(matches!(h.join(), Err(tandem::Error::WorkerDied { signal: Some(11), .. })));
//! ```

/// Crash this process with a real memory fault (SIGSEGV): a null pointer
/// write. Every thread of the process dies with it.
///
/// ```
/// tandem::init();
/// let h = tandem::process::spawn((), |()| -> u8 { tandem::chaos::segfault() }).unwrap();
/// assert!(matches!(h.join(), Err(tandem::Error::WorkerDied { signal: Some(11), .. })));
/// ```
pub fn segfault() -> ! {
    crate::sys::crash::segfault()
}

/// Inside a process worker, write raw `bytes` to its socket to the parent,
/// outside the protocol, as a broken or hostile worker could (any task can
/// find that socket among its descriptors). For testing that the parent
/// refuses what it reads without harm. Outside a worker it fails with
/// `Unsupported`.
///
/// ```no_run
/// tandem::init();
/// let h = tandem::process::spawn((), |()| -> u8 {
///     tandem::chaos::write_to_parent(b"not a frame").unwrap();
///     std::thread::sleep(std::time::Duration::from_secs(60));
///     0
/// });
/// assert!(matches!(h.unwrap().join(), Err(tandem::Error::Codec(_))));
/// ```
pub fn write_to_parent(bytes: &[u8]) -> std::io::Result<()> {
    let sock = not_a_worker(crate::worker::parent_socket())?;
    let mut sent = 0;
    while sent < bytes.len() {
        sent += rustix::net::send(&sock, &bytes[sent..], rustix::net::SendFlags::NOSIGNAL)?;
    }
    Ok(())
}

/// Inside a process worker, shut down its socket to the parent in both
/// directions while the worker keeps running, as a broken worker could.
/// Outside a worker it fails with `Unsupported`.
///
/// ```no_run
/// tandem::init();
/// let h = tandem::process::spawn((), |()| -> u8 {
///     tandem::chaos::hang_up_parent().unwrap();
///     std::thread::sleep(std::time::Duration::from_secs(60));
///     0
/// });
/// assert!(matches!(h.unwrap().join(), Err(tandem::Error::WorkerDied { .. })));
/// ```
pub fn hang_up_parent() -> std::io::Result<()> {
    let sock = not_a_worker(crate::worker::parent_socket())?;
    Ok(rustix::net::shutdown(&sock, rustix::net::Shutdown::Both)?)
}

/// Inside a process worker, make the running task's answer a forged big
/// result: a reference claiming `len` bytes in `memory`, which travels as
/// its descriptor, instead of what the task returns (a hostile worker could
/// send any descriptor: a pipe, an unsealed or truncated memfd, a size that
/// lies). Once the answer is sent, `then` runs with the descriptor (to
/// shrink it, say). Outside a worker it fails with `Unsupported`.
///
/// ```no_run
/// tandem::init();
/// let h = tandem::process::spawn((), |()| -> Vec<u8> {
///     let (r, _w) = rustix::pipe::pipe().unwrap();
///     tandem::chaos::answer_with_memory(r, 1 << 20, |_| {}).unwrap();
///     Vec::new()
/// });
/// assert!(matches!(h.unwrap().join(), Err(tandem::Error::Codec(_))));
/// ```
pub fn answer_with_memory(
    memory: std::os::fd::OwnedFd,
    len: u64,
    then: fn(std::os::fd::BorrowedFd<'_>),
) -> std::io::Result<()> {
    not_a_worker(crate::worker::parent_socket())?;
    crate::worker::forge_answer(crate::codec::bulk_reference(len), memory, then);
    Ok(())
}

/// As [`answer_with_memory`], the reference naming `memory` as the
/// worker's arena (a memfd whose first 64 bytes are its header) holding
/// message `number` of `len` bytes: the form a worker's big result takes.
///
/// ```no_run
/// tandem::init();
/// let h = tandem::process::spawn((), |()| -> Vec<u8> {
///     let (r, _w) = rustix::pipe::pipe().unwrap();
///     tandem::chaos::answer_with_arena(r, 1 << 20, 1, |_| {}).unwrap();
///     Vec::new()
/// });
/// assert!(matches!(h.unwrap().join(), Err(tandem::Error::Codec(_))));
/// ```
pub fn answer_with_arena(
    memory: std::os::fd::OwnedFd,
    len: u64,
    number: u64,
    then: fn(std::os::fd::BorrowedFd<'_>),
) -> std::io::Result<()> {
    not_a_worker(crate::worker::parent_socket())?;
    crate::worker::forge_answer(crate::codec::arena_reference(len, number), memory, then);
    Ok(())
}

/// Inside a pool's process worker, make the running task's answer a lent
/// result (`Vec<u8>` or `ByteBuf`): `len` bytes at `addr` in this worker's
/// memory, for the parent to read out of it, as a hostile worker could name
/// any address and any length; with `exit_after`, the worker exits as soon
/// as the answer is sent, before the parent can read anything. Outside a
/// worker it fails with `Unsupported`.
///
/// ```no_run
/// tandem::init();
/// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
/// let h = pool.submit((), |()| -> Vec<u8> {
///     tandem::chaos::answer_lent(1 << 20, 8, false).unwrap();
///     Vec::new()
/// });
/// assert!(matches!(h.join(), Err(tandem::Error::Codec(_))));
/// ```
pub fn answer_lent(len: u64, addr: u64, exit_after: bool) -> std::io::Result<()> {
    not_a_worker(crate::worker::parent_socket())?;
    crate::worker::forge_lent_answer(crate::codec::lent_message(len, addr, 0), exit_after);
    Ok(())
}

/// Inside a process worker, write `bytes` to the parent right after the
/// running task's answer, as a broken worker could (more than the one frame
/// it owes). Outside a worker it fails with `Unsupported`.
///
/// ```no_run
/// tandem::init();
/// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
/// let first = pool.submit((), |()| tandem::chaos::write_after_answer(b"junk".to_vec()).is_ok());
/// let second = pool.submit((), |()| true);
/// // One of the two fails with `Error::Codec`; the pool goes on.
/// assert!(first.join().is_err() != second.join().is_err());
/// ```
pub fn write_after_answer(bytes: Vec<u8>) -> std::io::Result<()> {
    not_a_worker(crate::worker::parent_socket())?;
    crate::worker::write_after_answer(bytes);
    Ok(())
}

/// Inside a process worker, make the running task's answer claim `size`
/// bytes in the worker's answer slot (see the pool's direct path), as a
/// hostile worker could; the task must have been sent on the direct path
/// (a pool without time limits or recycling) for the slot to be used.
/// Outside a worker it fails with `Unsupported`.
///
/// ```no_run
/// tandem::init();
/// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
/// let h = pool.submit((), |()| tandem::chaos::lie_about_answer_size(1 << 40).is_ok());
/// assert!(matches!(h.join(), Err(tandem::Error::Codec(_))));
/// ```
pub fn lie_about_answer_size(size: u64) -> std::io::Result<()> {
    not_a_worker(crate::worker::parent_socket())?;
    crate::worker::lie_about_answer_size(size);
    Ok(())
}

/// Inside a process worker of a pool, make the worker exit (status 0) as
/// soon as it sees the next task left in its slot, before it takes it: a
/// worker that dies between a task's delivery and its start. That task
/// never reached it, and runs on a fresh worker without counting as a try.
/// Outside a worker it fails with `Unsupported`.
///
/// ```no_run
/// tandem::init();
/// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).build().unwrap();
/// pool.submit((), |()| ()).join().unwrap();
/// pool.submit((), |()| tandem::chaos::exit_before_taking_next_task().is_ok()).join().unwrap();
/// assert_eq!(pool.submit(2u8, |x| x).join().unwrap(), 2);
/// ```
pub fn exit_before_taking_next_task() -> std::io::Result<()> {
    not_a_worker(crate::worker::parent_socket())?;
    crate::worker::exit_before_taking_next_task();
    Ok(())
}

fn not_a_worker<T>(value: Option<T>) -> std::io::Result<T> {
    value.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this process is not a tandem worker: call this from a task running in process mode",
        )
    })
}
