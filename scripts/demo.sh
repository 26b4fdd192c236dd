#!/usr/bin/env bash
# demo.sh - the main job end to end: a tapnet daemon, a network, two
# containers, ping and a TCP transfer through the userspace switch, and the
# switch's counters. Everything lives in namespaces named tn_demo_* and a
# temporary state directory, removed on exit; the daemon itself runs in
# tn_demo_host (only loopback), so nothing it forwards (DNS) leaves the
# machine. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p tapnet -q
T="$PWD/target/release/tapnet"
DIR=$(mktemp -d /tmp/tn_demo.XXXXXX)
export TAPNET_SOCKET="$DIR/tapnet.sock"
PIDS=()
cleanup() {
	# containers first (they detach through the daemon), the daemon last
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill "${PIDS[i]}" 2>/dev/null || true
		wait "${PIDS[i]}" 2>/dev/null || true
	done
	for ns in $(ip netns list | awk '/^tn_demo_/ {print $1}'); do ip netns del "$ns"; done
	rm -rf "$DIR"
}
trap cleanup EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

ip netns add tn_demo_host && ip -n tn_demo_host link set lo up
nsenter --net=/run/netns/tn_demo_host "$T" daemon --state-dir "$DIR/state" \
	--netns-prefix tn_demo_ --dns 127.0.0.1 >"$DIR/daemon.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do "$T" network ls -q >/dev/null 2>&1 && break; sleep 0.1; done

say tapnet network create mynet --subnet 10.88.0.0/24
"$T" network create mynet --subnet 10.88.0.0/24
say tapnet run --network mynet --name c1 -- sleep 600 '&'
"$T" run --network mynet --name c1 --ip 10.88.0.2 -- sleep 600 & PIDS+=($!)
say tapnet run --network mynet --name c2 -- iperf3 -s '&'
"$T" run --network mynet --name c2 --ip 10.88.0.3 -- iperf3 -s >"$DIR/iperf3-server.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do [ "$("$T" ps -q 2>/dev/null | wc -l)" = 2 ] && break; sleep 0.1; done
sleep 0.5
say tapnet ps
"$T" ps
say "tapnet run --network mynet -- ping -c 3 c1    # c1 by name: the embedded DNS"
"$T" run --network mynet -- ping -n -c 3 c1
say "ip netns exec tn_demo_c1 ping -n -c 3 10.88.0.1    # the gateway, answered inside the switch"
ip netns exec tn_demo_c1 ping -n -c 3 10.88.0.1
say "ip netns exec tn_demo_c1 iperf3 -c 10.88.0.3 -t 5    # TCP c1 -> c2"
ip netns exec tn_demo_c1 iperf3 -c 10.88.0.3 -t 5
say "tapnet network inspect mynet    # endpoints, learned MACs, per-port counters"
"$T" network inspect mynet
echo
echo "demo: done (daemon log: $DIR/daemon.log is removed on exit)"
