//! libFuzzer target: `pvrun::fuzzing::bench_marker` (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrun::fuzzing::bench_marker(data));
