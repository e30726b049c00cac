//! libFuzzer entry of the `cni_parse` target (the body is `nodekit_fuzz::cni_parse::run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodekit_fuzz::cni_parse::run(data));
