//! Deliberate, real crashes for demos and tests.

/// Dereference a null pointer: a real memory fault, delivered by the CPU and
/// the kernel as SIGSEGV (`signal(7)`), not a signal sent by hand; no
/// system call.
pub fn segfault() -> ! {
    let null: *mut u64 = std::ptr::null_mut();
    // SAFETY: this is deliberately unsound: the write faults, and the kernel
    // kills the process with SIGSEGV before anything else can happen.
    unsafe { std::ptr::write_volatile(null, 0xdead) };
    unreachable!("writing through a null pointer must fault")
}
