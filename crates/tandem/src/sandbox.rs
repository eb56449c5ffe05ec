//! Sandboxed workers (process mode): deny by default, allow-lists for the
//! rest.
//!
//! ```
//! use tandem::sandbox::Sandbox;
//! use tandem::{Mode, Pool};
//! tandem::init();
//! let pool = Pool::builder().mode(Mode::Process).workers(1).sandbox(Sandbox::new()).build().unwrap();
//! assert!(pool.sandbox_report().iter().any(|layer| layer == "seccomp"));
//! let read = pool.submit((), |()| std::fs::read("/etc/hostname").map_err(|e| e.raw_os_error()));
//! assert_eq!(read.join().unwrap(), Err(Some(13))); // EACCES: /etc is not allowed
//! ```
//!
//! A sandbox is applied inside the worker, by the worker, once: after the
//! pool's initializer (so "open what you need, then lock down" works) and
//! before the first task; a one-off unit applies it before its task. The
//! layers, in the order they are applied:
//!
//! - resource limits: `RLIMIT_CORE` = 0 always, `RLIMIT_NOFILE` =
//!   [`max_open_files`](Sandbox::max_open_files), `RLIMIT_FSIZE` =
//!   [`max_file_size`](Sandbox::max_file_size) (soft and hard; SIGXFSZ is
//!   ignored, so a bigger write fails with `EFBIG`);
//! - `no_new_privs`;
//! - Landlock (ABI 6 rights): every file access is refused (`EACCES`) except
//!   beneath the allowed paths; TCP bind and connect are refused unless the
//!   network is allowed; signals to processes outside the worker's Landlock
//!   domain (the worker and what it starts) are refused, and so are ptrace
//!   and `/proc/PID/mem` of them, and abstract Unix sockets made outside;
//! - capabilities: the bounding set, the ambient set and the effective,
//!   permitted and inheritable sets are emptied;
//! - seccomp: a filter that refuses with `EPERM` sockets other than
//!   `AF_UNIX` (unless the network is allowed), `execve`, `execveat` and new
//!   processes (unless exec is allowed; threads stay allowed), namespaces,
//!   mounts, ptrace and cross-process memory calls, BPF, io_uring, kexec,
//!   module loading and a few more. Every refusal is an errno: nothing is
//!   killed by seccomp.
//!
//! [`Pool::sandbox_report`](crate::Pool::sandbox_report) lists what a worker
//! read back from its own `/proc/self/status` and `getrlimit` after applying
//! it, and the Landlock ABI the kernel enforced: what is enforced, not what
//! was asked.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, LandlockStatus, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};
use rustix::process::{Resource, Rlimit};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::sys::sandbox::{self as sys, SeccompPolicy};
use crate::wire::{self, Kind};

/// What a sandboxed worker may do. Everything not allowed here is refused.
///
/// ```
/// use tandem::sandbox::Sandbox;
/// let sandbox = Sandbox::new()
///     .allow_read("/usr/share")      // a file or a directory tree, read-only
///     .allow_write("/tmp")           // read and write
///     .allow_exec(false)             // execve and new processes (default false)
///     .allow_network(false)          // IP sockets (default false)
///     .max_open_files(256)           // RLIMIT_NOFILE
///     .max_file_size(1 << 30)        // RLIMIT_FSIZE
///     .best_effort(false);           // fail closed (default)
/// # let _ = sandbox;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    read: Vec<Vec<u8>>,
    write: Vec<Vec<u8>>,
    exec: bool,
    network: bool,
    max_open_files: Option<u64>,
    max_file_size: Option<u64>,
    best_effort: bool,
}

impl Sandbox {
    /// Deny by default: no files, no IP sockets, no programs, no new
    /// privileges; descriptor and file-size limits as inherited.
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let pool = tandem::Pool::builder().mode(tandem::Mode::Process).workers(1).sandbox(Sandbox::new()).build().unwrap();
    /// let read = pool.submit((), |()| std::fs::read("/etc/hostname").is_ok());
    /// assert!(!read.join().unwrap());
    /// ```
    pub fn new() -> Sandbox {
        Sandbox::default()
    }

    /// Allow reading `path`: a file, or a directory and everything beneath
    /// it. The path must exist when the worker applies the sandbox (a
    /// relative path is taken from the worker's current directory).
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let sandbox = Sandbox::new().allow_read("/etc/hostname");
    /// let h = tandem::process::Builder::new().sandbox(sandbox).spawn((), |()| {
    ///     (std::fs::read("/etc/hostname").is_ok(), std::fs::read("/etc/passwd").is_ok())
    /// });
    /// assert_eq!(h.unwrap().join().unwrap(), (true, false));
    /// ```
    pub fn allow_read(mut self, path: impl AsRef<Path>) -> Sandbox {
        self.read.push(path.as_ref().as_os_str().as_bytes().to_vec());
        self
    }

    /// Allow reading and writing `path` and beneath it: creating, removing,
    /// renaming and truncating files and directories there.
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let dir = std::env::temp_dir().join(format!("tandem-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let file = dir.join("out").to_string_lossy().into_owned();
    /// let h = tandem::process::Builder::new()
    ///     .sandbox(Sandbox::new().allow_write(&dir))
    ///     .spawn(file, |f| std::fs::write(f, b"ok").is_ok());
    /// assert!(h.unwrap().join().unwrap());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn allow_write(mut self, path: impl AsRef<Path>) -> Sandbox {
        self.write.push(path.as_ref().as_os_str().as_bytes().to_vec());
        self
    }

    /// Allow `execve` of programs beneath the allowed paths, and new
    /// processes (`fork`). Default false: both are refused with `EPERM`.
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let sandbox = Sandbox::new().allow_read("/").allow_exec(true);
    /// let h = tandem::process::Builder::new().sandbox(sandbox).spawn((), |()| {
    ///     std::process::Command::new("/bin/true").status().map(|s| s.success()).unwrap_or(false)
    /// });
    /// assert!(h.unwrap().join().unwrap());
    /// ```
    pub fn allow_exec(mut self, on: bool) -> Sandbox {
        self.exec = on;
        self
    }

    /// Allow IP (and every other non-Unix) socket. Default false: `socket`
    /// of any family but `AF_UNIX` fails with `EPERM`.
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let bind = |()| std::net::UdpSocket::bind("127.0.0.1:0").is_ok();
    /// let open = tandem::process::Builder::new().sandbox(Sandbox::new().allow_network(true)).spawn((), bind);
    /// assert!(open.unwrap().join().unwrap());
    /// let closed = tandem::process::Builder::new().sandbox(Sandbox::new()).spawn((), bind);
    /// assert!(!closed.unwrap().join().unwrap());
    /// ```
    pub fn allow_network(mut self, on: bool) -> Sandbox {
        self.network = on;
        self
    }

    /// Cap open descriptors (`RLIMIT_NOFILE`, soft and hard). Descriptors
    /// received over a channel count too.
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let h = tandem::process::Builder::new().sandbox(Sandbox::new().max_open_files(32)).spawn((), |()| {
    ///     let mut pipes = Vec::new();
    ///     while let Ok(p) = rustix::pipe::pipe() {
    ///         pipes.push(p);
    ///     }
    ///     pipes.len()
    /// });
    /// assert!(h.unwrap().join().unwrap() < 16);
    /// ```
    pub fn max_open_files(mut self, n: u64) -> Sandbox {
        self.max_open_files = Some(n);
        self
    }

    /// Cap the size of any file the worker writes (`RLIMIT_FSIZE`, soft and
    /// hard): a write past it fails with `EFBIG`.
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// let dir = std::env::temp_dir().join(format!("tandem-doc-fsize-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let file = dir.join("big").to_string_lossy().into_owned();
    /// let sandbox = Sandbox::new().allow_write(&dir).max_file_size(1024);
    /// let h = tandem::process::Builder::new().sandbox(sandbox).spawn(file, |f| std::fs::write(f, vec![0u8; 4096]).is_ok());
    /// assert!(!h.unwrap().join().unwrap());
    /// std::fs::remove_dir_all(&dir).unwrap();
    /// ```
    pub fn max_file_size(mut self, bytes: u64) -> Sandbox {
        self.max_file_size = Some(bytes);
        self
    }

    /// With `true`, a layer the kernel lacks is skipped (and left out of
    /// the report) instead of failing with [`Error::Unsupported`].
    ///
    /// ```
    /// use tandem::sandbox::Sandbox;
    /// tandem::init();
    /// // Here every layer exists, so both settings give the same sandbox.
    /// let pool = tandem::Pool::builder()
    ///     .mode(tandem::Mode::Process)
    ///     .workers(1)
    ///     .sandbox(Sandbox::new().best_effort(true))
    ///     .build()
    ///     .unwrap();
    /// assert!(pool.sandbox_report().iter().any(|l| l == "seccomp"));
    /// ```
    pub fn best_effort(mut self, on: bool) -> Sandbox {
        self.best_effort = on;
        self
    }
}

/// A layer that could not be applied.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) enum Layer {
    Landlock,
    SignalScope,
    Seccomp,
    Threads,
}

impl Layer {
    fn describe(self) -> &'static str {
        match self {
            Layer::Landlock => {
                "sandbox layer `landlock` (file rules): this kernel has no Landlock, or did not enforce the rules; use Linux 5.13 or later with landlock in the lsm= list, or best_effort(true) to run without it"
            }
            Layer::SignalScope => {
                "sandbox layer `landlock signal scope` (signals and abstract sockets outside the worker): needs Landlock ABI 6 (Linux 6.12); or best_effort(true) to run without it"
            }
            Layer::Seccomp => {
                "sandbox layer `seccomp` (system call filter): this kernel or architecture cannot install the filter; or best_effort(true) to run without it"
            }
            Layer::Threads => {
                "a sandbox for a worker that runs more than one thread (did the initializer start one?): Landlock and capabilities would bind only one of them, so it is refused"
            }
        }
    }
}

/// Why a worker could not apply its sandbox, as it tells its parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Refusal {
    Unsupported(Layer),
    Failed(String),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::Unsupported(layer) => Error::Unsupported(layer.describe()),
            Refusal::Failed(why) => Error::Io(std::io::Error::other(format!("applying the sandbox: {why}"))),
        }
    }
}

type Reply = Result<Vec<String>, Refusal>;

/// Parent side: send `sandbox` to a fresh worker and wait for what it
/// enforced. On an error the caller must kill the worker (it may be half
/// sandboxed).
pub(crate) fn impose(socket: BorrowedFd<'_>, sandbox: &Sandbox) -> Result<Vec<String>, Error> {
    let request = crate::codec::encode(sandbox)?;
    wire::send(socket, Kind::Sandbox, &[&request.bytes], &[])
        .map_err(|e| Error::os("sending a sandbox to a new worker", e))?;
    let frame = wire::recv(socket, 1 << 20, None).map_err(|e| {
        Error::Io(std::io::Error::other(format!("the worker ended while applying its sandbox: {e}")))
    })?;
    if frame.kind != Kind::Sandbox {
        return Err(Error::Codec(format!("a worker answered its sandbox with a {:?} message", frame.kind)));
    }
    let reply: Reply = crate::codec::decode_plain(&frame.payload)?;
    reply.map_err(Error::from)
}

/// Worker side: apply the sandbox a Sandbox frame carries; the reply to send.
pub(crate) fn reply_to(payload: &[u8]) -> Vec<u8> {
    let reply: Reply = match crate::codec::decode_plain::<Sandbox>(payload) {
        Ok(sandbox) => sandbox.apply(),
        Err(e) => Err(Refusal::Failed(format!("the sandbox could not be read: {e}"))),
    };
    postcard::to_allocvec(&reply).unwrap_or_default()
}

fn failed(what: &str) -> impl FnOnce(std::io::Error) -> Refusal + '_ {
    move |e| Refusal::Failed(format!("{what}: {e}"))
}

impl Sandbox {
    /// Apply every layer to this process, then read back what is enforced.
    fn apply(&self) -> Reply {
        // Everything the worker itself needs from files, read now.
        crate::sys::code::warm();
        let status_now =
            std::fs::read_to_string("/proc/self/status").map_err(failed("reading /proc/self/status"))?;
        if field(&status_now, "Threads").is_some_and(|t| t != "1") {
            return Err(Refusal::Unsupported(Layer::Threads));
        }
        // Read again after the layers, through a descriptor opened now.
        let status = std::fs::File::open("/proc/self/status").map_err(failed("opening /proc/self/status"))?;

        let set = |resource: Resource, n: u64, what: &str| {
            rustix::process::setrlimit(resource, Rlimit { current: Some(n), maximum: Some(n) })
                .map_err(|e| Refusal::Failed(format!("setting {what} to {n}: {e}")))
        };
        set(Resource::Core, 0, "RLIMIT_CORE")?;
        if let Some(n) = self.max_open_files {
            set(Resource::Nofile, n, "RLIMIT_NOFILE")?;
        }
        if let Some(n) = self.max_file_size {
            crate::sys::signal::ignore_sigxfsz();
            set(Resource::Fsize, n, "RLIMIT_FSIZE")?;
        }
        rustix::thread::set_no_new_privs(true).map_err(|e| failed("setting no_new_privs")(e.into()))?;

        let mut report = Vec::new();
        self.landlock(&mut report)?;
        drop_capabilities()?;
        if sys::SECCOMP_SUPPORTED {
            match sys::install_seccomp(SeccompPolicy { exec: self.exec, network: self.network }) {
                Ok(()) => {}
                Err(e)
                    if self.best_effort && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    return Err(Refusal::Unsupported(Layer::Seccomp));
                }
                Err(e) => return Err(failed("installing the seccomp filter")(e)),
            }
        } else if !self.best_effort {
            return Err(Refusal::Unsupported(Layer::Seccomp));
        }

        // What is enforced, from the kernel's own account.
        let mut text = String::new();
        std::io::Read::read_to_string(&mut &status, &mut text)
            .map_err(failed("reading /proc/self/status"))?;
        if field(&text, "Seccomp") == Some("2") {
            report.push("seccomp".into());
        }
        if field(&text, "NoNewPrivs") == Some("1") {
            report.push("no_new_privs".into());
        }
        let zero = |name| field(&text, name).is_some_and(|v| v.bytes().all(|b| b == b'0'));
        if ["CapEff", "CapPrm", "CapInh", "CapAmb"].into_iter().all(zero) {
            report.push(if zero("CapBnd") {
                "capabilities none".into()
            } else {
                "capabilities none (bounding set kept)".into()
            });
        }
        let limit = |r| rustix::process::getrlimit(r).current;
        if let Some(n) = limit(Resource::Nofile)
            && self.max_open_files.is_some()
        {
            report.push(format!("rlimit nofile {n}"));
        }
        if let Some(n) = limit(Resource::Fsize)
            && self.max_file_size.is_some()
        {
            report.push(format!("rlimit fsize {n}"));
        }
        if limit(Resource::Core) == Some(0) {
            report.push("rlimit core 0".into());
        }
        Ok(report)
    }

    fn landlock(&self, report: &mut Vec<String>) -> Result<(), Refusal> {
        let kernel = sys::landlock_abi();
        if kernel < 1 {
            return if self.best_effort { Ok(()) } else { Err(Refusal::Unsupported(Layer::Landlock)) };
        }
        if kernel < 6 && !self.best_effort {
            return Err(Refusal::Unsupported(Layer::SignalScope));
        }
        // The rights of ABI 6, the newest this code was tested with; on an
        // older kernel (best effort) the crate drops what it lacks.
        let target = ABI::V6;
        let ll = |e: landlock::RulesetError| Refusal::Failed(format!("landlock: {e}"));
        let exec: BitFlags<AccessFs> = if self.exec { AccessFs::Execute.into() } else { BitFlags::EMPTY };
        let read = AccessFs::ReadFile | AccessFs::ReadDir | exec;
        let write = (AccessFs::from_all(target) & !BitFlags::from(AccessFs::Execute)) | exec;
        let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(target)).map_err(ll)?;
        if !self.network {
            ruleset = ruleset.handle_access(AccessNet::from_all(target)).map_err(ll)?;
        }
        let mut created = ruleset.scope(Scope::from_all(target)).map_err(ll)?.create().map_err(ll)?;
        for (paths, access) in [(&self.read, read), (&self.write, write)] {
            for raw in paths {
                let path = Path::new(OsStr::from_bytes(raw));
                let shown = path.display();
                let meta = std::fs::metadata(path)
                    .map_err(|e| Refusal::Failed(format!("allowed path {shown}: {e}")))?;
                let fd =
                    PathFd::new(path).map_err(|e| Refusal::Failed(format!("allowed path {shown}: {e}")))?;
                let access = if meta.is_dir() { access } else { access & AccessFs::from_file(target) };
                created = created.add_rule(PathBeneath::new(fd, access)).map_err(ll)?;
            }
        }
        let status = created.restrict_self().map_err(ll)?;
        let abi = match status.landlock {
            LandlockStatus::Available { effective_abi, .. } => effective_abi as i32,
            _ => 0,
        };
        match status.ruleset {
            RulesetStatus::FullyEnforced => {}
            RulesetStatus::PartiallyEnforced if self.best_effort => {}
            RulesetStatus::NotEnforced if self.best_effort => return Ok(()),
            _ => return Err(Refusal::Unsupported(Layer::Landlock)),
        }
        report.push(format!("landlock abi {abi}"));
        if !self.network && abi >= 4 {
            report.push("landlock network".into());
        }
        if abi >= 6 {
            report.push("landlock signal scope".into());
        }
        Ok(())
    }
}

/// Empty every capability set: bounding (needs CAP_SETPCAP, which a root
/// worker has until the end of this function), ambient, then effective,
/// permitted and inheritable (`capset(2)`, through rustix).
fn drop_capabilities() -> Result<(), Refusal> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    for cap in 0..64 {
        match rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(1 << cap)) {
            Ok(()) => {}
            // Past the last capability this kernel knows.
            Err(rustix::io::Errno::INVAL) => break,
            // Without CAP_SETPCAP the bounding set cannot be changed; with
            // no_new_privs set it cannot give anything back either.
            Err(rustix::io::Errno::PERM) => break,
            Err(e) => {
                return Err(Refusal::Failed(format!("dropping capability {cap} from the bounding set: {e}")));
            }
        }
    }
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(Refusal::Failed(format!("clearing the ambient capabilities: {e}"))),
    }
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, none)
        .map_err(|e| Refusal::Failed(format!("emptying the capability sets: {e}")))
}

/// The value of `Name:` in a /proc status text.
fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}
