//! libFuzzer target: `pvrun::fuzzing::loader` (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrun::fuzzing::loader(data));
