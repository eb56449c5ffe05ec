//! Frames read from a socket (`wire::recv`), as a parent reads its workers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tandem::__fuzz::wire_frames(data, 1 << 20);
    tandem::__fuzz::wire_frames(data, 16);
});
