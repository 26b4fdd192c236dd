#![no_main]
//! See [`tapnet_fuzz::nat_both_ways`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| tapnet_fuzz::nat_both_ways(data));
