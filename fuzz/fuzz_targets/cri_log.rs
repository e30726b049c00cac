//! libFuzzer entry of the `cri_log` target (the body is `nodekit_fuzz::cri_log::run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodekit_fuzz::cri_log::run(data));
