//! Deliberate failures, for demos, tests and `tandem compare`'s crash rows.
//!
//! ```no_run
//! tandem::init();
//! let h = tandem::process::spawn((), |()| -> u8 { tandem::chaos::segfault() }).unwrap();
//! assert!(matches!(h.join(), Err(tandem::Error::WorkerDied { signal: Some(11), .. })));
//! ```

/// Crash this process with a real memory fault (SIGSEGV): a null pointer
/// write. Every thread of the process dies with it.
pub fn segfault() -> ! {
    crate::sys::crash::segfault()
}
