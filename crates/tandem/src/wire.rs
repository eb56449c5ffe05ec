//! Frames on a Unix stream socket, with descriptors riding along.
//!
//! A frame is a 12-byte header — magic (2 bytes), kind (1), descriptor count
//! (1), payload length (8, little endian) — then the payload. Descriptors go
//! as `SCM_RIGHTS` on the header's first byte. The reader never trusts the
//! length: it refuses anything over the caller's maximum before allocating,
//! and grows its buffer only as bytes actually arrive, so a peer that claims
//! 2^63 bytes costs nothing.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};

use crate::backoff::Backoff;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const MAGIC: [u8; 2] = [0x7a, 0xd3];
const HEADER_LEN: usize = 12;
/// The most descriptors one frame may carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// Control-message space for the most descriptors a frame may carry; a
/// constant, so each send and receive keeps it on the stack.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));
/// Default largest payload accepted: 1 GiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 30;
/// Payload bytes read per step while a large frame arrives.
const READ_STEP: usize = 1 << 20;

/// What a frame is for. Unknown kinds are refused as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Parent to worker: settings applied before the first task.
    Config = 1,
    /// Parent to worker: run a task.
    Task = 2,
    /// Worker to parent: a task's outcome.
    Done = 3,
    /// Parent to a fresh worker: become the fork-server template.
    BecomeForkServer = 4,
    /// Parent to template: fork a worker.
    Fork = 5,
    /// Template to parent: the forked worker (pid; socket and pidfd attached).
    Forked = 6,
    /// Template to parent: a forked worker exited (pid, how).
    Exited = 7,
    /// A channel message (ipc).
    Message = 8,
    /// Parent to worker: the board map batches report on (memfd attached).
    Board = 9,
    /// Parent to worker: run a map batch.
    Batch = 10,
    /// Worker to parent: results of some items of the running batch.
    Partial = 11,
    /// Parent to worker: apply this sandbox; worker to parent: what it
    /// enforced, or why it could not.
    Sandbox = 12,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Config,
            2 => Kind::Task,
            3 => Kind::Done,
            4 => Kind::BecomeForkServer,
            5 => Kind::Fork,
            6 => Kind::Forked,
            7 => Kind::Exited,
            8 => Kind::Message,
            9 => Kind::Board,
            10 => Kind::Batch,
            11 => Kind::Partial,
            12 => Kind::Sandbox,
            _ => return None,
        })
    }
}

/// A received frame.
#[derive(Debug)]
pub struct Frame {
    /// What it is.
    pub kind: Kind,
    /// Its bytes.
    pub payload: Vec<u8>,
    /// Descriptors that came with it, in order.
    pub fds: Vec<OwnedFd>,
}

/// Why no frame could be read.
#[derive(Debug)]
pub enum RecvError {
    /// The peer closed the socket at a frame boundary.
    Closed,
    /// The deadline passed before a whole frame arrived.
    TimedOut,
    /// The peer sent something that is not a valid frame.
    Malformed(String),
    /// The peer closed the connection in the middle of a frame (it died
    /// while writing, most likely).
    Truncated(String),
    /// The socket failed.
    Io(io::Error),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::Closed => write!(f, "the peer closed the connection"),
            RecvError::TimedOut => write!(f, "timed out waiting for a message"),
            RecvError::Malformed(why) => write!(f, "malformed message: {why}"),
            RecvError::Truncated(why) => write!(f, "cut-off message: {why}"),
            RecvError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Send one frame made of `parts`, with `fds` attached. Blocks until all of
/// it is in the socket; never raises SIGPIPE.
pub fn send(sock: BorrowedFd<'_>, kind: Kind, parts: &[&[u8]], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a message can carry at most {MAX_FDS} descriptors, not {}", fds.len()),
        ));
    }
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut header = [0u8; HEADER_LEN];
    header[..2].copy_from_slice(&MAGIC);
    header[2] = kind as u8;
    header[3] = fds.len() as u8;
    header[4..].copy_from_slice(&(len as u64).to_le_bytes());

    let mut pieces: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    pieces.push(&header);
    pieces.extend(parts.iter().copied().filter(|p| !p.is_empty()));

    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let (mut index, mut offset) = (0usize, 0usize);
    let mut first = true;
    while index < pieces.len() {
        let iov: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&pieces[index][offset..]))
            .chain(pieces[index + 1..].iter().map(|p| IoSlice::new(p)))
            .take(64)
            .collect();
        let sent = if first {
            rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)
        } else {
            rustix::net::sendmsg(sock, &iov, &mut SendAncillaryBuffer::default(), SendFlags::NOSIGNAL)
        };
        let mut sent = match sent {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        first = false;
        while sent > 0 {
            let left = pieces[index].len() - offset;
            if sent >= left {
                sent -= left;
                index += 1;
                offset = 0;
            } else {
                offset += sent;
                sent = 0;
            }
        }
    }
    Ok(())
}

/// Wait until `sock` is readable or `deadline` passes.
fn wait_readable(sock: BorrowedFd<'_>, deadline: Instant) -> Result<(), RecvError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RecvError::TimedOut);
        }
        let timeout = Timespec::try_from(left).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 });
        let mut pfd = [PollFd::new(&sock, PollFlags::IN)];
        match rustix::event::poll(&mut pfd, Some(&timeout)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(RecvError::Io(e.into())),
        }
    }
}

/// Read one frame, accepting at most `max_payload` bytes of payload.
///
/// With a deadline the socket is polled before each read, so the call
/// returns `TimedOut` even if the peer stalls halfway through a frame.
pub fn recv(sock: BorrowedFd<'_>, max_payload: u64, deadline: Option<Instant>) -> Result<Frame, RecvError> {
    recv_frame(sock, max_payload, deadline, false).map(|frame| frame.expect("only a spin gives up"))
}

/// Read one frame if its first bytes arrive within the backoff budget
/// ([`crate::backoff`]), trying without sleeping; `None` if nothing came. A started
/// frame is read to its end. Trying the read itself, rather than polling
/// first, saves a system call per frame on the fast path.
pub fn recv_spinning(sock: BorrowedFd<'_>, max_payload: u64) -> Result<Option<Frame>, RecvError> {
    recv_frame(sock, max_payload, None, true)
}

/// Read one frame, trying without sleeping for the backoff budget before
/// blocking: for a reader that often finds its next frame within
/// microseconds, and would otherwise make its peer pay a cross-CPU wake-up.
pub fn recv_spin_then_block(sock: BorrowedFd<'_>, max_payload: u64) -> Result<Frame, RecvError> {
    match recv_spinning(sock, max_payload)? {
        Some(frame) => Ok(frame),
        None => recv(sock, max_payload, None),
    }
}

fn recv_frame(
    sock: BorrowedFd<'_>,
    max_payload: u64,
    deadline: Option<Instant>,
    spin: bool,
) -> Result<Option<Frame>, RecvError> {
    let mut reader = FrameReader::new();
    let mut spinner = Backoff::ANSWER.begin();
    loop {
        if let Some(d) = deadline {
            wait_readable(sock, d)?;
        }
        let spinning = spin && reader.is_empty();
        let wait = if deadline.is_some() || spinning { Wait::No } else { Wait::Yes };
        match reader.step(sock, max_payload, wait)? {
            Step::Frame(frame) => return Ok(Some(frame)),
            Step::More => {}
            Step::WouldBlock => {
                if spinning && !spinner.pause() {
                    return Ok(None);
                }
            }
        }
    }
}

/// Whether a read may sleep until bytes arrive.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

/// What one read brought.
enum Step {
    /// A whole frame.
    Frame(Frame),
    /// Some bytes of one; read again.
    More,
    /// Nothing had arrived (only without waiting).
    WouldBlock,
}

/// A frame arriving piece by piece: the one reading engine behind every
/// receive, blocking ([`recv`]) or not ([`FrameReader::read_ready`], for an
/// event loop that must never wait on one peer while others have answered).
///
#[derive(Default)]
pub struct FrameReader {
    header: [u8; HEADER_LEN],
    filled: usize,
    fds: Vec<OwnedFd>,
    /// Once the header is whole and checked: the kind and payload length.
    announced: Option<(Kind, usize)>,
    payload: Vec<u8>,
}

impl FrameReader {
    /// A reader at a frame boundary.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// True at a frame boundary (no byte of the next frame read yet).
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Read whatever has arrived, never waiting: `Some` once a whole frame
    /// is in, `None` while more must come. After an error the stream is
    /// unusable (its framing is lost) and the reader must be dropped.
    pub fn read_ready(&mut self, sock: BorrowedFd<'_>, max_payload: u64) -> Result<Option<Frame>, RecvError> {
        loop {
            match self.step(sock, max_payload, Wait::No)? {
                Step::Frame(frame) => return Ok(Some(frame)),
                Step::More => {}
                Step::WouldBlock => return Ok(None),
            }
        }
    }

    /// One read: of the header's missing bytes (descriptors ride on its
    /// first byte), or of the payload, a step at a time.
    fn step(&mut self, sock: BorrowedFd<'_>, max_payload: u64, wait: Wait) -> Result<Step, RecvError> {
        let flags = if wait == Wait::No { RecvFlags::DONTWAIT } else { RecvFlags::empty() };
        let Some((kind, len)) = self.announced else {
            let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut self.header[self.filled..])];
            let got =
                match rustix::net::recvmsg(sock, &mut iov, &mut control, flags | RecvFlags::CMSG_CLOEXEC) {
                    Ok(got) => got,
                    Err(rustix::io::Errno::AGAIN) => return Ok(Step::WouldBlock),
                    Err(rustix::io::Errno::INTR) => return Ok(Step::More),
                    // A peer that died with our data unread resets the connection.
                    Err(rustix::io::Errno::CONNRESET) if self.filled == 0 => return Err(RecvError::Closed),
                    Err(rustix::io::Errno::CONNRESET) => {
                        return Err(RecvError::Truncated(
                            "the connection was reset inside a frame header".into(),
                        ));
                    }
                    Err(e) => return Err(RecvError::Io(e.into())),
                };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = message {
                    self.fds.extend(received);
                }
            }
            if got.flags.contains(ReturnFlags::CTRUNC) {
                return Err(RecvError::Malformed("more descriptors than a frame may carry".into()));
            }
            if got.bytes == 0 {
                return Err(if self.filled == 0 {
                    RecvError::Closed
                } else {
                    RecvError::Truncated("the connection closed inside a frame header".into())
                });
            }
            self.filled += got.bytes;
            if self.filled < HEADER_LEN {
                return Ok(Step::More);
            }
            let (kind, len) = self.check_header(max_payload)?;
            self.announced = Some((kind, len));
            self.payload = Vec::with_capacity(len.min(READ_STEP));
            return Ok(if len == 0 { Step::Frame(self.take(kind)) } else { Step::More });
        };
        let start = self.payload.len();
        let want = (len - start).min(READ_STEP);
        // Zeroing a step before reading into it costs far less than the
        // copy out of the socket, and keeps this layer free of `unsafe`.
        self.payload.resize(start + want, 0);
        match rustix::net::recv(sock, &mut self.payload[start..], flags) {
            Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => Err(RecvError::Truncated(format!(
                "the connection closed after {start} of {len} payload bytes"
            ))),
            Ok((n, _)) => {
                self.payload.truncate(start + n);
                Ok(if start + n == len { Step::Frame(self.take(kind)) } else { Step::More })
            }
            Err(rustix::io::Errno::INTR) => {
                self.payload.truncate(start);
                Ok(Step::More)
            }
            Err(rustix::io::Errno::AGAIN) => {
                self.payload.truncate(start);
                Ok(Step::WouldBlock)
            }
            Err(e) => Err(RecvError::Io(e.into())),
        }
    }

    /// The whole header, checked before a byte of payload is taken: the
    /// length is refused over the maximum before anything is allocated.
    fn check_header(&self, max_payload: u64) -> Result<(Kind, usize), RecvError> {
        let header = &self.header;
        if header[..2] != MAGIC {
            return Err(RecvError::Malformed("bad magic: the peer is not speaking tandem's protocol".into()));
        }
        let kind = Kind::from_byte(header[2])
            .ok_or_else(|| RecvError::Malformed(format!("unknown frame kind {}", header[2])))?;
        if self.fds.len() != header[3] as usize {
            return Err(RecvError::Malformed(format!(
                "the frame announced {} descriptors but carried {}",
                header[3],
                self.fds.len()
            )));
        }
        let len = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
        if len > max_payload {
            return Err(RecvError::Malformed(format!(
                "a message of {len} bytes is over the limit of {max_payload} bytes (raise the maximum message size if it is real)"
            )));
        }
        Ok((kind, len as usize))
    }

    /// The finished frame; the reader is back at a frame boundary.
    fn take(&mut self, kind: Kind) -> Frame {
        self.filled = 0;
        self.announced = None;
        Frame { kind, payload: std::mem::take(&mut self.payload), fds: std::mem::take(&mut self.fds) }
    }
}

/// Close both directions of `sock` for writing: the peer reads end of file.
pub fn shutdown_write(sock: &OwnedFd) {
    let _ = rustix::net::shutdown(sock.as_fd(), rustix::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap()
    }

    #[test]
    fn frames_round_trip_with_descriptors() {
        let (a, b) = pair();
        let (x, _y) = pair();
        send(a.as_fd(), Kind::Task, &[b"hello ", b"world"], &[x.as_fd()]).unwrap();
        let f = recv(b.as_fd(), 1 << 20, None).unwrap();
        assert_eq!(f.kind, Kind::Task);
        assert_eq!(f.payload, b"hello world");
        assert_eq!(f.fds.len(), 1);
    }

    #[test]
    fn refuses_huge_claims_without_allocating() {
        let (a, b) = pair();
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2] = Kind::Done as u8;
        header[4..].copy_from_slice(&(1u64 << 63).to_le_bytes());
        rustix::net::send(&a, &header, SendFlags::NOSIGNAL).unwrap();
        match recv(b.as_fd(), DEFAULT_MAX_MESSAGE, None) {
            Err(RecvError::Malformed(why)) => assert!(why.contains("over the limit"), "{why}"),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn garbage_and_truncation_are_malformed_not_panics() {
        let (a, b) = pair();
        rustix::net::send(&a, b"garbage garbage", SendFlags::NOSIGNAL).unwrap();
        assert!(matches!(recv(b.as_fd(), 1 << 20, None), Err(RecvError::Malformed(_))));

        let (a, b) = pair();
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2] = Kind::Done as u8;
        header[4..].copy_from_slice(&100u64.to_le_bytes());
        rustix::net::send(&a, &header, SendFlags::NOSIGNAL).unwrap();
        rustix::net::send(&a, b"short", SendFlags::NOSIGNAL).unwrap();
        drop(a);
        assert!(matches!(recv(b.as_fd(), 1 << 20, None), Err(RecvError::Truncated(_))));
    }

    #[test]
    fn clean_close_is_closed_and_deadline_times_out() {
        let (a, b) = pair();
        let deadline = Instant::now() + std::time::Duration::from_millis(20);
        assert!(matches!(recv(b.as_fd(), 1 << 20, Some(deadline)), Err(RecvError::TimedOut)));
        drop(a);
        assert!(matches!(recv(b.as_fd(), 1 << 20, None), Err(RecvError::Closed)));
    }

    #[test]
    fn a_frame_read_without_waiting_arrives_piece_by_piece() {
        let (a, b) = pair();
        let (x, _y) = pair();
        let mut reader = FrameReader::new();
        assert!(reader.read_ready(b.as_fd(), 1024).unwrap().is_none(), "nothing sent yet");
        let mut bytes = Vec::new();
        let (c, d) = pair();
        send(c.as_fd(), Kind::Message, &[b"hello"], &[]).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = rustix::net::recv(&d, &mut buf, RecvFlags::empty()).unwrap();
        bytes.extend_from_slice(&buf[..n]);
        // The header's first byte with a descriptor, then the rest a byte at a time.
        let fd = [x.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fd));
        let mut first = bytes.clone();
        first[3] = 1;
        rustix::net::sendmsg(&a, &[IoSlice::new(&first[..1])], &mut control, SendFlags::NOSIGNAL).unwrap();
        for i in 1..first.len() {
            assert!(reader.read_ready(b.as_fd(), 1024).unwrap().is_none(), "only {i} bytes so far");
            rustix::net::send(&a, &first[i..=i], SendFlags::NOSIGNAL).unwrap();
        }
        let frame = reader.read_ready(b.as_fd(), 1024).unwrap().expect("whole now");
        assert_eq!(
            (frame.kind, frame.payload.as_slice(), frame.fds.len()),
            (Kind::Message, &b"hello"[..], 1)
        );
        assert!(reader.is_empty());
        drop(a);
        assert!(matches!(reader.read_ready(b.as_fd(), 1024), Err(RecvError::Closed)));
    }

    #[test]
    fn large_frames_arrive_whole() {
        let (a, b) = pair();
        let big = vec![7u8; 8 << 20];
        let sender = std::thread::spawn(move || send(a.as_fd(), Kind::Done, &[&big], &[]).unwrap());
        let f = recv(b.as_fd(), 1 << 30, None).unwrap();
        sender.join().unwrap();
        assert_eq!(f.payload.len(), 8 << 20);
        assert!(f.payload.iter().all(|&x| x == 7));
    }
}
