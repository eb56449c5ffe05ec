//! fork(2) of a child that makes raw syscalls only, and `_exit(2)`.
//!
//! After `fork` in a multi-threaded process the child may only make
//! async-signal-safe calls, because locks held by other threads stay locked.
//! So a floor child runs one fixed job from [`Child`] (direct syscalls,
//! atomics, memory allocated before the fork) and `_exit`s. The jobs' code
//! lives here, beside the `fork` whose soundness depends on it.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::process::Pid;

use super::region::{SharedRegion, serve_shm_echo, serve_shm_sink};

/// Exit now, without running atexit handlers or unwinding: `_exit(2)`.
///
/// A forked child must not flush buffers it shares with its parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// What a forked floor child does between `fork` and `_exit`.
pub enum Child<'a> {
    /// Exit at once with status 0: the cost of a bare fork.
    ExitImmediately,
    /// Echo every byte read from `input` to `output` until end of file:
    /// the far side of a pipe round trip.
    Echo {
        /// Read end.
        input: BorrowedFd<'a>,
        /// Write end.
        output: BorrowedFd<'a>,
    },
    /// For every byte read from `input`, sleep `nanos`, then write the byte
    /// to `output`, until end of file: the far side of a wide pool's floor
    /// (a worker that takes a task, waits, answers).
    SleepyEcho {
        /// Read end.
        input: BorrowedFd<'a>,
        /// Write end.
        output: BorrowedFd<'a>,
        /// How long each byte waits.
        nanos: u32,
    },
    /// Block reading `input` (which nobody writes) until killed or EOF:
    /// an idle process, for memory measurements.
    Idle {
        /// Read end that stays silent.
        input: BorrowedFd<'a>,
    },
    /// [`serve_sink`]: the far side of a bandwidth measurement.
    Sink {
        /// Data comes in here.
        input: BorrowedFd<'a>,
        /// One byte per `ack_every` bytes goes out here.
        ack: BorrowedFd<'a>,
        /// Scratch space, allocated before the fork (the child must not allocate).
        buf: &'a mut [u8],
        /// Bytes per acknowledgement.
        ack_every: usize,
    },
    /// [`serve_shm_echo`].
    ShmEcho {
        /// The shared control words.
        region: &'a SharedRegion,
        /// Spins before sleeping.
        spin: u32,
    },
    /// [`serve_shm_sink`].
    ShmSink {
        /// The shared control words and data.
        region: &'a SharedRegion,
        /// Spins before sleeping.
        spin: u32,
    },
}

/// Read into `buf` until EOF, acknowledging every `ack_every` bytes: read(2)
/// and write(2) only. Safe code without allocation, shared by the thread and
/// the child version.
pub fn serve_sink(input: BorrowedFd<'_>, ack: BorrowedFd<'_>, buf: &mut [u8], ack_every: usize) {
    let mut pending = 0usize;
    loop {
        match rustix::io::read(input, &mut *buf) {
            Ok(0) => return,
            Ok(n) => {
                pending += n;
                while pending >= ack_every {
                    pending -= ack_every;
                    if rustix::io::write(ack, &[1]).is_err() {
                        return;
                    }
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

/// fork(2) a child that runs one [`Child`] job and `_exit(2)`s. Sound in a
/// multi-threaded parent because the job is raw syscalls and atomics only.
/// Returns the child's pid; the caller must reap it (kill it first if it may
/// still run).
pub fn fork_child(job: Child<'_>) -> io::Result<Pid> {
    // SAFETY: the child runs only the job below and `_exit`: rustix read/
    // write/futex calls (direct syscalls), atomic loads and stores, and
    // writes into memory allocated before the fork. None allocates or takes
    // a lock, so no lock held by another parent thread can be touched.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            match job {
                Child::ExitImmediately => {}
                Child::Echo { input, output } => {
                    let mut byte = [0u8; 1];
                    while let Ok(1) = rustix::io::read(input, &mut byte) {
                        if rustix::io::write(output, &byte).is_err() {
                            break;
                        }
                    }
                }
                Child::SleepyEcho { input, output, nanos } => {
                    let mut byte = [0u8; 1];
                    let wait = rustix::thread::Timespec { tv_sec: 0, tv_nsec: i64::from(nanos) };
                    while let Ok(1) = rustix::io::read(input, &mut byte) {
                        let _ = rustix::thread::nanosleep(&wait);
                        if rustix::io::write(output, &byte).is_err() {
                            break;
                        }
                    }
                }
                Child::Idle { input } => {
                    let mut byte = [0u8; 1];
                    while let Err(rustix::io::Errno::INTR) = rustix::io::read(input, &mut byte) {}
                }
                Child::Sink { input, ack, buf, ack_every } => serve_sink(input, ack, buf, ack_every),
                Child::ShmEcho { region, spin } => serve_shm_echo(region, spin),
                Child::ShmSink { region, spin } => serve_shm_sink(region, spin),
            }
            exit_now(0)
        }
        pid => Ok(Pid::from_raw(pid).expect("fork returned a positive pid")),
    }
}
