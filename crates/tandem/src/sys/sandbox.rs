//! The system calls of a sandboxed worker that no safe crate wraps: the
//! Landlock ABI probe and a seccomp filter written as classic BPF.
//!
//! The filter is written by hand rather than with seccompiler: seccompiler
//! kills the process (`SECCOMP_RET_KILL_PROCESS`) on a foreign architecture
//! and does not look at the x32 bit, and tandem wants every refusal to come
//! back to the task as an errno (see `crate::sandbox`). The program is a
//! short list of comparisons, built and checked below.

use std::io;

/// The Landlock ABI version of the running kernel, 0 if it has none.
/// `landlock_create_ruleset(2)` with `LANDLOCK_CREATE_RULESET_VERSION`.
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with this flag the kernel reads neither the (null) attribute
    // pointer nor the size; it only returns the ABI version or an error.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 { 0 } else { i32::try_from(v).unwrap_or(i32::MAX) }
}

/// What the seccomp filter lets through.
#[derive(Clone, Copy, Debug)]
pub struct SeccompPolicy {
    /// `execve`, `execveat`, and new processes (`fork`, `vfork`, `clone`
    /// without `CLONE_THREAD`) are allowed.
    pub exec: bool,
    /// Sockets of any family; otherwise only `AF_UNIX`.
    pub network: bool,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// Whether this build can install the filter (x86_64 and aarch64, little
/// endian: the argument words are read as their low 32 bits).
pub const SECCOMP_SUPPORTED: bool =
    cfg!(all(any(target_arch = "x86_64", target_arch = "aarch64"), target_endian = "little"));

/// System calls refused with `EPERM` whatever the policy: they reach other
/// processes' memory, change mounts or namespaces, load code into the
/// kernel, or bypass the socket and file rules (io_uring).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn always_denied() -> Vec<libc::c_long> {
    let mut v = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_process_madvise,
        libc::SYS_pidfd_getfd,
        libc::SYS_kcmp,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    v
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn exec_calls() -> Vec<libc::c_long> {
    let mut v = vec![libc::SYS_execve, libc::SYS_execveat];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_fork, libc::SYS_vfork]);
    v
}

/// A jump target in the program being assembled.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Label {
    Next,
    Allow,
    Deny,
    NoSys,
    SocketCheck,
    CloneCheck,
}

/// One instruction, with symbolic jump targets.
#[derive(Clone, Copy, Debug)]
enum Insn {
    /// Load the 32-bit word at this offset of `struct seccomp_data`.
    Load(u32),
    /// `if A == k goto t else goto f`
    Eq(u32, Label, Label),
    /// `if A >= k goto t else goto f`
    Ge(u32, Label, Label),
    /// `if A & k goto t else goto f`
    Set(u32, Label, Label),
    Ret(u32),
    /// A label's position (emits nothing).
    At(Label),
}

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of `args[0]` (little endian).
const OFF_ARG0: u32 = 16;
const CLONE_THREAD: u32 = 0x0001_0000;
/// Every `CLONE_NEW*` flag the legacy `clone` takes.
const CLONE_NEW_ANY: u32 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// The filter for `policy`, symbolic.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn program(policy: SeccompPolicy) -> Vec<Insn> {
    use Insn::*;
    use Label::*;
    let nr = |n: libc::c_long| n as u32;
    let mut p = vec![Load(OFF_ARCH), Eq(AUDIT_ARCH, Next, Deny), Load(OFF_NR)];
    #[cfg(target_arch = "x86_64")]
    p.push(Ge(0x4000_0000, Deny, Next)); // the x32 ABI: never used by tandem
    for n in always_denied() {
        p.push(Eq(nr(n), Deny, Next));
    }
    if !policy.exec {
        for n in exec_calls() {
            p.push(Eq(nr(n), Deny, Next));
        }
    }
    if !policy.network {
        p.push(Eq(nr(libc::SYS_socket), SocketCheck, Next));
        p.push(Eq(nr(libc::SYS_socketpair), SocketCheck, Next));
    }
    p.push(Eq(nr(libc::SYS_clone), CloneCheck, Next));
    // clone3's flags are in memory, out of the filter's reach: ENOSYS makes
    // glibc fall back to clone, whose flags the filter can read.
    p.push(Eq(nr(libc::SYS_clone3), NoSys, Next));
    p.push(Ret(libc::SECCOMP_RET_ALLOW));
    p.push(At(SocketCheck));
    p.push(Load(OFF_ARG0));
    p.push(Eq(libc::AF_UNIX as u32, Allow, Deny));
    p.push(At(CloneCheck));
    p.push(Load(OFF_ARG0));
    p.push(Set(CLONE_NEW_ANY, Deny, Next));
    if !policy.exec {
        p.push(Set(CLONE_THREAD, Allow, Deny));
    }
    p.push(At(Allow));
    p.push(Ret(libc::SECCOMP_RET_ALLOW));
    p.push(At(NoSys));
    p.push(Ret(errno(libc::ENOSYS)));
    p.push(At(Deny));
    p.push(Ret(errno(libc::EPERM)));
    p
}

/// Resolve labels into BPF. Every jump goes forward, within 255.
fn assemble(symbolic: &[Insn]) -> io::Result<Vec<libc::sock_filter>> {
    let mut at = std::collections::HashMap::new();
    let mut pos = 0usize;
    for insn in symbolic {
        match insn {
            Insn::At(l) => {
                at.insert(*l, pos);
            }
            _ => pos += 1,
        }
    }
    let bad = || io::Error::other("seccomp program: a jump out of range");
    let mut out = Vec::with_capacity(pos);
    for insn in symbolic {
        let here = out.len();
        let off = |l: Label| -> io::Result<u8> {
            if l == Label::Next {
                return Ok(0);
            }
            let target = *at.get(&l).ok_or_else(bad)?;
            u8::try_from(target.checked_sub(here + 1).ok_or_else(bad)?).map_err(|_| bad())
        };
        let jump = |op: u16, k: u32, t: Label, f: Label| -> io::Result<libc::sock_filter> {
            Ok(libc::sock_filter { code: op, jt: off(t)?, jf: off(f)?, k })
        };
        const JMP_K: u16 = (libc::BPF_JMP | libc::BPF_K) as u16;
        out.push(match *insn {
            Insn::At(_) => continue,
            Insn::Load(o) => libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: o,
            },
            Insn::Eq(k, t, f) => jump(JMP_K | libc::BPF_JEQ as u16, k, t, f)?,
            Insn::Ge(k, t, f) => jump(JMP_K | libc::BPF_JGE as u16, k, t, f)?,
            Insn::Set(k, t, f) => jump(JMP_K | libc::BPF_JSET as u16, k, t, f)?,
            Insn::Ret(k) => libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k },
        });
    }
    Ok(out)
}

/// Install the filter for `policy` on the calling thread (the worker has
/// only one; the caller checks). Needs `no_new_privs` set first.
/// `seccomp(2)` with `SECCOMP_SET_MODE_FILTER`.
pub fn install_seccomp(policy: SeccompPolicy) -> io::Result<()> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let filter = assemble(&program(policy))?;
        let prog = libc::sock_fprog {
            len: u16::try_from(filter.len()).map_err(|_| io::Error::other("seccomp program too long"))?,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `filter`, which lives until after the
        // call; the kernel copies the program and keeps no pointer to it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_uint,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = policy;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_assembles_with_jumps_in_range() {
        for exec in [false, true] {
            for network in [false, true] {
                let p = assemble(&program(SeccompPolicy { exec, network })).unwrap();
                assert!(p.len() < 200);
                assert_eq!(p.last().unwrap().k, errno(libc::EPERM));
            }
        }
    }
}
