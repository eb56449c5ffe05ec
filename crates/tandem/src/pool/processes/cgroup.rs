//! A memory cgroup per worker: how `worker_memory_limit` is enforced when
//! the pool's process may make cgroups (see `memory` for the choice and
//! for the sampling it replaces).
//!
//! Once per pool, [`Tree::make`] looks for a memory controller it can use:
//!
//! - **cgroup v2**: the unified hierarchy holding the process's `0::` path.
//!   Its no-internal-process rule says a cgroup that hands `memory` to its
//!   children holds no processes (the root excepted), so the pool's own
//!   sub-tree `tandem-<pid>-<n>/` goes under the process's cgroup when that
//!   one already delegates `memory` (its `cgroup.subtree_control` has it:
//!   the root), otherwise beside it, under its parent, when the parent
//!   delegates `memory` and the parent's `cgroup.procs` may be written (a
//!   move between two cgroups needs the common ancestor's). The pool's
//!   directory enables `memory` in its own `cgroup.subtree_control` and
//!   holds no process; each worker gets a leaf with `memory.max` (and
//!   `memory.swap.max` 0, so swap does not dodge the limit).
//! - **cgroup v1**: the hierarchy mounted with the `memory` controller, the
//!   process's path in it (`N:memory:/path`); the pool's directory goes under
//!   the process's cgroup (v1 has no internal-process rule), each worker's
//!   leaf gets `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`
//!   where swap is accounted).
//!
//! Nothing is changed in a cgroup the pool did not make.
//!
//! [`Tree::join`] makes a worker's leaf, writes the limit, then the worker's
//! pid into `cgroup.procs`: the parent does it as soon as the worker exists,
//! before the worker is handed its initializer or a task, and every program
//! the worker runs afterwards is born in the leaf (what the worker touched
//! before the move, its start-up, stays charged to the cgroup it came from).
//! A leaf is removed when its worker has been reaped (a cgroup with a
//! process in it cannot be removed); one that could not be is kept in the
//! tree's list and removed at the pool's end ([`Tree::sweep`]), after every
//! worker has been reaped. A process that outlived its worker (a program it
//! started in the background) is moved back to the pool process's own
//! cgroup so that the leaf can go: nothing the pool made is left in
//! `/sys/fs/cgroup`.
//!
//! The kernel's OOM killer kills a worker (SIGKILL) that its leaf's limit
//! cannot hold; [`Leaf::oom_kill`] tells such a death from another SIGKILL
//! by the leaf's counter (v1: `oom_kill` in `memory.oom_control`, or
//! `memory.failcnt` on kernels without it; v2: `oom_kill` in
//! `memory.events`) and reads the leaf's peak (v1 `memory.max_usage_in_bytes`,
//! v2 `memory.peak`) for the error. Plain file I/O: no `unsafe`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Error, MemoryLimitBy};

/// Which controller, and what it has beside the limit.
#[derive(Clone, Copy, Debug)]
enum Version {
    /// `memory.swap.max` exists (set to 0).
    V2 { swap: bool },
    /// `memory.memsw.limit_in_bytes` exists (set to the limit).
    V1 { memsw: bool },
}

/// A pool's memory cgroup sub-tree: its directory and a leaf per worker.
pub(crate) struct Tree {
    version: Version,
    /// The pool's directory; the workers' leaves are below it.
    dir: PathBuf,
    /// The pool process's own cgroup in the same hierarchy.
    home: PathBuf,
    /// Each worker's limit, bytes.
    limit: u64,
    /// The next leaf's number.
    next: AtomicU64,
    /// Leaves whose removal failed (a process was still in them).
    stale: Mutex<Vec<PathBuf>>,
}

/// Pools made in this process, for the directories' names.
static POOLS: AtomicU64 = AtomicU64::new(0);

impl Tree {
    /// A sub-tree for this pool whose leaves hold `limit` bytes each, or
    /// why none can be made (v2 tried first, then v1).
    pub(super) fn make(limit: u64) -> Result<Arc<Tree>, String> {
        let cgroups =
            fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mounts =
            fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let v2 = match home(&cgroups, &mounts, Hierarchy::V2) {
            Some(home) => make_v2(home, limit),
            None => Err("no cgroup2 mount holds this process's cgroup".to_string()),
        };
        let v2_why = match v2 {
            Ok(tree) => return Ok(Arc::new(tree)),
            Err(why) => why,
        };
        let v1 = match home(&cgroups, &mounts, Hierarchy::V1Memory) {
            Some(home) => make_v1(home, limit),
            None => Err("no cgroup v1 memory controller is mounted for this process".to_string()),
        };
        v1.map(Arc::new).map_err(|v1_why| format!("cgroup v2: {v2_why}; cgroup v1: {v1_why}"))
    }

    fn new(version: Version, dir: PathBuf, home: PathBuf, limit: u64) -> Tree {
        Tree { version, dir, home, limit, next: AtomicU64::new(0), stale: Mutex::default() }
    }

    /// The mechanism, for the error of a worker it killed.
    pub(super) fn by(&self) -> MemoryLimitBy {
        match self.version {
            Version::V2 { .. } => MemoryLimitBy::CgroupV2,
            Version::V1 { .. } => MemoryLimitBy::CgroupV1,
        }
    }

    /// Put worker `pid` in a new leaf of its own under the limit.
    pub(super) fn join(self: &Arc<Tree>, pid: u32) -> Result<Leaf, Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("w{n}"));
        let what = |step: &str| {
            format!(
                "putting worker pid {pid} under its memory limit (worker_memory_limit): {step} {} (the pool made it; check that nothing else removed or changed it)",
                path.display()
            )
        };
        fs::create_dir(&path).map_err(|e| Error::os(&what("making the cgroup"), e))?;
        // From here on the leaf removes itself if anything fails.
        let leaf = Leaf { path: path.clone(), tree: self.clone() };
        let limit = self.limit.to_string();
        let limits: &[(&str, &str)] = match self.version {
            Version::V2 { swap } => {
                if swap {
                    &[("memory.max", &limit), ("memory.swap.max", "0")]
                } else {
                    &[("memory.max", &limit)]
                }
            }
            // memsw is memory + swap, at least memory's limit: written second.
            Version::V1 { memsw } => {
                if memsw {
                    &[("memory.limit_in_bytes", &limit), ("memory.memsw.limit_in_bytes", &limit)]
                } else {
                    &[("memory.limit_in_bytes", &limit)]
                }
            }
        };
        for (file, value) in limits {
            fs::write(path.join(file), value)
                .map_err(|e| Error::os(&what(&format!("writing {value} to {file} of")), e))?;
        }
        fs::write(path.join("cgroup.procs"), pid.to_string())
            .map_err(|e| Error::os(&what("writing the pid to cgroup.procs of"), e))?;
        Ok(leaf)
    }

    /// Remove the leaves left over and the pool's directory: at the pool's
    /// end, every worker reaped. A process still in a leaf outlived its
    /// worker: it goes back to the pool process's cgroup.
    pub(super) fn sweep(&self) {
        let stale = std::mem::take(&mut *self.stale.lock().unwrap_or_else(|e| e.into_inner()));
        for leaf in stale {
            if remove(&leaf).is_err() {
                if let Ok(procs) = fs::read_to_string(leaf.join("cgroup.procs")) {
                    for pid in procs.split_whitespace() {
                        let _ = fs::write(self.home.join("cgroup.procs"), pid);
                    }
                }
                if remove(&leaf).is_err() {
                    self.stale.lock().unwrap_or_else(|e| e.into_inner()).push(leaf);
                }
            }
        }
        let _ = remove(&self.dir);
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// One worker's cgroup. Dropped once its worker has been reaped, it
/// removes itself (or, if a process is still in it, leaves itself to the
/// pool's [`Tree::sweep`]).
pub(crate) struct Leaf {
    path: PathBuf,
    tree: Arc<Tree>,
}

impl Leaf {
    /// Whether the kernel's OOM killer killed a process in this leaf
    /// (then the worker's SIGKILL was the limit's), with the leaf's peak
    /// charge, bytes, and the mechanism.
    pub(super) fn oom_kill(&self) -> Option<(Option<u64>, MemoryLimitBy)> {
        let (killed, peak) = match self.tree.version {
            Version::V2 { .. } => (counter(&self.path.join("memory.events"), "oom_kill")? > 0, "memory.peak"),
            Version::V1 { .. } => {
                let kills = counter(&self.path.join("memory.oom_control"), "oom_kill");
                let killed = match kills {
                    Some(n) => n > 0,
                    // Kernels before 4.13: the limit was hit at least once.
                    None => number(&self.path.join("memory.failcnt"))? > 0,
                };
                (killed, "memory.max_usage_in_bytes")
            }
        };
        killed.then(|| (number(&self.path.join(peak)), self.tree.by()))
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        if remove(&self.path).is_err() {
            let path = std::mem::take(&mut self.path);
            self.tree.stale.lock().unwrap_or_else(|e| e.into_inner()).push(path);
        }
    }
}

/// `rmdir` a cgroup; one already gone is removed.
fn remove(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The number in a one-number cgroup file.
fn number(file: &Path) -> Option<u64> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The value of `key` in a cgroup file of `key value` lines.
fn counter(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Which hierarchy to look for.
#[derive(Clone, Copy, PartialEq)]
enum Hierarchy {
    V2,
    V1Memory,
}

/// The directory of this process's cgroup in `hierarchy`, from
/// `/proc/self/cgroup` and `/proc/self/mountinfo`.
fn home(cgroups: &str, mounts: &str, hierarchy: Hierarchy) -> Option<PathBuf> {
    let path = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let wanted = match hierarchy {
            Hierarchy::V2 => id == "0" && controllers.is_empty(),
            Hierarchy::V1Memory => controllers.split(',').any(|c| c == "memory"),
        };
        wanted.then_some(path)
    })?;
    mounts.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split(' ');
        let (kind, _source, options) = (fs.next()?, fs.next()?, fs.next()?);
        let wanted = match hierarchy {
            Hierarchy::V2 => kind == "cgroup2",
            Hierarchy::V1Memory => kind == "cgroup" && options.split(',').any(|o| o == "memory"),
        };
        if !wanted {
            return None;
        }
        let mut fields = mount.split(' ');
        let root = unescape(fields.nth(3)?);
        let point = unescape(fields.next()?);
        // The mount shows the hierarchy from `root` down: the process's
        // cgroup must be at or below it.
        let below = if root == "/" { path } else { path.strip_prefix(root.as_str())? };
        if !(below.is_empty() || below.starts_with('/')) {
            return None;
        }
        Some(Path::new(&point).join(below.trim_start_matches('/')))
    })
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a v2 cgroup hands `memory` to its children.
fn delegates_memory(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.subtree_control"))
        .is_ok_and(|s| s.split_whitespace().any(|c| c == "memory"))
}

/// Make the pool's directory `tandem-<pid>-<n>` under `parent`.
fn make_dir(parent: &Path) -> Result<PathBuf, String> {
    loop {
        let n = POOLS.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("tandem-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with this pid: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
        }
    }
}

fn make_v2(home: PathBuf, limit: u64) -> Result<Tree, String> {
    // Under the process's cgroup if it already delegates memory (only the
    // root may, holding processes), else beside it.
    let parent = if delegates_memory(&home) {
        home.clone()
    } else {
        match home.parent() {
            Some(parent) if delegates_memory(parent) && parent.join("cgroup.procs").exists() => {
                parent.to_path_buf()
            }
            _ => {
                return Err(format!(
                    "neither {} nor its parent hands the memory controller to its children (cgroup.subtree_control)",
                    home.display()
                ));
            }
        }
    };
    // Moving a worker from `home` into the pool's leaf writes the common
    // ancestor's cgroup.procs: check that it may be written.
    fs::OpenOptions::new()
        .write(true)
        .open(parent.join("cgroup.procs"))
        .map_err(|e| format!("cannot write {}: {e}", parent.join("cgroup.procs").display()))?;
    let mut tree = Tree::new(Version::V2 { swap: false }, make_dir(&parent)?, home, limit);
    // From here on a failure drops the tree, which removes its directory.
    let dir = &tree.dir;
    fs::write(dir.join("cgroup.subtree_control"), "+memory")
        .map_err(|e| format!("cannot enable memory in {}/cgroup.subtree_control: {e}", dir.display()))?;
    if !dir.join("memory.max").exists() {
        return Err(format!("{} has no memory.max", dir.display()));
    }
    tree.version = Version::V2 { swap: dir.join("memory.swap.max").exists() };
    Ok(tree)
}

fn make_v1(home: PathBuf, limit: u64) -> Result<Tree, String> {
    let mut tree = Tree::new(Version::V1 { memsw: false }, make_dir(&home)?, home, limit);
    // From here on a failure drops the tree, which removes its directory.
    let dir = &tree.dir;
    if !dir.join("memory.limit_in_bytes").exists() || !dir.join("cgroup.procs").exists() {
        return Err(format!("{} has no memory.limit_in_bytes", dir.display()));
    }
    tree.version = Version::V1 { memsw: dir.join("memory.memsw.limit_in_bytes").exists() };
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_process_cgroup_is_found_in_each_hierarchy() {
        let cgroups = "5:devices:/\n4:memory:/process_api/abc\n0::/\n";
        assert_eq!(
            home(cgroups, MOUNTS, Hierarchy::V1Memory),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(home(cgroups, MOUNTS, Hierarchy::V2), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        // A mount of a sub-tree (a container's), and a cgroup outside it.
        let mounts = "41 31 0:38 /ctr /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(home("0::/ctr/app\n", mounts, Hierarchy::V2), Some(PathBuf::from("/sys/fs/cgroup x/app")));
        assert_eq!(home("0::/ctrl\n", mounts, Hierarchy::V2), None);
        assert_eq!(home("0::/other\n", mounts, Hierarchy::V2), None);
        assert_eq!(home("0::/\n", "", Hierarchy::V2), None);
    }

    #[test]
    fn counters_are_read_by_key() {
        let dir = std::env::temp_dir().join(format!("tandem-cgroup-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory.oom_control");
        fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), Some(3));
        assert_eq!(counter(&file, "oom"), None);
        fs::write(&file, "7\n").unwrap();
        assert_eq!(number(&file), Some(7));
        fs::remove_dir_all(&dir).unwrap();
    }
}
