//! What a task writes to its standard output and error, captured per task
//! (`PoolBuilder::capture_output`).
//!
//! The parent makes two memfds for each new worker and sends them with its
//! Config frame; the worker puts them on descriptors 1 and 2 ([`Capture`]),
//! so everything written there, by the task or by programs it runs (which
//! inherit 1 and 2), lands in them. After each task the worker takes what
//! they hold, empties them and sends the bytes with the task's Done frame
//! (see `task::with_output`); after a map batch it passes them through to
//! the streams it inherited. When a worker dies under a task, the parent
//! reads the end of its stderr memfd, of which it kept a copy, for the
//! error ([`tail`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{MemfdFlags, SeekFrom};

/// At most this much of the end of a dead task's stderr goes into its
/// error (whole lines).
pub(crate) const TAIL_BYTES: u64 = 4096;

/// At most this much of each stream of one task is kept (its end).
pub(crate) const MAX_CAPTURE: u64 = 16 << 20;

/// The parent's side: a new worker's stdout and stderr memfds.
pub(crate) fn memfds() -> io::Result<[OwnedFd; 2]> {
    let out = rustix::fs::memfd_create("tandem-stdout", MemfdFlags::CLOEXEC)?;
    let err = rustix::fs::memfd_create("tandem-stderr", MemfdFlags::CLOEXEC)?;
    Ok([out, err])
}

/// The last lines (at most [`TAIL_BYTES`]) of what a dead worker's task
/// wrote to its stderr memfd; `None` if it wrote nothing.
pub(crate) fn tail(stderr: &OwnedFd) -> Option<String> {
    let (bytes, cut) = read_end(stderr, TAIL_BYTES).ok()?;
    let mut text = &bytes[..];
    if cut {
        // Start at a whole line.
        if let Some(at) = text.iter().position(|&b| b == b'\n') {
            text = &text[at + 1..];
        }
    }
    let text = String::from_utf8_lossy(text).trim_end().to_string();
    (!text.is_empty()).then_some(text)
}

/// The last `max` bytes of a memfd's contents, and whether anything before
/// them was left out.
fn read_end(fd: impl AsFd, max: u64) -> io::Result<(Vec<u8>, bool)> {
    let size = rustix::fs::fstat(&fd)?.st_size.max(0) as u64;
    let start = size.saturating_sub(max);
    let mut buf = vec![0u8; (size - start) as usize];
    let mut at = 0;
    while at < buf.len() {
        match rustix::io::pread(&fd, &mut buf[at..], start + at as u64)? {
            0 => break,
            n => at += n,
        }
    }
    buf.truncate(at);
    Ok((buf, start > 0))
}

/// The worker's side: descriptors 1 and 2 on the parent's memfds.
pub(crate) struct Capture {
    out: OwnedFd,
    err: OwnedFd,
    /// The streams the worker inherited, for a map batch's output.
    inherited: [OwnedFd; 2],
}

impl Capture {
    /// Put `memfds` (stdout, stderr) on descriptors 1 and 2.
    pub(crate) fn install(mut memfds: Vec<OwnedFd>) -> io::Result<Capture> {
        let (Some(err), Some(out), None) = (memfds.pop(), memfds.pop(), memfds.pop()) else {
            return Err(io::Error::other("capture needs two descriptors"));
        };
        let inherited = [
            rustix::io::fcntl_dupfd_cloexec(io::stdout().as_fd(), 3)?,
            rustix::io::fcntl_dupfd_cloexec(io::stderr().as_fd(), 3)?,
        ];
        rustix::stdio::dup2_stdout(&out)?;
        rustix::stdio::dup2_stderr(&err)?;
        Ok(Capture { out, err, inherited })
    }

    /// What the task wrote since the last call (the end of each stream, at
    /// most [`MAX_CAPTURE`]), leaving both empty.
    pub(crate) fn take(&self) -> (Vec<u8>, Vec<u8>) {
        (drain(&self.out).unwrap_or_default(), drain(&self.err).unwrap_or_default())
    }

    /// A map batch's output goes where the worker's would without capture.
    pub(crate) fn pass_through(&self) {
        let (out, err) = self.take();
        for (bytes, to) in [(out, &self.inherited[0]), (err, &self.inherited[1])] {
            let mut left = &bytes[..];
            while !left.is_empty() {
                match rustix::io::write(to, left) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = &left[n..],
                }
            }
        }
    }
}

/// The end of a memfd's contents; then empty it, its offset (shared with
/// descriptor 1 or 2) back at the start.
fn drain(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let (bytes, _) = read_end(fd, MAX_CAPTURE)?;
    if !bytes.is_empty() {
        rustix::fs::ftruncate(fd, 0)?;
        rustix::fs::seek(fd, SeekFrom::Start(0))?;
    }
    Ok(bytes)
}
