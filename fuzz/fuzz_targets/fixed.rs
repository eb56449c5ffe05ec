//! Fixed layouts: a Task header (`task::parse_task`), a worker Config, a fork server's Exited report.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem::__fuzz::fixed_layouts(data));
