//! `tapnet-cni`: the CNI plugin (see [`tapnet::cni`]). Install it as
//! `tapnet` in the runtime's CNI plugin directory (e.g.
//! `/usr/lib/cni/tapnet`).
fn main() {
    std::process::exit(tapnet::cni::main());
}
