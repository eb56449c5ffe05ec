//! Reading frames: [`FrameReader`], the one reading engine behind every
//! receive, blocking or not.
//!
//! A reader is *exact* (it never reads a byte past the frame it wants, so
//! the socket can be handed to another reader between frames) or
//! *buffered* (one `recvmsg` brings a small frame's header and payload,
//! and whatever follows stays in the reader for the next call: one system
//! call per frame where an exact reader needs two). A buffered reader must
//! own its socket's reading side for as long as it lives.
//!
//! Descriptors ride on a frame's first byte. The kernel ends a read after
//! the first message that carries descriptors (`unix_stream_read_generic`),
//! so a read that brought descriptors ends inside the frame they belong to:
//! the one whose header starts inside that read and announces descriptors.
//! The reader records, with each batch, the stream range of the read that
//! brought it and gives a batch only to a header inside that range; a batch
//! no header claims, or a header whose batch is missing or of another size,
//! is refused as malformed.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};

use super::{CMSG_SPACE, Frame, HEADER_LEN, Kind, MAGIC, RecvError};
use crate::backoff::Backoff;

/// Payload bytes read per step while a large frame arrives.
const READ_STEP: usize = 1 << 20;
/// What one read of a buffered reader may bring: a whole small frame (a
/// task, an answer: most are under 100 bytes) and some of what follows.
/// Small, as a pool keeps one per worker on each side.
const AHEAD: usize = 4 * 1024;
const _: () = assert!(AHEAD <= READ_STEP, "bytes read ahead fit in one payload step");

/// When a spinning reader should first look for its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// It may be there already (the next of a stream): look at once.
    Now,
    /// It is the peer's answer to what this side just sent: yield first, so
    /// a peer on the same CPU runs before the first look (a look that finds
    /// nothing is a wasted system call).
    Reply,
}

/// Whether a read may sleep until bytes arrive.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    Yes,
    No,
}

/// What one step brought.
enum Step {
    /// A whole frame.
    Frame(Frame),
    /// Some bytes of one; read again.
    More,
    /// Nothing had arrived (only without waiting).
    WouldBlock,
}

/// Descriptors one read brought, with the stream range `[from, to)` of the
/// bytes that read brought: their frame's header starts inside it.
struct Batch {
    from: u64,
    to: u64,
    fds: Vec<OwnedFd>,
}

/// A frame whose header is read and checked, its payload still arriving.
struct Arriving {
    kind: Kind,
    len: usize,
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Frames arriving piece by piece: see the module docs.
pub struct FrameReader {
    /// Bytes read but not yet taken: `buf[at..filled]`. Its length is what
    /// one read may bring (a header for an exact reader).
    buf: Box<[u8]>,
    at: usize,
    filled: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    batches: VecDeque<Batch>,
    arriving: Option<Arriving>,
}

impl Default for FrameReader {
    fn default() -> FrameReader {
        FrameReader::exact()
    }
}

impl FrameReader {
    /// A reader that never reads past the frame it wants.
    pub fn exact() -> FrameReader {
        FrameReader::with_capacity(HEADER_LEN)
    }

    /// A reader that reads ahead (one system call per small frame); it must
    /// be the only reader of its socket for its whole life.
    pub fn buffered() -> FrameReader {
        FrameReader::with_capacity(AHEAD)
    }

    fn with_capacity(len: usize) -> FrameReader {
        FrameReader {
            buf: vec![0; len].into_boxed_slice(),
            at: 0,
            filled: 0,
            base: 0,
            batches: VecDeque::new(),
            arriving: None,
        }
    }

    /// True at a frame boundary with nothing read ahead (no byte, no
    /// descriptor).
    pub fn is_empty(&self) -> bool {
        self.at == self.filled && self.arriving.is_none() && self.batches.is_empty()
    }

    /// Read one frame, accepting at most `max_payload` bytes of payload.
    /// With a deadline the socket is polled before each read, so the call
    /// returns `TimedOut` even if the peer stalls halfway through a frame.
    pub fn recv(
        &mut self,
        sock: BorrowedFd<'_>,
        max_payload: u64,
        deadline: Option<Instant>,
    ) -> Result<Frame, RecvError> {
        let wait = if deadline.is_some() { Wait::No } else { Wait::Yes };
        loop {
            if let Some(frame) = self.take_buffered(max_payload)? {
                return Ok(frame);
            }
            if let Some(d) = deadline {
                wait_readable(sock, d)?;
            }
            match self.read(sock, max_payload, wait)? {
                Step::Frame(frame) => return Ok(frame),
                Step::More | Step::WouldBlock => {}
            }
        }
    }

    /// Read one frame if its first bytes arrive within the backoff budget
    /// ([`crate::backoff`]), trying without sleeping; `None` if nothing
    /// came. A started frame is read to its end. Trying the read itself,
    /// rather than polling first, saves a system call per frame.
    pub fn recv_spinning(
        &mut self,
        sock: BorrowedFd<'_>,
        max_payload: u64,
        expect: Expect,
    ) -> Result<Option<Frame>, RecvError> {
        if let Some(frame) = self.take_buffered(max_payload)? {
            return Ok(Some(frame));
        }
        let mut spinner = Backoff::ANSWER.begin();
        if expect == Expect::Reply && !spinner.pause() {
            return Ok(None);
        }
        loop {
            // Once a frame has started, the rest is read to its end.
            let spinning = self.at == self.filled && self.arriving.is_none();
            let wait = if spinning { Wait::No } else { Wait::Yes };
            match self.read(sock, max_payload, wait)? {
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

    /// Read one frame, trying without sleeping for the backoff budget
    /// before blocking: for a reader that often finds its next frame within
    /// microseconds, and would otherwise make its peer pay a cross-CPU
    /// wake-up.
    pub fn recv_spin_then_block(
        &mut self,
        sock: BorrowedFd<'_>,
        max_payload: u64,
        expect: Expect,
    ) -> Result<Frame, RecvError> {
        match self.recv_spinning(sock, max_payload, expect)? {
            Some(frame) => Ok(frame),
            None => self.recv(sock, max_payload, None),
        }
    }

    /// Read whatever has arrived, never waiting: `Some` once a whole frame
    /// is in, `None` while more must come. After an error the stream is
    /// unusable (its framing is lost) and the reader must be dropped.
    pub fn read_ready(&mut self, sock: BorrowedFd<'_>, max_payload: u64) -> Result<Option<Frame>, RecvError> {
        loop {
            if let Some(frame) = self.take_buffered(max_payload)? {
                return Ok(Some(frame));
            }
            match self.read(sock, max_payload, Wait::No)? {
                Step::Frame(frame) => return Ok(Some(frame)),
                Step::More => {}
                Step::WouldBlock => return Ok(None),
            }
        }
    }

    /// A whole frame from the bytes already read, if they hold one; a
    /// header among them is checked (and its frame's payload made to
    /// arrive) even if the rest is still to come.
    fn take_buffered(&mut self, max_payload: u64) -> Result<Option<Frame>, RecvError> {
        if self.arriving.is_some() || self.filled - self.at < HEADER_LEN {
            return Ok(None);
        }
        let at = self.at;
        let header: [u8; HEADER_LEN] = self.buf[at..at + HEADER_LEN].try_into().expect("a whole header");
        let (kind, len, announced) = check_header(&header, max_payload)?;
        let fds = self.claim_fds(self.base + at as u64, announced)?;
        let body = at + HEADER_LEN;
        let have = self.filled - body;
        if have >= len {
            self.at = body + len;
            return Ok(Some(Frame { kind, payload: self.buf[body..body + len].to_vec(), fds, lent: None }));
        }
        // `have` is under `AHEAD`, itself under a step.
        let mut payload = Vec::with_capacity(len.min(READ_STEP));
        payload.extend_from_slice(&self.buf[body..self.filled]);
        self.at = self.filled;
        self.arriving = Some(Arriving { kind, len, payload, fds });
        Ok(None)
    }

    /// The descriptors of the frame whose header starts at stream offset
    /// `header` and announces `announced` of them: the front batch if its
    /// read covered `header` (else it belongs to a later header, or, if its
    /// read ended before `header`, to none).
    fn claim_fds(&mut self, header: u64, announced: usize) -> Result<Vec<OwnedFd>, RecvError> {
        let front = self.batches.front().map(|b| (b.from, b.to, b.fds.len()));
        if front.is_some_and(|(_, to, _)| to <= header) {
            return Err(RecvError::Malformed("descriptors came on bytes that announced none".into()));
        }
        if announced == 0 {
            return Ok(Vec::new());
        }
        let carried = match front {
            Some((from, _, count)) if from <= header => count,
            _ => 0,
        };
        if carried != announced {
            return Err(RecvError::Malformed(format!(
                "the frame announced {announced} descriptors but carried {carried}"
            )));
        }
        Ok(self.batches.pop_front().map(|b| b.fds).unwrap_or_default())
    }

    /// One read from the socket: into the read-ahead buffer (when no frame
    /// is arriving), or of an arriving frame's payload, a step at a time.
    fn read(&mut self, sock: BorrowedFd<'_>, max_payload: u64, wait: Wait) -> Result<Step, RecvError> {
        let flags = if wait == Wait::No { RecvFlags::DONTWAIT } else { RecvFlags::empty() };
        if let Some(arriving) = &mut self.arriving {
            return Ok(match read_payload(sock, arriving, flags)? {
                Payload::Whole => {
                    let Arriving { kind, payload, fds, .. } = self.arriving.take().expect("arriving");
                    Step::Frame(Frame { kind, payload, fds, lent: None })
                }
                Payload::More => Step::More,
                Payload::WouldBlock => Step::WouldBlock,
            });
        }
        self.compact();
        // An exact reader's buffer is one header long: it reads only the
        // header's missing bytes.
        let end = self.buf.len();
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let held = self.filled;
        let mut iov = [IoSliceMut::new(&mut self.buf[held..end])];
        let got = match rustix::net::recvmsg(sock, &mut iov, &mut control, flags | RecvFlags::CMSG_CLOEXEC) {
            Ok(got) => got,
            Err(rustix::io::Errno::AGAIN) => return Ok(Step::WouldBlock),
            Err(rustix::io::Errno::INTR) => return Ok(Step::More),
            // A peer that died with our data unread resets the connection.
            Err(rustix::io::Errno::CONNRESET) if held == 0 => return Err(RecvError::Closed),
            Err(rustix::io::Errno::CONNRESET) => {
                return Err(RecvError::Truncated("the connection was reset inside a frame header".into()));
            }
            Err(e) => return Err(RecvError::Io(e.into())),
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(RecvError::Malformed("more descriptors than a frame may carry".into()));
        }
        if got.bytes == 0 {
            return Err(if held == 0 {
                RecvError::Closed
            } else {
                RecvError::Truncated("the connection closed inside a frame header".into())
            });
        }
        let from = self.base + held as u64;
        self.filled += got.bytes;
        if !fds.is_empty() {
            self.batches.push_back(Batch { from, to: self.base + self.filled as u64, fds });
        }
        Ok(match self.take_buffered(max_payload)? {
            Some(frame) => Step::Frame(frame),
            None => Step::More,
        })
    }

    /// Move the bytes not yet taken to the buffer's start.
    fn compact(&mut self) {
        if self.at > 0 {
            self.buf.copy_within(self.at..self.filled, 0);
            self.base += self.at as u64;
            self.filled -= self.at;
            self.at = 0;
        }
    }
}

/// What one read of an arriving payload brought.
enum Payload {
    Whole,
    More,
    WouldBlock,
}

/// Read some of an arriving frame's payload straight into it, never past
/// its end.
fn read_payload(
    sock: BorrowedFd<'_>,
    arriving: &mut Arriving,
    flags: RecvFlags,
) -> Result<Payload, RecvError> {
    let (len, start) = (arriving.len, arriving.payload.len());
    let want = (len - start).min(READ_STEP);
    // Zeroing a step before reading into it costs far less than the copy
    // out of the socket, and keeps this layer free of `unsafe`.
    arriving.payload.resize(start + want, 0);
    match rustix::net::recv(sock, &mut arriving.payload[start..], flags) {
        Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => {
            Err(RecvError::Truncated(format!("the connection closed after {start} of {len} payload bytes")))
        }
        Ok((n, _)) => {
            arriving.payload.truncate(start + n);
            Ok(if start + n == len { Payload::Whole } else { Payload::More })
        }
        Err(rustix::io::Errno::INTR) => {
            arriving.payload.truncate(start);
            Ok(Payload::More)
        }
        Err(rustix::io::Errno::AGAIN) => {
            arriving.payload.truncate(start);
            Ok(Payload::WouldBlock)
        }
        Err(e) => Err(RecvError::Io(e.into())),
    }
}

/// A whole header, checked before a byte of payload is taken: the length
/// is refused over the maximum before anything is allocated.
fn check_header(header: &[u8; HEADER_LEN], max_payload: u64) -> Result<(Kind, usize, usize), RecvError> {
    if header[..2] != MAGIC {
        return Err(RecvError::Malformed("bad magic: the peer is not speaking tandem's protocol".into()));
    }
    let kind = Kind::from_byte(header[2])
        .ok_or_else(|| RecvError::Malformed(format!("unknown frame kind {}", header[2])))?;
    let len = u64::from_le_bytes(header[4..].try_into().expect("8 bytes"));
    if len > max_payload {
        return Err(RecvError::Malformed(format!(
            "a message of {len} bytes is over the limit of {max_payload} bytes (raise the maximum message size if it is real)"
        )));
    }
    Ok((kind, len as usize, header[3] as usize))
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
