//! libFuzzer target: `pvrun::fuzzing::lguest_calls` (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrun::fuzzing::lguest_calls(data));
