#![no_main]
//! See [`tapnet_fuzz::tunnel`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| tapnet_fuzz::tunnel(data));
