//! The raw OS floor: the cheapest way the OS does what tandem does, measured
//! by the benchmarks and by `tandem compare` in the same run as tandem.
//!
//! ```
//! let t = tandem::floor::fork_wait().unwrap();
//! assert!(t.as_nanos() > 0);
//! ```

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::process::{WaitId, WaitIdOptions};

use crate::sys::floor_raw::{REPLY, REQUEST, STOP, SharedRegion};
use crate::sys::fork::{RawChild, fork_raw_child};

fn reap(pid: rustix::process::Pid) -> io::Result<()> {
    loop {
        match rustix::process::waitid(WaitId::Pid(pid), WaitIdOptions::EXITED) {
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One bare `fork` + `_exit` + `waitid`: the floor of starting a process.
pub fn fork_wait() -> io::Result<Duration> {
    let start = Instant::now();
    let pid = fork_raw_child(RawChild::ExitImmediately)?;
    reap(pid)?;
    Ok(start.elapsed())
}

/// One `posix_spawn` of `/bin/true` and its wait (std's `Command` uses
/// posix_spawn when it can): the floor of starting a new program.
pub fn spawn_true_wait() -> io::Result<Duration> {
    let start = Instant::now();
    std::process::Command::new("/bin/true").status()?;
    Ok(start.elapsed())
}

/// One `std::thread::spawn` + `join`: the floor of starting a thread.
pub fn thread_spawn_join() -> Duration {
    let start = Instant::now();
    std::thread::spawn(|| {}).join().expect("empty thread");
    start.elapsed()
}

/// A child process that echoes bytes on a pair of pipes: the far side of a
/// pipe round trip. The child exits when it is dropped.
pub struct PipeEcho {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    pid: rustix::process::Pid,
}

impl PipeEcho {
    /// Fork the echoing child.
    pub fn start() -> io::Result<PipeEcho> {
        let (child_in, to_child) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (from_child, child_out) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let pid = fork_raw_child(RawChild::Echo { input: &child_in, output: &child_out })?;
        Ok(PipeEcho { to_child: Some(to_child), from_child, pid })
    }

    /// One byte there and back.
    pub fn round_trip(&mut self) -> io::Result<()> {
        let to = self.to_child.as_ref().expect("open until drop");
        rustix::io::write(to, &[1])?;
        let mut b = [0u8; 1];
        if rustix::io::read(&self.from_child, &mut b)? != 1 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the echo child exited"));
        }
        Ok(())
    }
}

impl Drop for PipeEcho {
    fn drop(&mut self) {
        // The forked child inherited this side's write end too, so closing
        // ours never gives it end of file: stop it outright.
        self.to_child = None;
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        let _ = reap(self.pid);
    }
}

/// Which kernel channel carries bytes between the two sides of an [`Echo`]
/// or a [`Sink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Two pipes, one each way.
    Pipe,
    /// A Unix stream socket pair.
    UnixSocket,
    /// A TCP connection on 127.0.0.1 (Nagle off).
    TcpLoopback,
}

/// Who sits on the far side of a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Another thread of this process.
    Thread,
    /// A forked child process that makes raw syscalls only.
    Process,
}

/// Both directions of a link: what this side keeps and what the far side gets.
struct Link {
    near_in: OwnedFd,
    near_out: OwnedFd,
    far_in: OwnedFd,
    far_out: OwnedFd,
}

impl Link {
    /// A link over one two-way connection: each side reads and writes the
    /// same socket, through two descriptors.
    fn duplex(near: OwnedFd, far: OwnedFd) -> io::Result<Link> {
        Ok(Link { near_out: near.try_clone()?, near_in: near, far_out: far.try_clone()?, far_in: far })
    }

    fn open(transport: Transport) -> io::Result<Link> {
        match transport {
            Transport::Pipe => {
                let (far_in, near_out) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
                let (near_in, far_out) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
                Ok(Link { near_in, near_out, far_in, far_out })
            }
            Transport::UnixSocket => {
                let (near, far) = std::os::unix::net::UnixStream::pair()?;
                Link::duplex(near.into(), far.into())
            }
            Transport::TcpLoopback => {
                let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
                let near = std::net::TcpStream::connect(listener.local_addr()?)?;
                let (far, _) = listener.accept()?;
                near.set_nodelay(true)?;
                far.set_nodelay(true)?;
                Link::duplex(near.into(), far.into())
            }
        }
    }
}

/// The far side of a measurement: a thread to join or a child to reap.
enum Server {
    Thread(Option<std::thread::JoinHandle<()>>),
    Process(rustix::process::Pid),
}

impl Server {
    /// Stop: a child is killed (it may hold copies of our descriptors, so it
    /// would never see EOF); a thread has seen EOF or a stop word already.
    fn finish(&mut self) {
        match self {
            Server::Thread(h) => {
                if let Some(h) = h.take() {
                    let _ = h.join();
                }
            }
            Server::Process(pid) => {
                let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
                let _ = reap(*pid);
            }
        }
    }
}

fn read_exact_fd(fd: &OwnedFd, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the far side closed")),
            Ok(n) => buf = &mut buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_all_fd(fd: &OwnedFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A one-byte echo over a kernel [`Transport`], served by a thread or a
/// process: [`Echo::round_trip`] is the latency floor of that channel.
///
/// ```
/// use tandem::floor::{Echo, Peer, Transport};
/// let mut e = Echo::start(Transport::UnixSocket, Peer::Process).unwrap();
/// e.round_trip().unwrap();
/// ```
pub struct Echo {
    near: Option<(OwnedFd, OwnedFd)>,
    server: Server,
}

impl Echo {
    /// Open the channel and start the echoing peer.
    pub fn start(transport: Transport, peer: Peer) -> io::Result<Echo> {
        let Link { near_in, near_out, far_in, far_out } = Link::open(transport)?;
        let server = match peer {
            Peer::Process => {
                Server::Process(fork_raw_child(RawChild::Echo { input: &far_in, output: &far_out })?)
            }
            Peer::Thread => Server::Thread(Some(std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                while read_exact_fd(&far_in, &mut byte).is_ok() {
                    if write_all_fd(&far_out, &byte).is_err() {
                        break;
                    }
                }
            }))),
        };
        Ok(Echo { near: Some((near_in, near_out)), server })
    }

    /// One byte there and back.
    pub fn round_trip(&mut self) -> io::Result<()> {
        let (near_in, near_out) = self.near.as_ref().expect("open until drop");
        write_all_fd(near_out, &[7])?;
        let mut byte = [0u8; 1];
        read_exact_fd(near_in, &mut byte)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.near = None; // EOF for a thread peer
        self.server.finish();
    }
}

/// A reader at the far end of a kernel [`Transport`] that acknowledges each
/// chunk: [`Sink::transfer`] sends one chunk and waits for its
/// acknowledgement, so chunk size over its time is the channel's bandwidth.
///
/// ```
/// use tandem::floor::{Peer, Sink, Transport};
/// let mut s = Sink::start(Transport::Pipe, Peer::Thread, 1 << 16).unwrap();
/// s.transfer().unwrap();
/// assert_eq!(s.chunk_bytes(), 1 << 16);
/// ```
pub struct Sink {
    near: Option<(OwnedFd, OwnedFd)>,
    chunk: Vec<u8>,
    server: Server,
}

impl Sink {
    /// Open the channel and start the reading peer; each transfer moves
    /// `chunk_bytes` bytes.
    pub fn start(transport: Transport, peer: Peer, chunk_bytes: usize) -> io::Result<Sink> {
        let Link { near_in, near_out, far_in, far_out } = Link::open(transport)?;
        let read_buf = 1 << 16;
        let server = match peer {
            Peer::Process => {
                let mut buf = vec![0u8; read_buf];
                let pid = crate::sys::floor_raw::fork_floor_child(crate::sys::floor_raw::FloorChild::Sink {
                    input: far_in.as_fd(),
                    ack: far_out.as_fd(),
                    buf: &mut buf,
                    ack_every: chunk_bytes,
                })?;
                Server::Process(pid)
            }
            Peer::Thread => Server::Thread(Some(std::thread::spawn(move || {
                let mut buf = vec![0u8; read_buf];
                crate::sys::floor_raw::serve_sink(far_in.as_fd(), far_out.as_fd(), &mut buf, chunk_bytes);
            }))),
        };
        Ok(Sink { near: Some((near_in, near_out)), chunk: vec![0x5a; chunk_bytes], server })
    }

    /// Bytes moved by one [`Sink::transfer`].
    pub fn chunk_bytes(&self) -> usize {
        self.chunk.len()
    }

    /// Send one chunk and wait until the far side has read all of it.
    pub fn transfer(&mut self) -> io::Result<()> {
        let (near_in, near_out) = self.near.as_ref().expect("open until drop");
        write_all_fd(near_out, &self.chunk)?;
        let mut ack = [0u8; 1];
        read_exact_fd(near_in, &mut ack)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.near = None;
        self.server.finish();
    }
}

/// Two units talking through shared memory: a request word and a reply
/// word, with futex wake-ups, optionally after a short spin. With a
/// process peer the memory is a `MAP_SHARED` memfd mapping.
///
/// ```
/// use tandem::floor::{Peer, ShmEcho};
/// let mut e = ShmEcho::start(Peer::Process, 0).unwrap();
/// e.round_trip();
/// ```
pub struct ShmEcho {
    region: Arc<SharedRegion>,
    spin: u32,
    server: Server,
}

fn start_shm_server(peer: Peer, region: &Arc<SharedRegion>, spin: u32, sink: bool) -> io::Result<Server> {
    use crate::sys::floor_raw::{FloorChild, fork_floor_child, serve_shm_echo, serve_shm_sink};
    Ok(match peer {
        Peer::Process => Server::Process(fork_floor_child(if sink {
            FloorChild::ShmSink { region, spin }
        } else {
            FloorChild::ShmEcho { region, spin }
        })?),
        Peer::Thread => {
            let region = Arc::clone(region);
            Server::Thread(Some(std::thread::spawn(move || {
                if sink { serve_shm_sink(&region, spin) } else { serve_shm_echo(&region, spin) }
            })))
        }
    })
}

/// Ask the server for one round and wait for its answer.
fn shm_request(region: &SharedRegion, spin: u32) {
    use crate::sys::floor_raw::{publish, wait_change};
    let c = region.control();
    let before = c[REPLY].load(Ordering::Acquire);
    let next = c[REQUEST].load(Ordering::Relaxed).wrapping_add(1);
    publish(&c[REQUEST], next);
    let mut seen = before;
    while seen != next {
        seen = wait_change(&c[REPLY], seen, spin);
    }
}

fn shm_stop(region: &SharedRegion, server: &mut Server) {
    let c = region.control();
    c[STOP].store(1, Ordering::Release);
    let next = c[REQUEST].load(Ordering::Relaxed).wrapping_add(1);
    crate::sys::floor_raw::publish(&c[REQUEST], next);
    if let Server::Process(pid) = server {
        // It stops by itself on the stop word; reaping waits for that.
        let _ = reap(*pid);
        *server = Server::Thread(None);
    } else {
        server.finish();
    }
}

impl ShmEcho {
    /// Map the shared words and start the answering peer. `spin` is how many
    /// times each side polls before sleeping on the futex (0: sleep at once).
    pub fn start(peer: Peer, spin: u32) -> io::Result<ShmEcho> {
        let region = Arc::new(SharedRegion::new(0)?);
        let server = start_shm_server(peer, &region, spin, false)?;
        Ok(ShmEcho { region, spin, server })
    }

    /// One request there and one reply back.
    pub fn round_trip(&mut self) {
        shm_request(&self.region, self.spin);
    }
}

impl Drop for ShmEcho {
    fn drop(&mut self) {
        shm_stop(&self.region, &mut self.server);
    }
}

/// Bandwidth through shared memory: this side writes a buffer of 64-bit
/// words, the peer reads all of it, then answers.
///
/// ```
/// use tandem::floor::{Peer, ShmSink};
/// let mut s = ShmSink::start(Peer::Thread, 1 << 16).unwrap();
/// s.transfer();
/// assert_eq!(s.chunk_bytes(), 1 << 16);
/// ```
pub struct ShmSink {
    region: Arc<SharedRegion>,
    round: u64,
    server: Server,
}

impl ShmSink {
    /// Map `chunk_bytes` (rounded down to 8) of shared data and start the reader.
    pub fn start(peer: Peer, chunk_bytes: usize) -> io::Result<ShmSink> {
        let region = Arc::new(SharedRegion::new(chunk_bytes / 8)?);
        let server = start_shm_server(peer, &region, 0, true)?;
        Ok(ShmSink { region, round: 0, server })
    }

    /// Bytes moved by one [`ShmSink::transfer`].
    pub fn chunk_bytes(&self) -> usize {
        self.region.data().len() * 8
    }

    /// Write the whole buffer, then wait until the peer has read it.
    pub fn transfer(&mut self) {
        self.round += 1;
        for w in self.region.data() {
            w.store(self.round, Ordering::Relaxed);
        }
        shm_request(&self.region, 0);
    }
}

impl Drop for ShmSink {
    fn drop(&mut self) {
        shm_stop(&self.region, &mut self.server);
    }
}

/// `n` forked child processes that do nothing (blocked in `read`), for
/// measuring what an idle process costs. They are killed on drop.
///
/// ```
/// let idle = tandem::floor::IdleProcesses::start(2).unwrap();
/// assert_eq!(idle.pids().len(), 2);
/// ```
pub struct IdleProcesses {
    pids: Vec<rustix::process::Pid>,
    _silent: (OwnedFd, OwnedFd),
}

impl IdleProcesses {
    /// Fork `n` idle children.
    pub fn start(n: usize) -> io::Result<IdleProcesses> {
        let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let mut idle = IdleProcesses { pids: Vec::with_capacity(n), _silent: (read_end, write_end) };
        for _ in 0..n {
            let input = idle._silent.0.as_fd();
            let pid =
                crate::sys::floor_raw::fork_floor_child(crate::sys::floor_raw::FloorChild::Idle { input })?;
            idle.pids.push(pid);
        }
        Ok(idle)
    }

    /// The children's pids.
    pub fn pids(&self) -> Vec<u32> {
        self.pids.iter().map(|p| p.as_raw_nonzero().get() as u32).collect()
    }
}

impl Drop for IdleProcesses {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
        }
        for pid in &self.pids {
            let _ = reap(*pid);
        }
    }
}
