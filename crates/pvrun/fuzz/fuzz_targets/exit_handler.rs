//! libFuzzer target: `pvrun::fuzzing::exit_handler` (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrun::fuzzing::exit_handler(data));
