//! The OS layer: every `unsafe` block in tandem lives below this module.
//!
//! Like rustix's backends, each item here wraps one OS facility behind a safe
//! signature and says, next to its `unsafe` block, why the call is sound. The
//! rest of the crate is `#![deny(unsafe_code)]` and reaches the OS through
//! rustix (already safe) or through this module.
//!
//! What this layer must provide for tandem to work on a platform:
//! - [`code`]: function pointers that survive re-executing the same binary
//!   (`/proc/self/exe`), checked against the executable's text mapping.
//! - [`bootstrap`]: a hook that runs before `main` so a re-executed binary
//!   becomes a worker before any test harness or user code runs, and the
//!   handshake proving the worker's channel came from its parent. The hook
//!   is a macro, `bootstrap::run_before_main!`, which the crate root invokes
//!   with the worker's entry point: this layer never names a module above
//!   it, not even for that call.
//! - [`fork`]: `fork(2)` where it is sound (a single-threaded fork-server
//!   template), and `_exit(2)`.
//! - [`signal`]: the few process-wide signal settings a worker needs.
//! - [`board`]: the shared page on which a worker publishes each map item's
//!   result before it starts the next (see `crate::batch`).
//! - [`remote`]: a worker's memory read by its parent in one copy
//!   (`process_vm_readv(2)`), checked against the worker's pidfd, and
//!   whether this machine allows it at all.
//! - [`plain`]: the `Plain` trait (which types may live in shared memory;
//!   public as `tandem::shm::Plain`), defined here so nothing in this layer
//!   imports from above it.
//! - [`sandbox`]: the Landlock ABI probe and the seccomp filter of a
//!   sandboxed worker (`crate::sandbox`).
//! - [`shm`], [`robust`], [`futex`]: anonymous shared memory (sealed memfd)
//!   with a small safe API (atomics, `Plain` values, byte copies), glibc's
//!   robust process-shared mutex in it, and futex waits and wakes on its
//!   words.
//!
//! Each function's documentation names the manual page of the call it
//! wraps, as rustix does (`mmap(2)`, `futex(2)`, `pthread_mutex_lock(3)`).

pub mod board;
pub mod bootstrap;
pub mod code;
#[cfg(feature = "chaos")]
pub mod crash;
pub mod fork;
pub mod futex;
pub mod plain;
pub mod remote;
pub mod robust;
pub mod sandbox;
pub mod shm;
pub mod signal;
