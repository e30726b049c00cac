//! libFuzzer entry of the `layer_unpack` target (the body is `nodekit_fuzz::layer_unpack::run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nodekit_fuzz::layer_unpack::run(data));
