//! The raw OS floor: the cheapest way the OS does what tandem does, measured
//! by tandem's benchmarks and by `tandem compare` in the same run as tandem.
//!
//! Starting a process or a thread, and one byte or one chunk there and back
//! over a pipe, a Unix socket, TCP loopback or shared memory, with a thread
//! or a forked child on the far side. A forked child makes raw syscalls only
//! (no allocation, no locks) and `_exit`s, so these figures are what the
//! kernel costs, not what a runtime adds. tandem does not use this crate;
//! its benchmarks and `tandem compare` set its figures beside tandem's.
//!
//! ```
//! let t = tandem_floor::fork_wait().unwrap();
//! assert!(t.as_nanos() > 0);
//! ```
//!
//! Layout: this file is safe code; every `unsafe` block is in the private
//! `sys` module (fork(2), `_exit(2)`, a shared mapping, futex words).

#![deny(missing_docs)]
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod sys;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::process::{WaitId, WaitIdOptions};

use crate::sys::fork::{Child, fork_child, serve_sink};
use crate::sys::region::{
    FreshBytes, REPLY, REQUEST, STOP, SharedRegion, publish, read_process, serve_shm_echo, serve_shm_sink,
    wait_change,
};

/// New shared memory with no library on top: a memfd of `len` bytes
/// mapped `MAP_SHARED`, every page allocated at once (`MADV_HUGEPAGE`
/// where the kernel gives shared memory huge pages, then
/// `MADV_POPULATE_WRITE`), unmapped and freed on drop. The floor of
/// creating a `SharedSliceMut` (an error for `len` 0).
///
/// ```
/// let mut fresh = tandem_floor::FreshSharedBytes::new(1 << 20).unwrap();
/// fresh.bytes_mut().fill(1);
/// assert_eq!(fresh.bytes_mut().iter().map(|&b| u64::from(b)).sum::<u64>(), 1 << 20);
/// ```
pub struct FreshSharedBytes(FreshBytes);

impl FreshSharedBytes {
    /// memfd_create(2), ftruncate(2), mmap(2), madvise(2), as above.
    ///
    /// ```
    /// assert!(tandem_floor::FreshSharedBytes::new(0).is_err());
    /// ```
    pub fn new(len: usize) -> io::Result<FreshSharedBytes> {
        FreshBytes::new(len).map(FreshSharedBytes)
    }

    /// The bytes, zero-filled at first.
    ///
    /// ```
    /// let mut fresh = tandem_floor::FreshSharedBytes::new(4096).unwrap();
    /// assert!(fresh.bytes_mut().iter().all(|&b| b == 0));
    /// ```
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.bytes_mut()
    }
}

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
///
/// ```
/// let t = tandem_floor::fork_wait().unwrap();
/// assert!(t > std::time::Duration::ZERO);
/// ```
pub fn fork_wait() -> io::Result<Duration> {
    let start = Instant::now();
    let pid = fork_child(Child::ExitImmediately)?;
    reap(pid)?;
    Ok(start.elapsed())
}

/// One `posix_spawn` of `/bin/true` and its wait (std's `Command` uses
/// posix_spawn when it can): the floor of starting a new program.
///
/// ```
/// let t = tandem_floor::spawn_true_wait().unwrap();
/// assert!(t > std::time::Duration::ZERO);
/// ```
pub fn spawn_true_wait() -> io::Result<Duration> {
    let start = Instant::now();
    std::process::Command::new("/bin/true").status()?;
    Ok(start.elapsed())
}

/// One `std::thread::spawn` + `join`: the floor of starting a thread.
///
/// ```
/// let t = tandem_floor::thread_spawn_join();
/// assert!(t > std::time::Duration::ZERO);
/// ```
pub fn thread_spawn_join() -> Duration {
    let start = Instant::now();
    std::thread::spawn(|| {}).join().expect("empty thread");
    start.elapsed()
}

/// A child process that echoes bytes on a pair of pipes: the far side of a
/// pipe round trip. The child exits when it is dropped.
///
/// ```
/// let mut echo = tandem_floor::PipeEcho::start().unwrap();
/// echo.round_trip().unwrap();
/// drop(echo); // kills and reaps the child
/// ```
pub struct PipeEcho {
    to_child: Option<OwnedFd>,
    from_child: OwnedFd,
    pid: rustix::process::Pid,
}

impl PipeEcho {
    /// Fork the echoing child.
    ///
    /// ```
    /// let echo = tandem_floor::PipeEcho::start().unwrap();
    /// # drop(echo);
    /// ```
    pub fn start() -> io::Result<PipeEcho> {
        let (child_in, to_child) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (from_child, child_out) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let pid = fork_child(Child::Echo { input: child_in.as_fd(), output: child_out.as_fd() })?;
        Ok(PipeEcho { to_child: Some(to_child), from_child, pid })
    }

    /// One byte there and back.
    ///
    /// ```
    /// let mut echo = tandem_floor::PipeEcho::start().unwrap();
    /// for _ in 0..3 {
    ///     echo.round_trip().unwrap();
    /// }
    /// ```
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
///
/// ```
/// use tandem_floor::{Echo, Peer, Transport};
/// for transport in [Transport::Pipe, Transport::UnixSocket, Transport::TcpLoopback] {
///     Echo::start(transport, Peer::Thread).unwrap().round_trip().unwrap();
/// }
/// ```
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
///
/// ```
/// use tandem_floor::{Echo, Peer, Transport};
/// for peer in [Peer::Thread, Peer::Process] {
///     Echo::start(Transport::Pipe, peer).unwrap().round_trip().unwrap();
/// }
/// ```
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
/// use tandem_floor::{Echo, Peer, Transport};
/// let mut e = Echo::start(Transport::UnixSocket, Peer::Process).unwrap();
/// e.round_trip().unwrap();
/// ```
pub struct Echo {
    near: Option<(OwnedFd, OwnedFd)>,
    server: Server,
}

impl Echo {
    /// Open the channel and start the echoing peer.
    ///
    /// ```
    /// use tandem_floor::{Echo, Peer, Transport};
    /// let e = Echo::start(Transport::TcpLoopback, Peer::Process).unwrap();
    /// # drop(e);
    /// ```
    pub fn start(transport: Transport, peer: Peer) -> io::Result<Echo> {
        let Link { near_in, near_out, far_in, far_out } = Link::open(transport)?;
        let server = match peer {
            Peer::Process => {
                Server::Process(fork_child(Child::Echo { input: far_in.as_fd(), output: far_out.as_fd() })?)
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
    ///
    /// ```
    /// use tandem_floor::{Echo, Peer, Transport};
    /// let mut e = Echo::start(Transport::Pipe, Peer::Process).unwrap();
    /// e.round_trip().unwrap();
    /// ```
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
/// use tandem_floor::{Peer, Sink, Transport};
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
    ///
    /// ```
    /// use tandem_floor::{Peer, Sink, Transport};
    /// let s = Sink::start(Transport::UnixSocket, Peer::Process, 1 << 20).unwrap();
    /// # drop(s);
    /// ```
    pub fn start(transport: Transport, peer: Peer, chunk_bytes: usize) -> io::Result<Sink> {
        let Link { near_in, near_out, far_in, far_out } = Link::open(transport)?;
        let read_buf = 1 << 16;
        let server = match peer {
            Peer::Process => {
                let mut buf = vec![0u8; read_buf];
                let pid = fork_child(Child::Sink {
                    input: far_in.as_fd(),
                    ack: far_out.as_fd(),
                    buf: &mut buf,
                    ack_every: chunk_bytes,
                })?;
                Server::Process(pid)
            }
            Peer::Thread => Server::Thread(Some(std::thread::spawn(move || {
                let mut buf = vec![0u8; read_buf];
                serve_sink(far_in.as_fd(), far_out.as_fd(), &mut buf, chunk_bytes);
            }))),
        };
        Ok(Sink { near: Some((near_in, near_out)), chunk: vec![0x5a; chunk_bytes], server })
    }

    /// Bytes moved by one [`Sink::transfer`].
    ///
    /// ```
    /// use tandem_floor::{Peer, Sink, Transport};
    /// let s = Sink::start(Transport::Pipe, Peer::Thread, 4096).unwrap();
    /// assert_eq!(s.chunk_bytes(), 4096);
    /// ```
    pub fn chunk_bytes(&self) -> usize {
        self.chunk.len()
    }

    /// Send one chunk and wait until the far side has read all of it.
    ///
    /// ```
    /// use tandem_floor::{Peer, Sink, Transport};
    /// let mut s = Sink::start(Transport::TcpLoopback, Peer::Process, 1 << 16).unwrap();
    /// s.transfer().unwrap();
    /// s.transfer().unwrap();
    /// ```
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
/// use tandem_floor::{Peer, ShmEcho};
/// let mut e = ShmEcho::start(Peer::Process, 0).unwrap();
/// e.round_trip();
/// ```
pub struct ShmEcho {
    region: Arc<SharedRegion>,
    spin: u32,
    server: Server,
}

fn start_shm_server(peer: Peer, region: &Arc<SharedRegion>, spin: u32, sink: bool) -> io::Result<Server> {
    Ok(match peer {
        Peer::Process => Server::Process(fork_child(if sink {
            Child::ShmSink { region, spin }
        } else {
            Child::ShmEcho { region, spin }
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
    publish(&c[REQUEST], next);
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
    ///
    /// ```
    /// use tandem_floor::{Peer, ShmEcho};
    /// let e = ShmEcho::start(Peer::Thread, 1000).unwrap();
    /// # drop(e);
    /// ```
    pub fn start(peer: Peer, spin: u32) -> io::Result<ShmEcho> {
        let region = Arc::new(SharedRegion::new(0)?);
        let server = start_shm_server(peer, &region, spin, false)?;
        Ok(ShmEcho { region, spin, server })
    }

    /// One request there and one reply back.
    ///
    /// ```
    /// use tandem_floor::{Peer, ShmEcho};
    /// let mut e = ShmEcho::start(Peer::Thread, 0).unwrap();
    /// e.round_trip();
    /// e.round_trip();
    /// ```
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
/// use tandem_floor::{Peer, ShmSink};
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
    ///
    /// ```
    /// use tandem_floor::{Peer, ShmSink};
    /// let s = ShmSink::start(Peer::Process, 1 << 20).unwrap();
    /// # drop(s);
    /// ```
    pub fn start(peer: Peer, chunk_bytes: usize) -> io::Result<ShmSink> {
        let region = Arc::new(SharedRegion::new(chunk_bytes / 8)?);
        let server = start_shm_server(peer, &region, 0, true)?;
        Ok(ShmSink { region, round: 0, server })
    }

    /// Bytes moved by one [`ShmSink::transfer`].
    ///
    /// ```
    /// use tandem_floor::{Peer, ShmSink};
    /// let s = ShmSink::start(Peer::Thread, 1001).unwrap();
    /// assert_eq!(s.chunk_bytes(), 1000); // rounded down to whole 64-bit words
    /// ```
    pub fn chunk_bytes(&self) -> usize {
        self.region.data().len() * 8
    }

    /// Write the whole buffer, then wait until the peer has read it.
    ///
    /// ```
    /// use tandem_floor::{Peer, ShmSink};
    /// let mut s = ShmSink::start(Peer::Process, 1 << 16).unwrap();
    /// s.transfer();
    /// s.transfer();
    /// ```
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

/// `n` forked children, each answering every byte it is sent after
/// sleeping a while: the OS floor of a wide pool of I/O-bound workers (no
/// serialization, no dispatch: pipes, sleeps and wake-ups only).
///
/// ```
/// let mut wide = tandem_floor::SleepyEchoes::start(2, std::time::Duration::from_millis(1)).unwrap();
/// wide.run(3).unwrap(); // 3 "tasks" per child, all sent at once
/// ```
pub struct SleepyEchoes {
    pids: Vec<rustix::process::Pid>,
    /// Per child: where its tasks go, where its answers come from.
    pipes: Vec<(OwnedFd, OwnedFd)>,
}

impl SleepyEchoes {
    /// Fork `n` children that each sleep `wait` per byte.
    ///
    /// ```
    /// let wide = tandem_floor::SleepyEchoes::start(1, std::time::Duration::from_millis(1)).unwrap();
    /// # drop(wide);
    /// ```
    pub fn start(n: usize, wait: Duration) -> io::Result<SleepyEchoes> {
        let nanos = wait.as_nanos().min(999_999_999) as u32;
        let mut wide = SleepyEchoes { pids: Vec::with_capacity(n), pipes: Vec::with_capacity(n) };
        for _ in 0..n {
            let (child_in, to_child) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let (from_child, child_out) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            let pid =
                fork_child(Child::SleepyEcho { input: child_in.as_fd(), output: child_out.as_fd(), nanos })?;
            wide.pids.push(pid);
            wide.pipes.push((to_child, from_child));
        }
        Ok(wide)
    }

    /// Send every child `per_child` bytes at once, then take all answers.
    ///
    /// ```
    /// let mut wide = tandem_floor::SleepyEchoes::start(2, std::time::Duration::ZERO).unwrap();
    /// wide.run(2).unwrap();
    /// ```
    pub fn run(&mut self, per_child: usize) -> io::Result<()> {
        let bytes = vec![1u8; per_child];
        for (to, _) in &self.pipes {
            rustix::io::write(to, &bytes)?;
        }
        let mut back = vec![0u8; per_child];
        for (_, from) in &self.pipes {
            let mut got = 0;
            while got < per_child {
                match rustix::io::read(from, &mut back[got..])? {
                    0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a sleepy child exited")),
                    n => got += n,
                }
            }
        }
        Ok(())
    }
}

impl Drop for SleepyEchoes {
    fn drop(&mut self) {
        // Each child holds copies of the pipes of those forked before it,
        // so closing ours would not end them: kill them.
        for pid in &self.pids {
            let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
        }
        for pid in &self.pids {
            let _ = reap(*pid);
        }
    }
}

/// `n` forked child processes that do nothing (blocked in `read`), for
/// measuring what an idle process costs. They are killed on drop.
///
/// ```
/// let idle = tandem_floor::IdleProcesses::start(2).unwrap();
/// assert_eq!(idle.pids().len(), 2);
/// ```
pub struct IdleProcesses {
    pids: Vec<rustix::process::Pid>,
    _silent: (OwnedFd, OwnedFd),
}

impl IdleProcesses {
    /// Fork `n` idle children.
    ///
    /// ```
    /// let idle = tandem_floor::IdleProcesses::start(1).unwrap();
    /// # drop(idle);
    /// ```
    pub fn start(n: usize) -> io::Result<IdleProcesses> {
        let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let mut idle = IdleProcesses { pids: Vec::with_capacity(n), _silent: (read_end, write_end) };
        for _ in 0..n {
            let input = idle._silent.0.as_fd();
            let pid = fork_child(Child::Idle { input })?;
            idle.pids.push(pid);
        }
        Ok(idle)
    }

    /// The children's pids.
    ///
    /// ```
    /// let idle = tandem_floor::IdleProcesses::start(3).unwrap();
    /// let pids = idle.pids();
    /// assert_eq!(pids.len(), 3);
    /// assert!(pids.iter().all(|&p| p != std::process::id()));
    /// ```
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

/// A forked child holding `len` bytes (made before the fork, so at the
/// same address in the child), which this process reads out of it with
/// `process_vm_readv(2)`: the one-copy floor of a worker's result read
/// straight out of its memory. The child is killed on drop.
///
/// ```
/// let child = tandem_floor::ChildMemory::start(1 << 16).unwrap();
/// assert_eq!(child.read().unwrap(), vec![0x5a; 1 << 16]);
/// ```
pub struct ChildMemory {
    pid: rustix::process::Pid,
    bytes: Vec<u8>,
    _silent: (OwnedFd, OwnedFd),
}

impl ChildMemory {
    /// Fill `len` bytes and fork an idle child that holds them.
    ///
    /// ```
    /// let child = tandem_floor::ChildMemory::start(4096).unwrap();
    /// # drop(child);
    /// ```
    pub fn start(len: usize) -> io::Result<ChildMemory> {
        let bytes = vec![0x5a; len];
        let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let pid = fork_child(Child::Idle { input: read_end.as_fd() })?;
        Ok(ChildMemory { pid, bytes, _silent: (read_end, write_end) })
    }

    /// The child's bytes, read out of it into a new `Vec`.
    ///
    /// ```
    /// let child = tandem_floor::ChildMemory::start(10).unwrap();
    /// assert_eq!(child.read().unwrap().len(), 10);
    /// ```
    pub fn read(&self) -> io::Result<Vec<u8>> {
        read_process(self.pid.as_raw_nonzero().get() as u32, self.bytes.as_ptr() as usize, self.bytes.len())
    }
}

impl Drop for ChildMemory {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        let _ = reap(self.pid);
    }
}
