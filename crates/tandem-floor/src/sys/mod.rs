//! The OS layer of the floor: every `unsafe` block in tandem-floor lives
//! below this module, each with a `SAFETY:` comment saying why it is sound.
//!
//! - [`fork`]: fork(2) of a child that runs one fixed job of raw syscalls
//!   and `_exit(2)`s (sound even in a multi-threaded parent).
//! - [`region`]: memory shared with forked children (memfd_create(2) +
//!   mmap(2) `MAP_SHARED`), futex(2) words in it, the shared-memory
//!   serving loops, and fresh shared memory made with no library on top.

pub mod fork;
pub mod region;
