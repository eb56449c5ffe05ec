//! Sandboxed workers: each escape attempt is a task that tries one thing and
//! returns what the OS said. Every attempt runs without a sandbox first and
//! must succeed there (so each test can fail), then in a sandboxed pool
//! worker and a sandboxed one-off unit, by both start methods, where it must
//! be refused. Work a task is allowed to do must still pass.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tandem::ipc::{self, Queue};
use tandem::sandbox::Sandbox;
use tandem::shm::SharedSlice;
use tandem::sync::Mutex;
use tandem::{Error, Mode, Pool, StartMethod};

/// What the OS said: a value, or an errno.
type Os<T> = Result<T, i32>;

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const EFBIG: i32 = 27;

fn os<T>(r: std::io::Result<T>) -> Os<T> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn refused<T: std::fmt::Debug>(r: &Os<T>) -> bool {
    matches!(r, Err(EPERM | EACCES))
}

/// Where a task runs.
#[derive(Clone, Copy, Debug)]
enum Place {
    Pool(StartMethod),
    Unit(StartMethod),
}

const PLACES: [Place; 4] = [
    Place::Pool(StartMethod::Spawn),
    Place::Pool(StartMethod::ForkServer),
    Place::Unit(StartMethod::Spawn),
    Place::Unit(StartMethod::ForkServer),
];

fn run<A, R>(place: Place, sandbox: Option<&Sandbox>, arg: A, f: fn(A) -> R) -> Result<R, Error>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    match place {
        Place::Pool(method) => {
            let mut b = Pool::builder().mode(Mode::Process).workers(1).start_method(method);
            if let Some(s) = sandbox {
                b = b.sandbox(s.clone());
            }
            b.build()?.submit(arg, f).join()
        }
        Place::Unit(method) => {
            let mut b = tandem::process::Builder::new().start_method(method);
            if let Some(s) = sandbox {
                b = b.sandbox(s.clone());
            }
            b.spawn(arg, f)?.join()
        }
    }
}

/// A fresh directory for one test: `secret` (not allowed), `ro/` (readable)
/// and `rw/` (writable) inside it.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("tandem-sandbox-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("ro")).unwrap();
        std::fs::create_dir_all(d.join("rw")).unwrap();
        std::fs::write(d.join("secret"), "the secret").unwrap();
        std::fs::write(d.join("ro/data"), "allowed data").unwrap();
        Dir(d)
    }
    fn path(&self, p: &str) -> String {
        self.0.join(p).to_str().unwrap().to_string()
    }
    fn sandbox(&self) -> Sandbox {
        Sandbox::new().allow_read(self.0.join("ro")).allow_write(self.0.join("rw"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `f(arg)` unsandboxed (must satisfy `allowed`) then sandboxed in each
/// place (must satisfy `denied`).
fn check<A, R>(sandbox: &Sandbox, arg: A, f: fn(A) -> R, allowed: fn(&R) -> bool, denied: fn(&R) -> bool)
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + Clone + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + std::fmt::Debug + 'static,
{
    for place in PLACES {
        let free = run(place, None, arg.clone(), f).unwrap();
        assert!(allowed(&free), "{place:?} without a sandbox: {free:?}");
        let boxed = run(place, Some(sandbox), arg.clone(), f).unwrap();
        assert!(denied(&boxed), "{place:?} with a sandbox: {boxed:?}");
    }
}

// ------------------------------------------------------------ files

#[test]
fn reading_and_writing_outside_the_allow_list_is_refused() {
    let dir = Dir::new("files");
    check(
        &dir.sandbox(),
        dir.path("secret"),
        |p| os(std::fs::read_to_string(p)),
        |r| r.as_deref() == Ok("the secret"),
        |r| r == &Err(EACCES),
    );
    check(
        &dir.sandbox(),
        dir.path("written-outside"),
        |p| os(std::fs::write(p, "x")),
        |r| r.is_ok(),
        |r| r == &Err(EACCES),
    );
    assert!(std::fs::read_to_string(dir.path("written-outside")).is_ok(), "the unsandboxed write happened");
}

fn read_and_write_allowed((ro, rw): (String, String)) -> Os<String> {
    let data = os(std::fs::read_to_string(ro))?;
    os(std::fs::write(&rw, data.as_bytes()))?;
    os(std::fs::read_to_string(rw))
}

#[test]
fn reading_and_writing_allowed_paths_works() {
    let dir = Dir::new("allowed");
    for place in PLACES {
        let got = run(
            place,
            Some(&dir.sandbox()),
            (dir.path("ro/data"), dir.path("rw/out")),
            read_and_write_allowed,
        );
        assert_eq!(got.unwrap().as_deref(), Ok("allowed data"), "{place:?}");
        let ro_write = run(place, Some(&dir.sandbox()), dir.path("ro/new"), |p| os(std::fs::write(p, "x")));
        assert_eq!(ro_write.unwrap(), Err(EACCES), "{place:?}: a read-only path is written");
    }
}

// ------------------------------------------------------------ network

fn tcp_connect(port: u16) -> Os<()> {
    os(std::net::TcpStream::connect(("127.0.0.1", port)).map(drop))
}

fn udp_send(port: u16) -> Os<()> {
    let s = os(std::net::UdpSocket::bind("127.0.0.1:0"))?;
    os(s.send_to(b"escaped", ("127.0.0.1", port)).map(drop))
}

#[test]
fn tcp_and_udp_to_loopback_are_refused_and_the_listeners_see_nothing() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let (tport, uport) = (tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port());
    let mut buf = [0u8; 16];
    for place in PLACES {
        assert_eq!(run(place, None, tport, tcp_connect).unwrap(), Ok(()), "{place:?}");
        assert!(tcp.accept().is_ok(), "{place:?}: the unsandboxed connect arrives");
        assert_eq!(run(place, None, uport, udp_send).unwrap(), Ok(()), "{place:?}");
        assert_eq!(udp.recv(&mut buf).unwrap(), 7, "{place:?}: the unsandboxed datagram arrives");

        let sandbox = Sandbox::new();
        assert!(refused(&run(place, Some(&sandbox), tport, tcp_connect).unwrap()), "{place:?}");
        assert!(refused(&run(place, Some(&sandbox), uport, udp_send).unwrap()), "{place:?}");
        // The task has returned: anything it sent would be here by now.
        assert_eq!(tcp.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "{place:?}");
        assert_eq!(udp.recv(&mut buf).unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "{place:?}");
    }
}

#[test]
fn unix_sockets_still_work_inside() {
    for place in PLACES {
        let got = run(place, Some(&Sandbox::new()), (), |()| -> Os<[u8; 4]> {
            let (a, b) = os(std::os::unix::net::UnixStream::pair())?;
            os((&a).write_all(b"unix"))?;
            let mut buf = [0u8; 4];
            os(std::io::Read::read_exact(&mut &b, &mut buf))?;
            Ok(buf)
        });
        assert_eq!(got.unwrap(), Ok(*b"unix"), "{place:?}");
    }
}

// ------------------------------------------------------------ other processes

/// A value in this (the test's) process for workers to try to read.
static MAGIC: AtomicU64 = AtomicU64::new(0x7461_6e64_656d_2121);

/// Signal the worker's parent and the test process (`sig` 0 only checks
/// permission).
fn signal_parents((test_pid, sig): (i32, i32)) -> (Os<()>, Os<()>) {
    let send = |pid: i32| {
        // SAFETY: kill(2) has no memory effects.
        if unsafe { libc::kill(pid, sig) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    };
    // SAFETY: getppid(2) cannot fail.
    let ppid = unsafe { libc::getppid() };
    (os(send(ppid)), os(send(test_pid)))
}

#[test]
fn the_parent_cannot_be_signalled() {
    let me = std::process::id() as i32;
    for place in PLACES {
        let (ppid, test) = run(place, None, (me, 0), signal_parents).unwrap();
        assert_eq!((ppid, test), (Ok(()), Ok(())), "{place:?} without a sandbox");
        // A real SIGKILL: if it got through, this test process would be gone.
        let (ppid, test) = run(place, Some(&Sandbox::new()), (me, libc::SIGKILL), signal_parents).unwrap();
        assert_eq!((ppid, test), (Err(EPERM), Err(EPERM)), "{place:?} with a sandbox");
    }
}

/// Read MAGIC from the test process three ways: ptrace attach,
/// process_vm_readv, /proc/PID/mem.
fn spy((pid, addr): (i32, u64)) -> (Os<()>, Os<u64>, Os<u64>) {
    // SAFETY: PTRACE_SEIZE takes no memory arguments; a successful seize is
    // undone when this worker exits.
    let seize = if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    };
    let mut value = 0u64;
    let local = libc::iovec { iov_base: (&raw mut value).cast(), iov_len: 8 };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: 8 };
    // SAFETY: the local iovec covers `value`, 8 writable bytes; the remote
    // one is only read by the kernel, in the other process.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    let vm = if n == 8 { Ok(value) } else { Err(std::io::Error::last_os_error()) };
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).and_then(|f| {
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, addr)?;
        Ok(u64::from_ne_bytes(b))
    });
    (os(seize), os(vm), os(mem))
}

#[test]
fn the_parent_cannot_be_traced_or_read() {
    let arg = (std::process::id() as i32, MAGIC.as_ptr() as u64);
    let magic = MAGIC.load(Ordering::Relaxed);
    for place in PLACES {
        let (seize, vm, mem) = run(place, None, arg, spy).unwrap();
        assert_eq!((seize, vm, mem), (Ok(()), Ok(magic), Ok(magic)), "{place:?} without a sandbox");
        let (seize, vm, mem) = run(place, Some(&Sandbox::new()), arg, spy).unwrap();
        assert!(refused(&seize) && refused(&vm) && refused(&mem), "{place:?}: {seize:?} {vm:?} {mem:?}");
    }
}

// ------------------------------------------------------------ exec, mount, unshare, fork

#[test]
fn exec_is_refused_unless_allowed() {
    check(
        &Sandbox::new(),
        (),
        |()| os(std::process::Command::new("/bin/sh").args(["-c", "exit 7"]).status().map(|s| s.code())),
        |r| r == &Ok(Some(7)),
        refused,
    );
    // Allowed: the program and its libraries must be readable too.
    let sandbox = Sandbox::new().allow_exec(true).allow_read("/bin").allow_read("/usr").allow_read("/lib");
    let sandbox =
        if std::path::Path::new("/lib64").exists() { sandbox.allow_read("/lib64") } else { sandbox };
    for place in PLACES {
        let got = run(place, Some(&sandbox), (), |()| {
            os(std::process::Command::new("/bin/sh").args(["-c", "exit 7"]).status().map(|s| s.code()))
        });
        assert_eq!(got.unwrap(), Ok(Some(7)), "{place:?}");
    }
}

fn mount_tmpfs(dir: String) -> Os<()> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (none, root, target, tmpfs) = (c("none"), c("/"), c(&dir), c("tmpfs"));
    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // In a mount namespace of its own, so the test's mounts are untouched.
    // SAFETY: unshare(2) has no memory arguments.
    os(check(unsafe { libc::unshare(libc::CLONE_NEWNS) }))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    os(check(unsafe {
        libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    }))?;
    // SAFETY: as above.
    os(check(unsafe { libc::mount(tmpfs.as_ptr(), target.as_ptr(), tmpfs.as_ptr(), 0, std::ptr::null()) }))
}

#[test]
fn mount_and_unshare_are_refused() {
    let dir = Dir::new("mount");
    check(&dir.sandbox(), dir.path("rw"), mount_tmpfs, |r| r.is_ok(), refused);
    check(
        &Sandbox::new(),
        (),
        |()| {
            // SAFETY: unshare(2) has no memory arguments.
            let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            os(if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) })
        },
        |r| r.is_ok(),
        refused,
    );
}

/// Try to fork `n` times; each child exits at once. How many forks worked,
/// and the first error.
fn fork_many(n: u32) -> (u32, Option<i32>) {
    let mut made = 0;
    for _ in 0..n {
        // SAFETY: the worker runs its task on its only thread; the child
        // calls only _exit(2).
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) }, // SAFETY: ends the child at once
            -1 => return (made, Some(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))),
            pid => {
                made += 1;
                // SAFETY: a null status pointer is allowed.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
        }
    }
    (made, None)
}

fn open_many(n: u32) -> u32 {
    let mut held = Vec::new();
    while held.len() < n as usize {
        match rustix::io::dup(rustix::stdio::stderr()) {
            Ok(fd) => held.push(fd),
            Err(_) => break,
        }
    }
    held.len() as u32
}

#[test]
fn a_fork_bomb_is_refused_and_descriptors_are_bounded() {
    check(&Sandbox::new(), 64, fork_many, |r| r == &(64, None), |r| r == &(0, Some(EPERM)));
    check(&Sandbox::new().max_open_files(64), 1000, open_many, |n| *n == 1000, |n| *n < 64);
}

#[test]
fn a_write_past_max_file_size_fails_with_efbig() {
    let dir = Dir::new("fsize");
    let sandbox = dir.sandbox().max_file_size(1 << 20);
    let write = |p: String| os(std::fs::write(p, vec![7u8; 2 << 20]));
    check(&sandbox, dir.path("rw/big"), write, |r| r.is_ok(), |r| r == &Err(EFBIG));
    for place in PLACES {
        let small =
            run(place, Some(&sandbox), dir.path("rw/small"), |p| os(std::fs::write(p, vec![7u8; 1 << 19])));
        assert_eq!(small.unwrap(), Ok(()), "{place:?}");
    }
}

// ------------------------------------------------------------ what still works

#[test]
fn tandem_objects_passed_in_still_work() {
    for place in PLACES {
        let (tx, rx) = ipc::channel::<String>().unwrap();
        let queue = Queue::<u64>::bounded(4).unwrap();
        let mutex = Mutex::new(40u64).unwrap();
        let slice = SharedSlice::<AtomicU64>::new(2).unwrap();
        let arg = (tx, queue.clone(), mutex.clone(), slice.clone());
        let got = run(place, Some(&Sandbox::new().max_open_files(64)), arg, |(tx, q, m, s)| {
            tx.send("through a channel".into()).unwrap();
            q.put(7).unwrap();
            *m.lock().unwrap() += 2;
            s[1].store(99, Ordering::SeqCst);
            // A channel made inside the sandbox works too (socketpair, memfd).
            let (tx2, rx2) = ipc::channel::<u8>().unwrap();
            tx2.send(5).unwrap();
            rx2.recv().unwrap()
        });
        assert_eq!(got.unwrap(), 5, "{place:?}");
        assert_eq!(rx.recv().unwrap(), "through a channel", "{place:?}");
        assert_eq!(queue.get().unwrap(), 7, "{place:?}");
        assert_eq!(*mutex.lock().unwrap(), 42, "{place:?}");
        assert_eq!(slice[1].load(Ordering::SeqCst), 99, "{place:?}");
    }
}

#[test]
fn panics_time_outs_recycling_and_maps_work_in_a_sandboxed_pool() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(2)
            .start_method(method)
            .task_timeout(Duration::from_millis(500))
            .max_tasks_per_worker(3)
            .sandbox(Sandbox::new())
            .build()
            .unwrap();
        let panicked = pool.submit((), |()| -> u8 { panic!("inside the sandbox") }).join();
        assert!(matches!(panicked, Err(Error::Panicked { .. })), "{method:?}: {panicked:?}");
        let slow = pool.submit((), |()| std::thread::sleep(Duration::from_secs(60))).join();
        assert!(matches!(slow, Err(Error::TimedOut)), "{method:?}: {slow:?}");
        let doubled: Vec<u64> = pool.map(0..500u64, |x| x * 2).map(Result::unwrap).collect();
        assert_eq!(doubled, (0..500u64).map(|x| x * 2).collect::<Vec<_>>(), "{method:?}");
        // Every worker, including replacements, is sandboxed.
        for _ in 0..8 {
            let tcp = pool.submit((), |()| os(std::net::TcpListener::bind("127.0.0.1:0").map(drop))).join();
            assert!(refused(&tcp.unwrap()), "{method:?}");
        }
        assert!(pool.stats().workers.iter().map(|w| w.restarts).sum::<u64>() > 0, "{method:?}: recycled");
    }
}

static KEPT: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Opens a file no sandbox here allows.
fn open_proc_version() {
    KEPT.set(std::fs::File::open("/proc/version").unwrap()).unwrap();
}

#[test]
fn the_initializer_runs_before_the_sandbox() {
    let dir = Dir::new("init");
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .start_method(method)
            .initializer(open_proc_version)
            .sandbox(dir.sandbox())
            .build()
            .unwrap();
        let got = pool.submit((), |()| {
            let mut s = String::new();
            let kept = std::io::Read::read_to_string(&mut KEPT.get().unwrap(), &mut s)
                .map(|_| s.starts_with("Linux"));
            (os(kept), os(std::fs::read_to_string("/proc/version").map(drop)))
        });
        assert_eq!(got.join().unwrap(), (Ok(true), Err(EACCES)), "{method:?}");
    }
}

#[test]
fn the_report_lists_what_is_enforced_and_thread_mode_is_refused() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .start_method(method)
            .sandbox(Sandbox::new().max_open_files(128))
            .build()
            .unwrap();
        let report = pool.sandbox_report();
        for layer in [
            "landlock abi 7",
            "landlock network",
            "landlock signal scope",
            "seccomp",
            "no_new_privs",
            "capabilities none",
            "rlimit nofile 128",
            "rlimit core 0",
        ] {
            assert!(report.iter().any(|l| l == layer), "{method:?}: {layer} missing from {report:?}");
        }
    }
    let plain = Pool::builder().mode(Mode::Process).workers(1).build().unwrap();
    assert!(plain.sandbox_report().is_empty());
    let threads = Pool::builder().mode(Mode::Thread).sandbox(Sandbox::new()).build();
    assert!(matches!(threads, Err(Error::Unsupported(_))), "{threads:?}");
}

#[test]
fn a_path_that_does_not_exist_fails_the_build() {
    let missing = Sandbox::new().allow_read("/nonexistent/tandem/path");
    let pool = Pool::builder().mode(Mode::Process).workers(1).sandbox(missing.clone()).build();
    let err = pool.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/tandem/path"), "{err}");
    let unit = tandem::process::Builder::new().sandbox(missing).spawn((), |()| ());
    assert!(unit.is_err());
}

/// Leaves a second thread running in the worker.
fn start_a_thread() {
    std::thread::spawn(|| {
        loop {
            std::thread::park();
        }
    });
}

#[test]
fn a_worker_that_cannot_be_sandboxed_fails_the_build_closed() {
    // A second thread would escape Landlock and the dropped capabilities,
    // so the worker refuses, and the pool is never handed out.
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let pool = Pool::builder()
            .mode(Mode::Process)
            .workers(1)
            .start_method(method)
            .initializer(start_a_thread)
            .sandbox(Sandbox::new())
            .build();
        match pool {
            Err(e @ Error::Unsupported(_)) => assert!(e.to_string().contains("more than one thread"), "{e}"),
            other => panic!("{method:?}: expected Unsupported, got {other:?}"),
        }
        // The same initializer without a sandbox is fine.
        let plain =
            Pool::builder().mode(Mode::Process).workers(1).start_method(method).initializer(start_a_thread);
        assert_eq!(plain.build().unwrap().submit(2u8, |x| x + 1).join().unwrap(), 3);
    }
}
