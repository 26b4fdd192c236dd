#!/usr/bin/env bash
# package.sh - builds the Debian package: the release binaries, shell
# completions and man pages generated from the CLI's definitions, the
# systemd units; writes target/debian/tapnet_VERSION_ARCH.deb.
#   scripts/package.sh            (installs cargo-deb first if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p tapnet --bins
out=target/package
rm -rf "$out" && mkdir -p "$out/completions" "$out/man"
./target/release/tapnet completion bash >"$out/completions/tapnet"
./target/release/tapnet completion zsh >"$out/completions/_tapnet"
./target/release/tapnet completion fish >"$out/completions/tapnet.fish"
./target/release/tapnet man "$out/man"
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo deb -p tapnet --no-build "$@"
ls target/debian/*.deb
