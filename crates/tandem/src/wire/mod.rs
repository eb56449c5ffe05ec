//! Frames on a Unix stream socket, with descriptors riding along.
//!
//! A frame is a 12-byte header — magic (2 bytes), kind (1), descriptor count
//! (1), payload length (8, little endian) — then the payload. Descriptors go
//! as `SCM_RIGHTS` on the header's first byte. The reader never trusts the
//! length: it refuses anything over the caller's maximum before allocating,
//! and grows its buffer only as bytes actually arrive, so a peer that claims
//! 2^63 bytes costs nothing.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

mod reader;
pub use reader::{Expect, FrameReader};

const MAGIC: [u8; 2] = [0x7a, 0xd3];
const HEADER_LEN: usize = 12;
/// The most descriptors one frame may carry (the kernel's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;
/// Control-message space for the most descriptors a frame may carry; a
/// constant, so each send and receive keeps it on the stack.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));
/// Default largest payload accepted: 1 GiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 1 << 30;

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
    /// Parent to a pool's worker: its slot for lane tasks and their
    /// answers (memfd attached; see `mailbox`).
    Mailbox = 13,
    /// Either way: something is in the slot for you (a wake-up only).
    Ring = 14,
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
            13 => Kind::Mailbox,
            14 => Kind::Ring,
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
    /// A result's bytes, read out of its worker's memory after the frame
    /// came (`codec::lend`): what the payload's lent reference stands for.
    pub lent: Option<Vec<u8>>,
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

    // A small frame without descriptors is copied into one buffer on the
    // stack and sent with `send(2)`: no message header or iovec array for
    // the kernel to copy in.
    const SMALL: usize = 1024;
    let total = HEADER_LEN + len;
    if fds.is_empty() && total <= SMALL {
        let mut frame = [0u8; SMALL];
        frame[..HEADER_LEN].copy_from_slice(&header);
        let mut at = HEADER_LEN;
        for part in parts {
            frame[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        let mut done = 0;
        while done < total {
            match rustix::net::send(sock, &frame[done..total], SendFlags::NOSIGNAL) {
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(());
    }
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    // No allocation on this path: the pieces not yet sent go on the stack,
    // up to `MAX_IOV` per call.
    const MAX_IOV: usize = 64;
    let mut done = 0usize;
    while done < total {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        let mut skip = done;
        for piece in std::iter::once(&header[..]).chain(parts.iter().copied()) {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            iov[count] = IoSlice::new(&piece[skip..]);
            skip = 0;
            count += 1;
            if count == MAX_IOV {
                break;
            }
        }
        // The descriptors go with the first bytes only.
        let sent = if done == 0 {
            rustix::net::sendmsg(sock, &iov[..count], &mut control, SendFlags::NOSIGNAL)
        } else {
            rustix::net::sendmsg(
                sock,
                &iov[..count],
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            )
        };
        match sent {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Read one frame with an exact reader, accepting at most `max_payload`
/// bytes of payload (see [`FrameReader::recv`]).
pub fn recv(sock: BorrowedFd<'_>, max_payload: u64, deadline: Option<Instant>) -> Result<Frame, RecvError> {
    FrameReader::exact().recv(sock, max_payload, deadline)
}

/// Read one frame with an exact reader, trying without sleeping for the
/// backoff budget before blocking (see [`FrameReader::recv_spin_then_block`]).
pub fn recv_spin_then_block(sock: BorrowedFd<'_>, max_payload: u64) -> Result<Frame, RecvError> {
    FrameReader::exact().recv_spin_then_block(sock, max_payload, Expect::Now)
}

/// Close both directions of `sock` for writing: the peer reads end of file.
pub fn shutdown_write(sock: &OwnedFd) {
    let _ = rustix::net::shutdown(sock.as_fd(), rustix::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType, socketpair};

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
        let mut reader = FrameReader::exact();
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

    /// The inode of a descriptor, to tell which one arrived.
    fn inode(fd: BorrowedFd<'_>) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    #[test]
    fn a_buffered_reader_takes_frames_sent_back_to_back_each_with_its_own_descriptors() {
        let (a, b) = pair();
        let (x, _x) = pair();
        let (y, _y) = pair();
        let (z, _z) = pair();
        send(a.as_fd(), Kind::Config, &[b"one"], &[]).unwrap();
        send(a.as_fd(), Kind::Board, &[b"two"], &[x.as_fd()]).unwrap();
        send(a.as_fd(), Kind::Task, &[b"three"], &[]).unwrap();
        send(a.as_fd(), Kind::Task, &[b"four"], &[y.as_fd(), z.as_fd()]).unwrap();
        send(a.as_fd(), Kind::Task, &[&vec![5u8; 100_000]], &[]).unwrap();
        send(a.as_fd(), Kind::Done, &[], &[]).unwrap();
        drop(a);
        let mut reader = FrameReader::buffered();
        let mut got = Vec::new();
        loop {
            match reader.recv(b.as_fd(), 1 << 20, None) {
                Ok(f) => got.push((
                    f.kind,
                    f.payload,
                    f.fds.iter().map(|fd| inode(fd.as_fd())).collect::<Vec<_>>(),
                )),
                Err(RecvError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let want = vec![
            (Kind::Config, b"one".to_vec(), vec![]),
            (Kind::Board, b"two".to_vec(), vec![inode(x.as_fd())]),
            (Kind::Task, b"three".to_vec(), vec![]),
            (Kind::Task, b"four".to_vec(), vec![inode(y.as_fd()), inode(z.as_fd())]),
            (Kind::Task, vec![5u8; 100_000], vec![]),
            (Kind::Done, vec![], vec![]),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_buffered_reader_keeps_frames_whole_across_its_buffer_boundary() {
        // 500 frames of 21 to 30 bytes: headers and payloads straddle the
        // end of the read-ahead buffer at varying points; every 37th
        // carries a descriptor.
        let (a, b) = pair();
        let (x, _x) = pair();
        let sender = std::thread::spawn(move || {
            for i in 0..500u32 {
                let payload = vec![i as u8; 9 + (i % 10) as usize];
                let fds: &[BorrowedFd<'_>] = if i % 37 == 0 { &[x.as_fd()] } else { &[] };
                send(a.as_fd(), Kind::Message, &[&payload], fds).unwrap();
            }
        });
        let mut reader = FrameReader::buffered();
        for i in 0..500u32 {
            let f = reader.recv(b.as_fd(), 1024, None).unwrap();
            assert_eq!(f.payload, vec![i as u8; 9 + (i % 10) as usize], "frame {i}");
            assert_eq!(f.fds.len(), usize::from(i % 37 == 0), "frame {i}");
        }
        sender.join().unwrap();
        assert!(reader.is_empty());
    }

    #[test]
    fn a_buffered_reader_brings_a_small_frame_in_one_read_and_keeps_the_next() {
        let (a, b) = pair();
        send(a.as_fd(), Kind::Task, &[b"first"], &[]).unwrap();
        send(a.as_fd(), Kind::Task, &[b"second"], &[]).unwrap();
        let mut reader = FrameReader::buffered();
        assert_eq!(reader.read_ready(b.as_fd(), 1024).unwrap().unwrap().payload, b"first");
        assert!(!reader.is_empty(), "the second frame was read with the first");
        // Nothing is left in the socket: the second comes from the reader.
        let mut byte = [0u8; 1];
        assert!(matches!(
            rustix::net::recv(&b, &mut byte, RecvFlags::DONTWAIT),
            Err(rustix::io::Errno::AGAIN)
        ));
        assert_eq!(reader.read_ready(b.as_fd(), 1024).unwrap().unwrap().payload, b"second");
        assert!(reader.is_empty());
    }

    #[test]
    fn an_exact_reader_leaves_the_next_frame_in_the_socket() {
        let (a, b) = pair();
        let (x, _x) = pair();
        send(a.as_fd(), Kind::Task, &[b"first"], &[]).unwrap();
        send(a.as_fd(), Kind::Board, &[b"second"], &[x.as_fd()]).unwrap();
        assert_eq!(recv(b.as_fd(), 1024, None).unwrap().payload, b"first");
        let second = recv(b.as_fd(), 1024, None).unwrap();
        assert_eq!((second.payload.as_slice(), second.fds.len()), (&b"second"[..], 1));
    }

    #[test]
    fn descriptors_on_a_frame_that_announced_none_or_missing_ones_are_malformed() {
        for reader in [FrameReader::exact as fn() -> FrameReader, FrameReader::buffered] {
            let (x, _x) = pair();
            // A header announcing no descriptor, sent with one.
            let (a, b) = pair();
            let mut header = [0u8; HEADER_LEN];
            header[..2].copy_from_slice(&MAGIC);
            header[2] = Kind::Done as u8;
            let fd = [x.as_fd()];
            let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(&fd));
            rustix::net::sendmsg(&a, &[IoSlice::new(&header)], &mut control, SendFlags::NOSIGNAL).unwrap();
            send(a.as_fd(), Kind::Done, &[], &[]).unwrap();
            let mut r = reader();
            let first = r.recv(b.as_fd(), 1024, None);
            let second = first.is_ok().then(|| r.recv(b.as_fd(), 1024, None));
            assert!(
                matches!(first, Err(RecvError::Malformed(_)))
                    || matches!(second, Some(Err(RecvError::Malformed(_)))),
                "{first:?} {second:?}"
            );
            // A header announcing two, sent with none.
            let (a, b) = pair();
            header[3] = 2;
            rustix::net::send(&a, &header, SendFlags::NOSIGNAL).unwrap();
            match reader().recv(b.as_fd(), 1024, None) {
                Err(RecvError::Malformed(why)) => assert!(why.contains("announced 2"), "{why}"),
                other => panic!("expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_reply_spin_gives_up_without_a_frame_and_loses_nothing() {
        let (a, b) = pair();
        let mut reader = FrameReader::buffered();
        assert!(reader.recv_spinning(b.as_fd(), 1024, Expect::Reply).unwrap().is_none());
        send(a.as_fd(), Kind::Done, &[b"late"], &[]).unwrap();
        let frame = reader.recv_spinning(b.as_fd(), 1024, Expect::Reply).unwrap().expect("sent");
        assert_eq!(frame.payload, b"late");
    }
}
