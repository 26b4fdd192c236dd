#![no_main]
//! See [`tapnet_fuzz::api`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| tapnet_fuzz::api(data));
