#![no_main]
//! See [`tapnet_fuzz::pipeline`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| tapnet_fuzz::pipeline(data));
