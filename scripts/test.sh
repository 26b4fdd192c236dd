#!/usr/bin/env bash
# test.sh - the whole test suite: unit tests and the integration tests that
# run real traffic between network namespaces (tn_*) through tapnet.
# Run as root. Under CI=true a test that cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# formatting first, as CI checks it
cargo fmt --all --check
(cd fuzz && cargo fmt --check)
cargo build --release --workspace --bins
cargo test --release --workspace "$@"
# the datapath's fallback for kernels without multishot reads, end to end
TAPNET_DAEMON_ARGS=--single-read cargo test --release -p tapnet-tests --test l2 --test malformed "$@"
# the socket NAT without busy polling (on by default), end to end
TAPNET_DAEMON_ARGS="--socknat-busy-poll-us 0" cargo test --release -p tapnet-tests --test socknat "$@"
# one datapath worker (the default is one per CPU, up to 4), end to end
TAPNET_DAEMON_ARGS="--datapath-workers 1" cargo test --release -p tapnet-tests --test l2 --test malformed --test nat "$@"
# the fuzz harnesses: the committed corpus (seeds and past crashes) replayed,
# then a short bounded fuzzing pass of every target (scripts/fuzz.sh)
(cd fuzz && cargo test --release -q)
./scripts/fuzz.sh "${FUZZ_SECS:-15}"
# packaging: completions, man pages, cargo install, the Debian package
# (built, installed with dpkg and removed again)
./tests/packaging.sh
