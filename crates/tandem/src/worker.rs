//! The worker side: what a process started by tandem does instead of `main`.
//!
//! [`run_if_worker`] is the entry point: the crate root hands it down to
//! `sys::bootstrap`'s before-`main` hook and calls it from `init()`. A worker
//! runs tasks ([`serve`]) or, if its first message says so, becomes the
//! fork-server template (`launch::template`), to which it hands [`serve`]
//! for the workers the template forks.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::batch;
use crate::launch::WorkerConfig;
use crate::launch::template;
use crate::sys::bootstrap::{self, Claim, ParentLink};
use crate::sys::{code, fork, signal};
use crate::task::{self, Invocation, Outcome, Trampoline};
use crate::wire::{self, Frame, Kind, RecvError};

/// Exit code of a worker whose parent vanished.
const EXIT_PARENT_GONE: i32 = 70;
/// Exit code of a worker that received something it cannot understand.
const EXIT_PROTOCOL: i32 = 71;

/// Become a worker if this process was started as one; otherwise return at
/// once. Runs before `main` (the crate root registers it with
/// `sys::bootstrap`'s hook) and again from `init()`.
pub(crate) fn run_if_worker() {
    static CLAIMED: AtomicBool = AtomicBool::new(false);
    if CLAIMED.swap(true, Ordering::SeqCst) {
        return;
    }
    match bootstrap::claim() {
        Claim::NotAWorker => {}
        Claim::Refused(why) => {
            eprintln!(
                "tandem: {} is set but {why}; running as an ordinary program (unset it if you set it by hand)",
                bootstrap::WORKER_ENV
            );
        }
        Claim::Orphaned => finish(EXIT_PARENT_GONE),
        Claim::Worker(link) => {
            signal::ignore_sigpipe();
            signal::default_fatal_signals();
            let code = first_message(link);
            finish(code)
        }
    }
}

/// Flush what the task printed, then leave without running `main`.
fn finish(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    fork::exit_now(code)
}

fn first_message(link: ParentLink) -> i32 {
    match wire::recv(link.socket.as_fd(), wire::DEFAULT_MAX_MESSAGE, None) {
        Ok(frame) if frame.kind == Kind::BecomeForkServer => template::run(link, frame, serve),
        Ok(frame) => serve(link, Some(frame)),
        Err(RecvError::Closed) => 0,
        Err(e) => {
            eprintln!("tandem worker: bad first message from the parent: {e}");
            EXIT_PROTOCOL
        }
    }
}

/// A copy of this worker's socket to its parent, for [`crate::chaos`].
#[cfg(feature = "chaos")]
static PARENT_SOCKET: std::sync::Mutex<Option<std::os::fd::OwnedFd>> = std::sync::Mutex::new(None);

/// This worker's socket to its parent, if this process is a worker.
#[cfg(feature = "chaos")]
pub(crate) fn parent_socket() -> Option<std::os::fd::OwnedFd> {
    PARENT_SOCKET.lock().unwrap_or_else(|e| e.into_inner()).as_ref()?.try_clone().ok()
}

/// Keep a copy of this worker's socket for [`parent_socket`].
#[cfg(feature = "chaos")]
fn keep_parent_socket(socket: impl AsFd) {
    *PARENT_SOCKET.lock().unwrap_or_else(|e| e.into_inner()) = socket.as_fd().try_clone_to_owned().ok();
}

/// A forged answer for the running task ([`crate::chaos::answer_with_memory`]):
/// the body of a Done frame, its one descriptor, and what to do once sent.
#[cfg(feature = "chaos")]
type Forged = (Vec<u8>, std::os::fd::OwnedFd, fn(std::os::fd::BorrowedFd<'_>));

#[cfg(feature = "chaos")]
static FORGED: std::sync::Mutex<Option<Forged>> = std::sync::Mutex::new(None);

/// Answer the running task with `body` and `fd` instead of its result.
#[cfg(feature = "chaos")]
pub(crate) fn forge_answer(body: Vec<u8>, fd: std::os::fd::OwnedFd, then: fn(std::os::fd::BorrowedFd<'_>)) {
    *FORGED.lock().unwrap_or_else(|e| e.into_inner()) = Some((body, fd, then));
}

/// A forged lent answer and whether to exit once it is sent
/// ([`crate::chaos::answer_lent`]).
#[cfg(feature = "chaos")]
static FORGED_LENT: std::sync::Mutex<Option<(Vec<u8>, bool)>> = std::sync::Mutex::new(None);

/// Make the running task's answer the lent result `body`.
#[cfg(feature = "chaos")]
pub(crate) fn forge_lent_answer(body: Vec<u8>, exit_after: bool) {
    *FORGED_LENT.lock().unwrap_or_else(|e| e.into_inner()) = Some((body, exit_after));
}

/// Bytes to write to the parent right after the running task's answer
/// ([`crate::chaos::write_after_answer`]).
#[cfg(feature = "chaos")]
static AFTER_ANSWER: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);

/// Write `bytes` to the parent right after the running task's answer.
#[cfg(feature = "chaos")]
pub(crate) fn write_after_answer(bytes: Vec<u8>) {
    *AFTER_ANSWER.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
}

/// A size to claim for the running task's answer in the answer slot
/// ([`crate::chaos::lie_about_answer_size`]).
#[cfg(feature = "chaos")]
static SLOT_SIZE_LIE: std::sync::Mutex<Option<u64>> = std::sync::Mutex::new(None);

/// Claim `size` bytes for the running task's answer in the answer slot.
#[cfg(feature = "chaos")]
pub(crate) fn lie_about_answer_size(size: u64) {
    *SLOT_SIZE_LIE.lock().unwrap_or_else(|e| e.into_inner()) = Some(size);
}

/// Exit when the next task left in the slot is seen, before taking it
/// ([`crate::chaos::exit_before_taking_next_task`]).
#[cfg(feature = "chaos")]
static EXIT_BEFORE_TAKING: AtomicBool = AtomicBool::new(false);

/// Exit when the next task left in the slot is seen, before taking it.
#[cfg(feature = "chaos")]
pub(crate) fn exit_before_taking_next_task() {
    EXIT_BEFORE_TAKING.store(true, Ordering::SeqCst);
}

/// The forged answer, if the task asked for one: the outcome to send in
/// place of its own, and what to run once it is sent.
#[cfg(feature = "chaos")]
fn take_forged() -> Option<(Outcome, fn(std::os::fd::BorrowedFd<'_>))> {
    if let Some((bytes, exit_after)) = FORGED_LENT.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let then: fn(std::os::fd::BorrowedFd<'_>) = if exit_after { |_| fork::exit_now(0) } else { |_| {} };
        return Some((Outcome::Value(crate::codec::Encoded { bytes, fds: Vec::new(), pin: None }), then));
    }
    let (bytes, fd, then) = FORGED.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    Some((Outcome::Value(crate::codec::Encoded { bytes, fds: vec![fd], pin: None }), then))
}

/// The parent's next frame: a task it left in the slot, or a frame on the
/// socket, polled within the answer budget (after a yield: the parent is
/// most often on this CPU), then slept on. A `Ring` frame is a wake-up for
/// a task in the slot, not a frame of its own.
fn next_frame(
    reader: &mut wire::FrameReader,
    sock: BorrowedFd<'_>,
    max: u64,
    slot: Option<&crate::mailbox::Mailbox>,
    seen: &mut u64,
    last_wait: &mut Option<Duration>,
) -> Result<Frame, RecvError> {
    let Some(slot) = slot else { return reader.recv_spin_then_block(sock, max, wire::Expect::Reply) };
    // Poll as long as the last wait took, if that was short (see
    // `Backoff::answer_after`): a parent copying out a big answer before
    // it sends the next task would otherwise find this worker asleep.
    let began = Instant::now();
    let budget = crate::backoff::Backoff::answer_after(*last_wait);
    let next = next_frame_within(reader, sock, max, slot, seen, budget);
    *last_wait = Some(began.elapsed());
    next
}

fn next_frame_within(
    reader: &mut wire::FrameReader,
    sock: BorrowedFd<'_>,
    max: u64,
    slot: &crate::mailbox::Mailbox,
    seen: &mut u64,
    budget: crate::backoff::Backoff,
) -> Result<Frame, RecvError> {
    let from_slot = |seen: &mut u64| {
        #[cfg(feature = "chaos")]
        if EXIT_BEFORE_TAKING.load(Ordering::SeqCst) && slot.has_task_since(*seen) {
            fork::exit_now(0);
        }
        match slot.take_task(seen) {
            Ok(task) => {
                Ok(task.map(|payload| Frame { kind: Kind::Task, payload, fds: Vec::new(), lent: None }))
            }
            Err(e) => Err(RecvError::Malformed(e.to_string())),
        }
    };
    loop {
        let mut spinner = budget.begin();
        while spinner.pause() {
            if let Some(task) = from_slot(seen)? {
                return Ok(task);
            }
            match reader.read_ready(sock, max)? {
                Some(frame) if frame.kind == Kind::Ring => {}
                Some(frame) => return Ok(frame),
                None => {}
            }
        }
        slot.sleeping(true);
        let task = from_slot(seen);
        let frame = match task {
            Ok(None) => reader.recv(sock, max, None),
            Ok(Some(task)) => Ok(task),
            Err(e) => Err(e),
        };
        slot.sleeping(false);
        match frame? {
            frame if frame.kind == Kind::Ring => {}
            frame => return Ok(frame),
        }
    }
}

/// Run tasks from the parent until it closes the connection.
///
/// Nothing here watches for the parent's death: the kernel ends the worker
/// when the parent dies, through the lifeline of a re-executed worker
/// (`sys::bootstrap`) or the parent-death signal of a fork-server worker,
/// whose parent is the template (`forkserver`).
pub(crate) fn serve(link: ParentLink, first: Option<Frame>) -> i32 {
    #[cfg(feature = "chaos")]
    keep_parent_socket(&link.socket);
    let sock = link.socket.as_fd();
    let mut config = WorkerConfig::default();
    let mut sink: Option<batch::Sink> = None;
    // Opened once the config asks for reports (see `usage`).
    let mut meter: Option<crate::usage::Meter> = None;
    // Descriptors 1 and 2 on the parent's memfds (see `output`).
    let mut capture: Option<crate::output::Capture> = None;
    // A pool's slot (see `mailbox`), once the parent sends it; mapped
    // after the next answer goes out, off the way of the task that follows
    // the slot (until then answers go on the socket, as for any task).
    let mut mailbox: Option<crate::mailbox::Mailbox> = None;
    let mut unmapped_slot: Option<OwnedFd> = None;
    // The number of the last task taken from the slot.
    let mut seen_task = 0;
    // How long the last wait for a frame took (the next one's poll budget).
    let mut last_wait = None;
    let mut pending = first;
    // This loop is the socket's only reader from here on: it may read ahead.
    let mut reader = wire::FrameReader::buffered();
    loop {
        let frame = match pending.take() {
            Some(frame) => frame,
            // The next task is most often the parent's reply to the answer
            // this worker just sent: let a parent on this CPU run first.
            None => {
                match next_frame(
                    &mut reader,
                    sock,
                    config.max_message(),
                    mailbox.as_ref(),
                    &mut seen_task,
                    &mut last_wait,
                ) {
                    Ok(frame) => frame,
                    Err(RecvError::Closed) => return 0,
                    Err(e) => {
                        eprintln!("tandem worker: reading from the parent: {e}");
                        return EXIT_PROTOCOL;
                    }
                }
            }
        };
        match frame.kind {
            Kind::Config => {
                let Some(new) = WorkerConfig::from_bytes(&frame.payload) else {
                    return EXIT_PROTOCOL;
                };
                config = new;
                crate::codec::arena::retain(!config.drop_arenas);
                crate::codec::lend::enable(config.lend_results);
                if config.capture && capture.is_none() {
                    match crate::output::Capture::install(frame.fds) {
                        Ok(c) => capture = Some(c),
                        Err(e) => {
                            eprintln!("tandem worker: could not capture output: {e}");
                            return EXIT_PROTOCOL;
                        }
                    }
                }
                if config.reports && meter.is_none() {
                    meter = Some(crate::usage::Meter::open());
                }
                if config.no_new_privs {
                    // Tasks run on this thread; threads and programs they
                    // start inherit the flag.
                    if let Err(e) = rustix::thread::set_no_new_privs(true) {
                        eprintln!("tandem worker: could not set no_new_privs: {e}");
                        return EXIT_PROTOCOL;
                    }
                }
                if config.memory_limit > 0 {
                    let limit = rustix::process::Rlimit {
                        current: Some(config.memory_limit),
                        maximum: rustix::process::getrlimit(rustix::process::Resource::As).maximum,
                    };
                    if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::As, limit) {
                        eprintln!("tandem worker: could not set the memory limit: {e}");
                    }
                }
            }
            Kind::Sandbox => {
                // After the initializer, before the first task.
                let reply = crate::sandbox::reply_to(&frame.payload);
                if wire::send(sock, Kind::Sandbox, &[&reply], &[]).is_err() {
                    return EXIT_PARENT_GONE;
                }
            }
            Kind::Mailbox => match frame.fds.into_iter().next() {
                Some(fd) => unmapped_slot = Some(fd),
                None => {
                    eprintln!("tandem worker: an answer slot came without its descriptor");
                    return EXIT_PROTOCOL;
                }
            },
            Kind::Board => match board_sink(&link, frame) {
                Ok(new) => sink = Some(new),
                Err(e) => {
                    eprintln!("tandem worker: could not map the batch board: {e}");
                    return EXIT_PROTOCOL;
                }
            },
            Kind::Task | Kind::Batch => {
                // Results the parent has read since the last task.
                crate::codec::lend::sweep();
                let mut usage = None;
                let frame_kind = frame.kind;
                #[allow(unused_mut)] // changed only by chaos
                let (id, mut outcome) = match (frame.kind, meter.as_mut()) {
                    (Kind::Task, Some(meter)) => {
                        let started = meter.start();
                        let ran = run_task(&link, frame, config.max_message());
                        usage = Some(meter.finish(started));
                        ran
                    }
                    (Kind::Task, None) => run_task(&link, frame, config.max_message()),
                    _ => run_batch(&link, frame, sink.as_ref(), config.max_message()),
                };
                #[cfg(feature = "chaos")]
                let forged = take_forged().map(|(forged, then)| {
                    outcome = forged;
                    then
                });
                // What the task printed is out before its result: the
                // parent may end this process as soon as it has the result.
                let _ = std::io::stdout().flush();
                let _ = std::io::stderr().flush();
                let (mut header, body) = task::done_parts(id, &outcome);
                let fds = match &outcome {
                    Outcome::Value(e) => e.descriptors(),
                    _ => Vec::new(),
                };
                let usage = usage.map(|u| task::with_usage(&mut header, u));
                let output = match (&capture, frame_kind) {
                    (Some(c), Kind::Task) => Some(c.take()),
                    (Some(c), _) => {
                        c.pass_through();
                        None
                    }
                    (None, _) => None,
                };
                let lengths = output.as_ref().map(|(out, err)| task::with_output(&mut header, out, err));
                let mut parts: Vec<&[u8]> = vec![&header];
                if let Some(usage) = &usage {
                    parts.push(usage);
                }
                if let (Some(lengths), Some((out, err))) = (&lengths, &output) {
                    parts.extend([&lengths[..], out, err]);
                }
                parts.push(body);
                // A lie the task asked for holds for its own answer only.
                #[cfg(feature = "chaos")]
                let lie = SLOT_SIZE_LIE.lock().unwrap_or_else(|e| e.into_inner()).take();
                #[cfg(not(feature = "chaos"))]
                let lie: Option<u64> = None;
                let slot = mailbox.as_ref().filter(|m| frame_kind == Kind::Task && m.wanted(id));
                let sent = match slot {
                    // The answer to a task sent on the lane: in the slot if
                    // it fits, with a wake-up only if a reader sleeps.
                    Some(slot) => {
                        let size: usize = parts.iter().map(|p| p.len()).sum();
                        if fds.is_empty() && size <= crate::mailbox::CAPACITY {
                            let rung = match lie {
                                #[cfg(feature = "chaos")]
                                Some(size) => slot.leave_claiming(id, &parts, size),
                                _ => slot.leave(id, &parts),
                            };
                            match rung {
                                true => wire::send(sock, Kind::Ring, &[], &[]),
                                false => Ok(()),
                            }
                        } else {
                            slot.on_socket(id);
                            wire::send(sock, Kind::Done, &parts, &fds)
                        }
                    }
                    None => wire::send(sock, Kind::Done, &parts, &fds),
                };
                if sent.is_err() {
                    return EXIT_PARENT_GONE;
                }
                if let Some(fd) = unmapped_slot.take() {
                    match crate::mailbox::Mailbox::open(fd) {
                        Ok(slot) => {
                            slot.attach();
                            mailbox = Some(slot);
                        }
                        Err(e) => {
                            eprintln!("tandem worker: could not map the answer slot: {e}");
                            return EXIT_PROTOCOL;
                        }
                    }
                }
                #[cfg(feature = "chaos")]
                if let Some(then) = forged {
                    // A forged lent answer has no descriptor: its `then`
                    // looks at none.
                    then(fds.first().copied().unwrap_or(sock));
                }
                #[cfg(feature = "chaos")]
                if let Some(bytes) = AFTER_ANSWER.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = crate::chaos::write_to_parent(&bytes);
                }
            }
            other => {
                eprintln!("tandem worker: unexpected {other:?} message from the parent");
                return EXIT_PROTOCOL;
            }
        }
    }
}

/// Map the board a Board frame brought, beside a copy of the socket the
/// batch entry sends overflowing results on.
fn board_sink(link: &ParentLink, mut frame: Frame) -> std::io::Result<batch::Sink> {
    let fd = frame.fds.pop().ok_or_else(|| std::io::Error::other("no descriptor came with it"))?;
    let board = batch::open_board(fd)?;
    let socket = link.socket.try_clone()?;
    Ok(batch::Sink { board: std::sync::Arc::new(board), socket: std::sync::Arc::new(socket) })
}

fn run_batch(link: &ParentLink, frame: Frame, sink: Option<&batch::Sink>, max: u64) -> (u64, Outcome) {
    let (id, call, inv) = match invocation(link, frame, max) {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    let Some(sink) = sink else {
        return (id, Outcome::Codec("a map batch came before its board".into()));
    };
    let Some(entry) = code::resolve::<task::BatchEntry>(&link.trusted, call) else {
        return (id, Outcome::Codec("the batch's entry point is not in this executable".into()));
    };
    (id, entry(task::BatchCall { inv, id, sink: sink.clone() }))
}

fn run_task(link: &ParentLink, frame: Frame, max: u64) -> (u64, Outcome) {
    let (id, call, inv) = match invocation(link, frame, max) {
        Ok(parts) => parts,
        Err(refused) => return refused,
    };
    let Some(trampoline) = code::resolve::<Trampoline>(&link.trusted, call) else {
        return (id, Outcome::Codec("the task's entry point is not in this executable".into()));
    };
    (id, trampoline(inv))
}

/// A Task or Batch frame as its id, entry offset and invocation.
fn invocation(link: &ParentLink, frame: Frame, max: u64) -> Result<(u64, i64, Invocation), (u64, Outcome)> {
    let Some((id, call, func)) = task::parse_task(&frame.payload) else {
        return Err((0, Outcome::Codec("a task message too short to read".into())));
    };
    let inv = Invocation {
        func,
        payload: frame.payload,
        arg_at: task::TASK_HEADER_LEN,
        fds: frame.fds,
        trusted: link.trusted,
        max,
    };
    Ok((id, call, inv))
}
