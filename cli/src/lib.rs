//! The `tapnet` daemon and CLI as a library: the binary (`main.rs`) is its
//! command line, and the fuzz targets (`fuzz/`) reach the parsers that
//! untrusted input goes through (API bodies, frames the gateway's services
//! take) here.

pub mod api;
pub mod capture;
pub mod client;
pub mod cni;
pub mod daemon;
pub mod dockerfmt;
pub mod run;
