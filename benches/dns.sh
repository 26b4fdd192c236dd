#!/usr/bin/env bash
# dns.sh - the embedded resolver's latency and rate for local names, from a
# container through the switch to the gateway's DNS and back.
#   N=20000 benches/dns.sh
# One client (python3, one outstanding query) asks N times for a local
# name over UDP; prints queries/s and the p50/p99 round trip. Namespaces are
# tn_dnsb_*, removed on exit. Run as root.
set -uo pipefail
cd "$(dirname "$0")/.."
N="${N:-20000}"
[ "$(id -u)" = 0 ] || { echo "dns.sh: run as root" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p tapnet -q || exit 1
T="$PWD/target/release/tapnet"
OUT=$(mktemp -d /tmp/tn_dnsb.XXXXXX)
export TAPNET_SOCKET="$OUT/tapnet.sock"
PIDS=()
cleanup() {
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; wait "${PIDS[i]}" 2>/dev/null; done
	for ns in $(ip netns list | awk '/^tn_dnsb_/ {print $1}'); do ip netns del "$ns"; done
	rm -rf "$OUT"
}
trap cleanup EXIT
ip netns add tn_dnsb_host && ip -n tn_dnsb_host link set lo up
nsenter --net=/run/netns/tn_dnsb_host "$T" daemon --state-dir "$OUT/state" --netns-prefix tn_dnsb_ \
	--dns 127.0.0.1 >"$OUT/daemon.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do "$T" network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
"$T" network create dnsb --subnet 10.98.0.0/24 >/dev/null || exit 1
"$T" run --network dnsb --name target --ip 10.98.0.2 -- sleep 100000 >/dev/null 2>&1 & PIDS+=($!)
"$T" run --network dnsb --name client --ip 10.98.0.3 -- sleep 100000 >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do [ "$("$T" ps -q | wc -l)" = 2 ] && break; sleep 0.1; done
ip netns exec tn_dnsb_client python3 - "$N" <<'PY'
import socket, struct, sys, time
n = int(sys.argv[1])
q = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"\x06target\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(("10.98.0.1", 53))
lat = []
t0 = time.perf_counter()
for i in range(n):
    m = struct.pack(">H", i & 0xffff) + q[2:]
    a = time.perf_counter()
    s.send(m)
    r = s.recv(512)
    lat.append(time.perf_counter() - a)
    assert r[:2] == m[:2] and r[-4:] == bytes([10, 98, 0, 2]), r
el = time.perf_counter() - t0
lat.sort()
print("dns local A over UDP: %d queries, %.0f queries/s, p50 %.0f us, p99 %.0f us"
      % (n, n / el, lat[n // 2] * 1e6, lat[n * 99 // 100] * 1e6))
PY
