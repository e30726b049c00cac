//! libFuzzer entry of the `manifest` target (the body is `nodekit_fuzz::manifest::run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodekit_fuzz::manifest::run(data));
