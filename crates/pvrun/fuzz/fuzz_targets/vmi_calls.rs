//! libFuzzer target: `pvrun::fuzzing::vmi_calls` (see that function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pvrun::fuzzing::vmi_calls(data));
