#!/usr/bin/env bash
# compare.sh - tapnet's paths next to the reference paths they replace,
# measured INTERLEAVED in one run (A B C A B C ..., REPS rounds), so the
# VM's run-to-run swings (30 % here) hit every path alike; prints one table
# of medians with min/max and the ratio tapnet/reference per column.
#
#   sudo REPS=5 DUR=4 SP_DUR=3 benches/compare.sh
#
# Rows (issue 14; more follow):
#   veth           two namespaces on one veth pair: the ceiling
#   kernel bridge  veth-br0-veth, as ../shared/anchors/bridge.sh builds it
#   tapnet         two `tapnet run` containers on one network
#   kernel routing a namespace -> veth -> a router namespace that forwards
#                  (ip_forward in that namespace only) -> veth -> "the
#                  internet": the iptables-free reference for outbound NAT.
#                  It does not translate (no NAT without iptables or nft),
#                  so it is the cheaper path: the comparison favours it
#   tapnet NAT out a container -> the root-mode uplink (masquerade in the
#                  datapath) -> the "internet" namespace
#   pasta -t splice  host 127.0.0.1 -> pasta's port forwarding (splice) ->
#                  a namespace, as ../shared/anchors/pasta.sh builds it
#   tapnet published host 127.0.0.1 -> a container's published port
# Columns, as the anchors measure them: TCP 1-/4-stream (iperf3 -t DUR
# [-P 4], receiver rate), UDP 64 B (iperf3 -u -l 64 -b 0, datagrams
# received per second), TCP RR p50 (sockperf ping-pong --tcp -m 64
# --full-rtt). Everything runs in tn_cmp_* namespaces made and deleted
# here; processes are stopped by PID.
set -uo pipefail
cd "$(dirname "$0")/.."
DUR="${DUR:-4}" REPS="${REPS:-5}" SP_DUR="${SP_DUR:-3}" MTU="${MTU:-1500}"
[ "$(id -u)" = 0 ] || { echo "compare.sh: run as root" >&2; exit 1; }
for t in iperf3 sockperf python3 timeout pasta; do
	command -v $t >/dev/null || { echo "compare.sh: missing $t (scripts/deps.sh installs it)" >&2; exit 1; }
done
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p tapnet -q || exit 1
T="$PWD/target/release/tapnet"
OUT="${OUT:-$(mktemp -d /tmp/tn_cmp.XXXXXX)}"
export TAPNET_SOCKET="$OUT/tapnet.sock"
PIDS=()
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() {
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill "${PIDS[i]}" 2>/dev/null
		for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
		kill -9 "${PIDS[i]}" 2>/dev/null
		wait "${PIDS[i]}" 2>/dev/null
	done
	for ns in $(ip netns list | awk '/^tn_cmp_/ {print $1}'); do ip netns del "$ns"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
mkns() { for n in "$@"; do ip netns add "$n" && ip -n "$n" link set lo up; done; }

# veth: the ceiling
mkns tn_cmp_v1 tn_cmp_v2
ip -n tn_cmp_v1 link add eth0 type veth peer name eth0 netns tn_cmp_v2
for i in 1 2; do
	ip -n tn_cmp_v$i link set eth0 mtu "$MTU"
	ip -n tn_cmp_v$i addr add 10.76.1.$i/24 dev eth0
	ip -n tn_cmp_v$i link set eth0 up
done
# the kernel bridge
mkns tn_cmp_kbr tn_cmp_kb1 tn_cmp_kb2
ip -n tn_cmp_kbr link add br0 type bridge stp_state 0
ip -n tn_cmp_kbr link set br0 mtu "$MTU"
for i in 1 2; do
	ip -n tn_cmp_kbr link add vb$i type veth peer name eth0 netns tn_cmp_kb$i
	ip -n tn_cmp_kbr link set vb$i mtu "$MTU" master br0 up
	ip -n tn_cmp_kb$i link set eth0 mtu "$MTU"
	ip -n tn_cmp_kb$i addr add 10.77.1.$i/24 dev eth0
	ip -n tn_cmp_kb$i link set eth0 up
done
ip -n tn_cmp_kbr link set br0 up
# kernel routing: client - router - "internet"
mkns tn_cmp_rc tn_cmp_rtr tn_cmp_rinet
ip -n tn_cmp_rc link add eth0 type veth peer name in0 netns tn_cmp_rtr
ip -n tn_cmp_rtr link add out0 type veth peer name eth0 netns tn_cmp_rinet
ip -n tn_cmp_rc addr add 10.78.0.2/24 dev eth0
ip -n tn_cmp_rtr addr add 10.78.0.1/24 dev in0
ip -n tn_cmp_rtr addr add 198.18.0.1/24 dev out0
ip -n tn_cmp_rinet addr add 198.18.0.2/24 dev eth0
for l in "tn_cmp_rc eth0" "tn_cmp_rtr in0" "tn_cmp_rtr out0" "tn_cmp_rinet eth0"; do
	set -- $l
	ip -n "$1" link set "$2" mtu "$MTU" up
done
ip -n tn_cmp_rc route add default via 10.78.0.1
ip -n tn_cmp_rinet route add 10.78.0.0/24 via 198.18.0.1
ip netns exec tn_cmp_rtr sysctl -q -w net.ipv4.ip_forward=1
# pasta: its port forwarding from a "host" namespace into a namespace;
# pasta needs a routable interface on the host side: a veth into a
# dead-end namespace (as the anchor does)
mkns tn_cmp_phost tn_cmp_pns tn_cmp_pvoid
ip -n tn_cmp_phost link add ext0 type veth peer name ext0p netns tn_cmp_pvoid
ip -n tn_cmp_phost addr add 10.79.9.1/24 dev ext0
ip -n tn_cmp_phost link set ext0 up
ip -n tn_cmp_pvoid link set ext0p up
ip -n tn_cmp_phost route add default via 10.79.9.254 dev ext0
ip netns exec tn_cmp_phost pasta -f --config-net -I tap0 --runas 0:0 \
	-t 5201,5301 -u 5201 -T none -U none --netns tn_cmp_pns >"$OUT/pasta.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do ip -n tn_cmp_pns link show tap0 >/dev/null 2>&1 && break; sleep 0.1; done
# tapnet, with a root-mode uplink (a veth of its namespace) to the
# "internet" namespace
mkns tn_cmp_host tn_cmp_inet
ip -n tn_cmp_host link add up0 type veth peer name eth0 netns tn_cmp_inet
ip -n tn_cmp_host link set up0 mtu "$MTU" up
ip -n tn_cmp_inet addr add 203.0.113.1/24 dev eth0
ip -n tn_cmp_inet link set eth0 mtu "$MTU" up
nsenter --net=/run/netns/tn_cmp_host "$T" daemon --state-dir "$OUT/state" --netns-prefix tn_cmp_ \
	--dns 127.0.0.1 --uplink up0 --uplink-ip 203.0.113.2/24 --uplink-gateway 203.0.113.1 \
	>"$OUT/daemon.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do "$T" network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
"$T" network create bench --subnet 10.99.0.0/24 --mtu "$MTU" >/dev/null || exit 1
for c in cli srv; do
	PUB=()
	[ $c = srv ] && PUB=(-p 5201:5201 -p 5201:5201/udp -p 5301:5301)
	"$T" run --network bench --name $c "${PUB[@]}" -- sleep 100000 >"$OUT/$c.log" 2>&1 &
	PIDS+=($!)
done
for _ in $(seq 100); do [ "$("$T" ps -q | wc -l)" = 2 ] && break; sleep 0.1; done
SRV=$("$T" ps --format json | python3 -c 'import json,sys; print([c for c in json.load(sys.stdin) if c["name"]=="srv"][0]["endpoints"][0]["ip"].split("/")[0])')

# label|client ns|server ns|address the client connects to|address the
# server listens on (default: the same)
ROWS=("veth (ceiling)|tn_cmp_v1|tn_cmp_v2|10.76.1.2"
	"kernel bridge|tn_cmp_kb1|tn_cmp_kb2|10.77.1.2"
	"tapnet|tn_cmp_cli|tn_cmp_srv|$SRV"
	"kernel routing (router namespace, no NAT)|tn_cmp_rc|tn_cmp_rinet|198.18.0.2"
	"tapnet NAT out (root-mode uplink)|tn_cmp_cli|tn_cmp_inet|203.0.113.1"
	"pasta -t, L4 splice (host 127.0.0.1 -> ns)|tn_cmp_phost|tn_cmp_pns|127.0.0.1|0.0.0.0"
	"tapnet published port (host 127.0.0.1 -> container)|tn_cmp_host|tn_cmp_srv|127.0.0.1|$SRV")
# tapnet row:reference row, for the ratio lines
PAIRS=("2:1" "4:3" "6:5")
for r in "${ROWS[@]}"; do
	IFS='|' read -r _ c _ a _ <<<"$r"
	for _ in $(seq 20); do nsx "$c" ping -c 1 -W 1 -q "$a" >/dev/null 2>&1 && break; sleep 0.2; done
done

listening() { # NS PORT
	for _ in $(seq 200); do nsx "$1" ss -Hltn "sport = :$2" | grep -q . && return 0; sleep 0.05; done
	return 1
}
# iperf3 client run -> R (Gbps, or pps with -u)
iperf() { # CLIENT SERVER ADDR BIND TAG ARGS...
	local c=$1 s=$2 a=$3 bind=$4 tag=$5; shift 5
	nsx "$s" timeout -k 5 $((DUR + 30)) iperf3 -s -1 -B "$bind" -p 5201 >"$OUT/$tag.srv" 2>&1 &
	local srv=$!
	listening "$s" 5201
	nsx "$c" timeout -k 5 $((DUR + 30)) iperf3 -c "$a" -p 5201 -t "$DUR" -J "$@" >"$OUT/$tag.json" 2>&1
	wait $srv 2>/dev/null
	R=$(python3 - "$OUT/$tag.json" <<'PY'
import json, sys
try:
    e = json.load(open(sys.argv[1]))["end"]
    if "sum_received" in e and e["sum_sent"].get("retransmits") is not None:
        print("%.3f" % (e["sum_received"]["bits_per_second"] / 1e9))
    else:
        r = e["sum_received"] if "sum_received" in e else e["sum"]
        print("%.0f" % ((r["packets"] - r["lost_packets"]) / r["seconds"]))
except Exception:
    print("NA")
PY
)
}
rr() { # CLIENT SERVER ADDR BIND TAG -> R (p50 us)
	local c=$1 s=$2 a=$3 bind=$4 tag=$5
	nsx "$s" timeout -k 5 $((SP_DUR + 30)) sockperf server --tcp -i "$bind" -p 5301 >"$OUT/$tag.srv" 2>&1 &
	local srv=$!
	listening "$s" 5301
	nsx "$c" timeout $((SP_DUR + 20)) sockperf ping-pong --tcp -i "$a" -p 5301 -t "$SP_DUR" -m 64 --full-rtt >"$OUT/$tag" 2>&1
	kill $srv 2>/dev/null; wait $srv 2>/dev/null
	R=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/$tag" | awk '/percentile 50.000 =/ {print $NF}')
	[ -n "$R" ] || R=NA
}

declare -A V # V[row,col] = values
COLS=(tcp1 tcp4 udp64 rr)
for rep in $(seq "$REPS"); do
	for i in "${!ROWS[@]}"; do
		IFS='|' read -r label c s a bind <<<"${ROWS[i]}"
		bind=${bind:-$a}
		iperf "$c" "$s" "$a" "$bind" "tcp1.$rep.$i"; V[$i,tcp1]+="$R "
		iperf "$c" "$s" "$a" "$bind" "tcp4.$rep.$i" -P 4; V[$i,tcp4]+="$R "
		iperf "$c" "$s" "$a" "$bind" "udp.$rep.$i" -u -l 64 -b 0; V[$i,udp64]+="$R "
		rr "$c" "$s" "$a" "$bind" "rr.$rep.$i"; V[$i,rr]+="$R "
		log "rep $rep/$REPS $label: tcp1 $(echo ${V[$i,tcp1]} | awk '{print $NF}') tcp4 $(echo ${V[$i,tcp4]} | awk '{print $NF}') udp64 $(echo ${V[$i,udp64]} | awk '{print $NF}') rr $R"
	done
done

# median [min-max] of a list; the ratio of two medians
stats() { printf '%s\n' $1 | grep -E '^[0-9.]+$' | sort -g | awk '
	function f(x) { return (x >= 1000) ? sprintf("%.0f", x) : sprintf("%.4g", x) }
	{a[NR]=$1} END {if (NR==0) {print "NA"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s [%s-%s]\n", f(m), f(a[1]), f(a[NR])}'; }
med() { stats "$1" | awk '{print $1}'; }
ratio() { python3 -c "import sys
try: print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))
except Exception: print('NA')" "$1" "$2"; }
label() { echo "${ROWS[$1]}" | cut -d'|' -f1; }
echo
echo "Interleaved: REPS=$REPS DUR=$DUR SP_DUR=$SP_DUR MTU=$MTU, $(date -u +%Y-%m-%d) (median [min-max]; RR: lower is better)"
echo
echo "| path | TCP 1-stream Gbps | TCP 4-stream Gbps | UDP 64B rx pps | TCP RR p50 us |"
echo "|---|---|---|---|---|"
for i in "${!ROWS[@]}"; do
	printf '| %s | %s | %s | %s | %s |\n' "$(label "$i")" \
		"$(stats "${V[$i,tcp1]}")" "$(stats "${V[$i,tcp4]}")" "$(stats "${V[$i,udp64]}")" "$(stats "${V[$i,rr]}")"
done
for p in "${PAIRS[@]}"; do
	a=${p%:*} b=${p#*:}
	printf '| **%s / %s** | **%sx** | **%sx** | **%sx** | **%sx** |\n' "$(label "$a")" "$(label "$b")" \
		"$(ratio "$(med "${V[$a,tcp1]}")" "$(med "${V[$b,tcp1]}")")" \
		"$(ratio "$(med "${V[$a,tcp4]}")" "$(med "${V[$b,tcp4]}")")" \
		"$(ratio "$(med "${V[$a,udp64]}")" "$(med "${V[$b,udp64]}")")" \
		"$(ratio "$(med "${V[$a,rr]}")" "$(med "${V[$b,rr]}")")"
done
echo
"$T" network inspect bench | python3 -c 'import json,sys; n=json.load(sys.stdin)[0]; print("tapnet switch drops:", {k: v for k, v in n["counters"]["drops"].items() if v})'
log "logs in $OUT"
exit 0
