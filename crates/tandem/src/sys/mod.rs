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
//!   handshake proving the worker's channel came from its parent.
//! - [`fork`]: `fork(2)` where it is sound (a single-threaded fork-server
//!   template), and `_exit(2)`.
//! - [`signal`]: the few process-wide signal settings a worker needs.
//! - [`shm`], [`robust`], [`ring`]: anonymous shared memory (sealed memfd),
//!   glibc's robust process-shared mutex in it, and the queue's ring.

pub mod bootstrap;
pub mod code;
#[cfg(feature = "chaos")]
pub mod crash;
pub mod fork;
pub mod ring;
pub mod robust;
pub mod shm;
pub mod signal;
