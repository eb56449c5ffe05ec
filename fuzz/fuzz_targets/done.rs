//! A task's Done payload (`task::decode_done`): result, batch, initializer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::__fuzz::done_payload(data));
