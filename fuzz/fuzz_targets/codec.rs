//! Task arguments and results (`codec::decode`), shareable objects included.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::__fuzz::codec(data));
