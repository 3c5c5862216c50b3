//! libFuzzer target: `pvrun::fuzzing::boot_info` (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrun::fuzzing::boot_info(data));
