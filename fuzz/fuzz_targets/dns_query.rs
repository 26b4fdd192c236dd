#![no_main]
//! See [`tapnet_fuzz::dns_query`].
libfuzzer_sys::fuzz_target!(|data: &[u8]| tapnet_fuzz::dns_query(data));
