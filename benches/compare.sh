#!/usr/bin/env bash
# compare.sh - tapnet's paths next to the reference paths they replace,
# measured INTERLEAVED in one run (A B C A B C ..., REPS rounds), so the
# VM's run-to-run swings (30 % here) hit every path alike; prints one table
# of medians with min/max and the ratio tapnet/reference per column.
#
#   sudo REPS=5 DUR=4 SP_DUR=3 benches/compare.sh
#
# SETS picks the groups of rows (default: all of them):
#   switch   veth (two namespaces on one veth pair: the ceiling); the
#            kernel bridge (veth-br0-veth, as ../shared/anchors/bridge.sh
#            builds it); tapnet (two `tapnet run` containers, one network);
#            the same on a second daemon with WORKERS (default 1)
#            datapath workers (--datapath-workers)
#   nat      kernel routing: a namespace -> veth -> a router namespace that
#            forwards (ip_forward in that namespace only) -> veth -> "the
#            internet", the iptables-free reference for outbound NAT. It
#            does not translate (no NAT without iptables or nft), so it is
#            the cheaper path: the comparison favours it. tapnet NAT out: a
#            container -> the root-mode uplink (masquerade in the datapath)
#            -> the "internet" namespace
#   socknat  outbound through host sockets, the rootless back-ends, at MTU
#            1500 and 65520: slirp4netns, pasta (its tap path) and
#            tapnet's socket NAT (a second daemon, no uplink), each in the
#            same "host" namespace whose veth leads to a server namespace.
#            The anchors send to the host's loopback instead; here all
#            three go where outbound traffic goes, out of the host. The
#            unprivileged daemon (e2e.sh MODE=rootless) runs this same
#            path
#   publish  into a container: pasta -t (as ../shared/anchors/pasta.sh
#            builds it) from the host's 127.0.0.1 (its L4 splice path) and
#            from the host's own non-loopback address (its tap path);
#            tapnet's published port from the host's 127.0.0.1 (the relay)
#            and from the "internet" namespace to the root-mode uplink's
#            address (DNAT in the datapath)
#   macvlan  a container on a macvlan network -> a peer on the parent's
#            segment (a namespace behind a veth), and a kernel macvlan
#            device (bridge mode) on a second veth to the same peer
#   overlay  a container on host 1 -> one on host 2 of an overlay network
#            (two daemons in two namespaces on an underlay veth, MTU 1500,
#            etcd on host 1), and the kernel's VXLAN path Docker's overlay
#            uses (veth - bridge - vxlan - underlay, static FDB, as
#            ../shared/anchors/vxlan.sh builds it); the CPU column counts
#            host 1's daemon only
#   dns      its own table: dnsperf (Debian's) against tapnet's resolver
#            (a container asks its gateway), dnsmasq and aardvark-dns (each
#            on the kernel bridge's gateway address, asked by a namespace
#            on that bridge, as Podman's containers ask aardvark-dns), all
#            serving the same two local names; and forwarded names, each
#            resolver to an upstream on its namespace's loopback, with and
#            without a cache (dnsmasq's, tapnet's). Queries/s: DNS_DUR seconds,
#            100 queries outstanding (dnsperf's default). p50/p99 latency:
#            a second run at a fixed DNS_QPS offered load every server
#            sustains, from dnsperf's per-query times (-v)
# Columns, as the anchors measure them: TCP 1-/4-stream (iperf3 -t DUR
# [-P 4], receiver rate), UDP 64 B (iperf3 -u -l 64 -b 0, datagrams
# received per second), TCP RR p50 (sockperf ping-pong --tcp -m 64
# --full-rtt). Everything runs in tn_cmp_* namespaces made and deleted
# here; processes are stopped by PID.
set -uo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
DUR="${DUR:-4}" REPS="${REPS:-5}" SP_DUR="${SP_DUR:-3}" MTU="${MTU:-1500}"
DNS_DUR="${DNS_DUR:-4}" DNS_QPS="${DNS_QPS:-20000}"
# IDLE=N idle containers beside the measuring ones (see below)
# extra options for every tapnet daemon (e.g. --busy-poll-us 20)
TAPNET_ARGS="${TAPNET_ARGS:-}"
SETS="${SETS:-switch nat socknat publish macvlan overlay dns}"
has() { [[ " $SETS " == *" $1 "* ]]; }
[ "$(id -u)" = 0 ] || { echo "compare.sh: run as root" >&2; exit 1; }
AARDVARK=$(command -v aardvark-dns || echo /usr/lib/podman/aardvark-dns)
need=(iperf3 sockperf python3 timeout)
has socknat && need+=(pasta slirp4netns unshare)
has publish && need+=(pasta)
has dns && need+=(dnsperf dnsmasq dig "$AARDVARK")
has overlay && need+=(etcd etcdctl bridge)
for t in "${need[@]}"; do
	command -v $t >/dev/null || { echo "compare.sh: missing $t (scripts/deps.sh installs it)" >&2; exit 1; }
done
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p tapnet -q || exit 1
T="$PWD/target/release/tapnet"
OUT="${OUT:-$(mktemp -d /tmp/tn_cmp.XXXXXX)}"
export TAPNET_SOCKET="$OUT/tapnet.sock"
PIDS=()
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() { stop_all tn_cmp_ 50; }
trap cleanup EXIT
trap 'exit 130' INT TERM
# (foreground only: in the background, $! would be the subshell, not the
# command, and killing it would leave the command running)
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
mkns() { for n in "$@"; do ip netns add "$n" && ip -n "$n" link set lo up; done; }

# label|client ns|server ns|address the client connects to|address the
# server listens on (default: the same)|the forwarding process, if any
# (its CPU is reported)
ROWS=()
declare -A SLPID PTPID OPID
PAIRS=() # tapnet row:reference row, for the ratio lines
row() { ROWS+=("$1"); LAST=$((${#ROWS[@]} - 1)); }
waitaddr() { # NS DEV ADDR
	for _ in $(seq 100); do ip -n "$1" -br addr show "$2" 2>/dev/null | grep -q "$3" && return 0; sleep 0.1; done
	return 1
}

# tapnet, with a root-mode uplink (a veth of its namespace) to the
# "internet" namespace: every set but socknat uses this daemon
mkns tn_cmp_host tn_cmp_inet
ip -n tn_cmp_host link add up0 type veth peer name eth0 netns tn_cmp_inet
ip -n tn_cmp_host link set up0 mtu "$MTU" up
ip -n tn_cmp_inet addr add 203.0.113.1/24 dev eth0
ip -n tn_cmp_inet link set eth0 mtu "$MTU" up
nsenter --net=/run/netns/tn_cmp_host "$T" daemon $TAPNET_ARGS --state-dir "$OUT/state" --netns-prefix tn_cmp_ \
	--dns 127.0.0.1 --uplink up0 --uplink-ip 203.0.113.2/24 --uplink-gateway 203.0.113.1 \
	>"$OUT/daemon.log" 2>&1 &
PIDS+=($!)
DPID=$! # nsenter execs the daemon: this is its PID
for _ in $(seq 50); do "$T" network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
"$T" network create bench --subnet 10.99.0.0/24 --mtu "$MTU" >/dev/null || exit 1
for c in cli srv; do
	PUB=()
	[ $c = srv ] && PUB=(-p 5201:5201 -p 5201:5201/udp -p 5301:5301)
	"$T" run --network bench --name $c --ip 10.99.0.$([ $c = cli ] && echo 3 || echo 2) "${PUB[@]}" \
		-- sleep 100000 >"$OUT/$c.log" 2>&1 &
	PIDS+=($!)
done
for _ in $(seq 100); do [ "$("$T" ps -q | wc -l)" = 2 ] && break; sleep 0.1; done
SRV=10.99.0.2
# IDLE=N: N more containers on the measured network, idle, attached
# before anything is measured (the switch's tables and the datapath's
# port set grow; the two measuring containers should not notice)
if [ "${IDLE:-0}" -gt 0 ]; then
	for i in $(seq "$IDLE"); do
		"$T" run --network bench --name "idle$i" -- sleep 100000 >/dev/null 2>&1 &
		PIDS+=($!)
	done
	for _ in $(seq 600); do [ "$("$T" ps -q | wc -l)" -ge $((IDLE + 2)) ] && break; sleep 0.1; done
	log "$(("$("$T" ps -q | wc -l)" - 2)) idle containers attached; daemon RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$DPID/status)"
fi

if has switch; then
	mkns tn_cmp_v1 tn_cmp_v2
	ip -n tn_cmp_v1 link add eth0 type veth peer name eth0 netns tn_cmp_v2
	for i in 1 2; do
		ip -n tn_cmp_v$i link set eth0 mtu "$MTU"
		ip -n tn_cmp_v$i addr add 10.76.1.$i/24 dev eth0
		ip -n tn_cmp_v$i link set eth0 up
	done
fi
if has switch || has dns; then
	kernel_bridge tn_cmp_ "$MTU"
fi
if has switch; then
	row "veth (ceiling)|tn_cmp_v1|tn_cmp_v2|10.76.1.2"
	row "kernel bridge|tn_cmp_kb1|tn_cmp_kb2|10.77.1.2"; ref=$LAST
	row "tapnet|tn_cmp_cli|tn_cmp_srv|$SRV||$DPID"; PAIRS+=("$LAST:$ref"); one=$LAST
	# the same with another number of datapath workers (WORKERS, default
	# 1; the first daemon has its default, one per CPU up to 4, unless
	# TAPNET_ARGS says): a second daemon, busy polling as the first has it
	# by default with its uplink
	WORKERS="${WORKERS:-1}"
	mkns tn_cmp_whost
	mkdir -p "$OUT/w"
	nsenter --net=/run/netns/tn_cmp_whost "$T" daemon --busy-poll-us 50 $TAPNET_ARGS --datapath-workers "$WORKERS" \
		--state-dir "$OUT/w/state" --socket "$OUT/w/tapnet.sock" --netns-prefix tn_cmp_w_ --dns 127.0.0.1 \
		>"$OUT/w/daemon.log" 2>&1 &
	PIDS+=($!)
	WPID=$!
	for _ in $(seq 50); do TAPNET_SOCKET="$OUT/w/tapnet.sock" "$T" network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
	TAPNET_SOCKET="$OUT/w/tapnet.sock" "$T" network create wbench --subnet 10.95.0.0/24 --mtu "$MTU" >/dev/null || exit 1
	for c in cli srv; do
		TAPNET_SOCKET="$OUT/w/tapnet.sock" "$T" run --network wbench --name $c \
			--ip 10.95.0.$([ $c = cli ] && echo 3 || echo 2) -- sleep 100000 >"$OUT/w/$c.log" 2>&1 &
		PIDS+=($!)
	done
	for _ in $(seq 100); do [ "$(TAPNET_SOCKET="$OUT/w/tapnet.sock" "$T" ps -q | wc -l)" = 2 ] && break; sleep 0.1; done
	row "tapnet, --datapath-workers $WORKERS|tn_cmp_w_cli|tn_cmp_w_srv|10.95.0.2||$WPID"
	PAIRS+=("$LAST:$ref" "$LAST:$one")
fi

if has nat; then
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
	row "kernel routing (router namespace, no NAT)|tn_cmp_rc|tn_cmp_rinet|198.18.0.2"; ref=$LAST
	row "tapnet NAT out (root-mode uplink)|tn_cmp_cli|tn_cmp_inet|203.0.113.1||$DPID"; PAIRS+=("$LAST:$ref")
fi

if has socknat; then
	# the "host" of the socket NATs: a veth to the server namespace
	# (198.19.0.1) and a default route to an address nobody has (pasta
	# wants one to copy; the gateway address is its alias for the host)
	mkns tn_cmp_shost tn_cmp_sinet
	ip -n tn_cmp_shost link add ext0 type veth peer name eth0 netns tn_cmp_sinet
	ip -n tn_cmp_shost addr add 198.19.0.2/24 dev ext0
	ip -n tn_cmp_sinet addr add 198.19.0.1/24 dev eth0
	ip -n tn_cmp_shost link set ext0 up
	ip -n tn_cmp_sinet link set eth0 up
	ip -n tn_cmp_shost route add default via 198.19.0.254 dev ext0
	ip netns exec tn_cmp_shost sysctl -q -w net.ipv4.ping_group_range="0 2147483647"
	for m in 1500 65520; do
		# slirp4netns: a namespace made by unshare(1), attached by name
		unshare --net -- sleep 100000 &
		spid=$!
		PIDS+=($spid)
		for _ in $(seq 100); do
			[ "$(readlink /proc/$spid/ns/net 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] && break
			sleep 0.05
		done
		# never attach (and let slirp4netns configure) this script's own
		# namespace
		[ "$(readlink /proc/$spid/ns/net 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] ||
			{ echo "compare.sh: unshare made no namespace" >&2; exit 1; }
		ip netns attach tn_cmp_sl$m $spid
		ip netns exec tn_cmp_shost slirp4netns --configure --mtu=$m $spid tap0 >"$OUT/slirp.$m.log" 2>&1 &
		PIDS+=($!)
		SLPID[$m]=$!
		waitaddr tn_cmp_sl$m tap0 10.0.2.100 || { cat "$OUT/slirp.$m.log" >&2; exit 1; }
		# pasta: its namespace's MTU is 65520; 1500 is set inside, as the
		# anchor does
		mkns tn_cmp_pt$m
		ip netns exec tn_cmp_shost pasta -f --config-net -I tap0 --runas 0:0 \
			-t none -u none -T none -U none --netns tn_cmp_pt$m >"$OUT/pasta.$m.log" 2>&1 &
		PIDS+=($!)
		PTPID[$m]=$!
		waitaddr tn_cmp_pt$m tap0 198.19.0.2 || { cat "$OUT/pasta.$m.log" >&2; exit 1; }
		ip -n tn_cmp_pt$m link set tap0 mtu $m
	done
	mkdir -p "$OUT/s"
	nsenter --net=/run/netns/tn_cmp_shost "$T" daemon $TAPNET_ARGS --state-dir "$OUT/s/state" --socket "$OUT/s/tapnet.sock" \
		--netns-prefix tn_cmp_s_ --dns 127.0.0.1 >"$OUT/s/daemon.log" 2>&1 &
	PIDS+=($!)
	SPID=$!
	for _ in $(seq 50); do TAPNET_SOCKET="$OUT/s/tapnet.sock" "$T" network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
	for m in 1500 65520; do
		TAPNET_SOCKET="$OUT/s/tapnet.sock" "$T" network create sn$m --mtu $m >/dev/null || exit 1
		TAPNET_SOCKET="$OUT/s/tapnet.sock" "$T" run --network sn$m --name c$m -- sleep 100000 >"$OUT/s/c$m.log" 2>&1 &
		PIDS+=($!)
	done
	for _ in $(seq 100); do [ "$(TAPNET_SOCKET="$OUT/s/tapnet.sock" "$T" ps -q | wc -l)" = 2 ] && break; sleep 0.1; done
	for m in 1500 65520; do
		row "slirp4netns out, MTU $m|tn_cmp_sl$m|tn_cmp_sinet|198.19.0.1||${SLPID[$m]}"; sl=$LAST
		row "pasta out (tap path), MTU $m|tn_cmp_pt$m|tn_cmp_sinet|198.19.0.1||${PTPID[$m]}"; pt=$LAST
		row "tapnet socket NAT out, MTU $m|tn_cmp_s_c$m|tn_cmp_sinet|198.19.0.1||$SPID"
		PAIRS+=("$LAST:$sl" "$LAST:$pt")
	done
fi

if has macvlan; then
	# the parent's segment: two veths from the daemon's namespace to
	# tn_cmp_lan, one the parent of tapnet's macvlan network, one the
	# parent of a kernel macvlan device (bridge mode) in tn_cmp_kmv
	mkns tn_cmp_lan tn_cmp_kmv
	for i in 0 1; do
		ip -n tn_cmp_host link add lanp$i type veth peer name lan$i netns tn_cmp_lan
		ip -n tn_cmp_host link set lanp$i mtu "$MTU" up
		ip -n tn_cmp_lan addr add 10.9$((8 - i)).0.1/24 dev lan$i
		ip -n tn_cmp_lan link set lan$i mtu "$MTU" up
	done
	ip -n tn_cmp_host link add kmv0 link lanp1 type macvlan mode bridge
	ip -n tn_cmp_host link set kmv0 netns tn_cmp_kmv
	ip -n tn_cmp_kmv addr add 10.97.0.2/24 dev kmv0
	ip -n tn_cmp_kmv link set kmv0 mtu "$MTU" up
	"$T" network create -d macvlan -o parent=lanp0 --subnet 10.98.0.0/24 --gateway 10.98.0.1 \
		--mtu "$MTU" mvnet >/dev/null || exit 1
	"$T" run --network mvnet --name mv --ip 10.98.0.2 -- sleep 100000 >"$OUT/mv.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do [ "$("$T" ps -q | wc -l)" -ge $((3 + ${IDLE:-0})) ] && break; sleep 0.1; done
	row "kernel macvlan (bridge mode) -> a peer on the parent's segment|tn_cmp_kmv|tn_cmp_lan|10.97.0.1"; ref=$LAST
	row "tapnet macvlan -> a peer on the parent's segment|tn_cmp_mv|tn_cmp_lan|10.98.0.1||$DPID"
	PAIRS+=("$LAST:$ref")
fi

if has overlay; then
	# two hosts (namespaces) on an underlay veth (MTU 1500), etcd on host
	# 1, a tapnet daemon on each; and the kernel's VXLAN path Docker's
	# overlay uses (veth - bridge - vxlan - underlay, static FDB, as
	# ../shared/anchors/vxlan.sh builds it) on two more
	mkns tn_cmp_o1 tn_cmp_o2
	ip -n tn_cmp_o1 link add ul0 type veth peer name ul0 netns tn_cmp_o2
	for i in 1 2; do
		ip -n tn_cmp_o$i addr add 10.77.8.$i/24 dev ul0
		ip -n tn_cmp_o$i link set ul0 mtu 1500 up
	done
	start_etcd tn_cmp_o1 || { echo "etcd did not start: $OUT/etcd.log" >&2; exit 1; }
	for i in 1 2; do
		mkdir -p "$OUT/o$i"
		nsenter --net=/run/netns/tn_cmp_o$i "$T" daemon $TAPNET_ARGS --state-dir "$OUT/o$i/state" \
			--socket "$OUT/o$i/tapnet.sock" --netns-prefix tn_cmp_o${i}_ --dns 127.0.0.1 \
			--cluster-store etcd://10.77.8.1:2379 --cluster-advertise 10.77.8.$i >"$OUT/o$i/daemon.log" 2>&1 &
		PIDS+=($!)
		OPID[$i]=$!
		for _ in $(seq 100); do TAPNET_SOCKET="$OUT/o$i/tapnet.sock" "$T" network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
	done
	TAPNET_SOCKET="$OUT/o1/tapnet.sock" "$T" network create -d overlay --subnet 10.96.0.0/24 ov >/dev/null || exit 1
	for _ in $(seq 100); do TAPNET_SOCKET="$OUT/o2/tapnet.sock" "$T" network ls --format '{{.Name}}' | grep -qx ov && break; sleep 0.1; done
	for i in 1 2; do
		TAPNET_SOCKET="$OUT/o$i/tapnet.sock" "$T" run --network ov --name c --ip 10.96.0.1$i -- sleep 100000 >"$OUT/o$i/c.log" 2>&1 &
		PIDS+=($!)
	done
	for i in 1 2; do
		for _ in $(seq 100); do [ "$(TAPNET_SOCKET="$OUT/o$i/tapnet.sock" "$T" ps -q | wc -l)" = 1 ] && break; sleep 0.1; done
	done
	kernel_vxlan tn_cmp_
	row "kernel VXLAN (bridge - vxlan - underlay veth)|tn_cmp_kc1|tn_cmp_kc2|10.77.19.2"; ref=$LAST
	row "tapnet overlay (host 1 -> host 2)|tn_cmp_o1_c|tn_cmp_o2_c|10.96.0.12||${OPID[1]}"
	PAIRS+=("$LAST:$ref")
fi

if has publish; then
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
	PASTA_PID=$!
	waitaddr tn_cmp_pns tap0 10.79.9.1 || { cat "$OUT/pasta.log" >&2; exit 1; }
	row "pasta -t, L4 splice (host 127.0.0.1 -> ns)|tn_cmp_phost|tn_cmp_pns|127.0.0.1|0.0.0.0|$PASTA_PID"; ref=$LAST
	row "tapnet published port (host 127.0.0.1 -> container)|tn_cmp_host|tn_cmp_srv|127.0.0.1|$SRV|$DPID"
	PAIRS+=("$LAST:$ref")
	row "pasta -t, tap path (host address -> ns)|tn_cmp_phost|tn_cmp_pns|10.79.9.1|0.0.0.0|$PASTA_PID"; ref=$LAST
	row "tapnet published port (uplink address -> container, DNAT)|tn_cmp_inet|tn_cmp_srv|203.0.113.2|$SRV|$DPID"
	PAIRS+=("$LAST:$ref")
fi

if has dns; then
	# Local names: dnsmasq (.253) and aardvark-dns (.254, port 53 as
	# netavark runs it for Podman) on the kernel bridge; both know cli and
	# srv, as tapnet knows its two containers. aardvark-dns answers a
	# container by its network's domain (Podman's containers search
	# dns.podman) and sends single labels upstream, so it is asked for
	# srv.dns.podman.
	# Forwarded names: every resolver forwards to an "upstream" dnsmasq on
	# its own namespace's loopback that knows fwd.example (TTL 600):
	# dnsmasq with its cache (150 entries, its default) and without
	# (--cache-size=0, on .252), aardvark-dns (no cache), tapnet with its
	# cache and without (--dns-cache 0: a third daemon, tn_cmp_d_*)
	upstream() { # NS: the upstream on 127.0.0.1:53 of NS
		ip netns exec "$1" dnsmasq -k -C /dev/null --no-resolv --no-hosts --user=root --pid-file= \
			--listen-address=127.0.0.1 --bind-interfaces --local-ttl=600 \
			--host-record=fwd.example,192.0.2.80 >"$OUT/upstream.$1.log" 2>&1 &
		PIDS+=($!)
	}
	for a in 252 253 254; do ip -n tn_cmp_kbr addr add 10.77.1.$a/24 dev br0; done
	upstream tn_cmp_kbr
	ip netns exec tn_cmp_kbr dnsmasq -k -C /dev/null --no-resolv --no-hosts --user=root --pid-file= \
		--listen-address=10.77.1.253 --bind-interfaces --server=127.0.0.1 \
		--host-record=cli,10.77.1.1 --host-record=srv,10.77.1.2 >"$OUT/dnsmasq.log" 2>&1 &
	PIDS+=($!)
	ip netns exec tn_cmp_kbr dnsmasq -k -C /dev/null --no-resolv --no-hosts --user=root --pid-file= \
		--listen-address=10.77.1.252 --bind-interfaces --server=127.0.0.1 --cache-size=0 \
		>"$OUT/dnsmasq-nocache.log" 2>&1 &
	PIDS+=($!)
	mkdir -p "$OUT/aardvark"
	# first line: the addresses it listens on, then the network's servers
	printf '10.77.1.254 127.0.0.1\n%064x 10.77.1.1  cli\n%064x 10.77.1.2  srv\n' 1 2 >"$OUT/aardvark/cmp"
	# it forks into the background and leaves its PID in the directory
	ip netns exec tn_cmp_kbr "$AARDVARK" --config "$OUT/aardvark" -p 53 run >"$OUT/aardvark.log" 2>&1
	for _ in $(seq 50); do [ -s "$OUT/aardvark/aardvark.pid" ] && break; sleep 0.1; done
	PIDS+=("$(cat "$OUT/aardvark/aardvark.pid")")
	upstream tn_cmp_host
	mkns tn_cmp_dhost
	upstream tn_cmp_dhost
	mkdir -p "$OUT/d"
	DT() { TAPNET_SOCKET="$OUT/d/tapnet.sock" "$T" "$@"; }
	nsenter --net=/run/netns/tn_cmp_dhost "$T" daemon $TAPNET_ARGS --state-dir "$OUT/d/state" --socket "$OUT/d/tapnet.sock" \
		--netns-prefix tn_cmp_d_ --dns 127.0.0.1 --dns-cache 0 >"$OUT/d/daemon.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 50); do DT network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
	DT network create dnsn --subnet 10.98.0.0/24 >/dev/null || exit 1
	# (not through DT: in the background, $! would be the subshell)
	TAPNET_SOCKET="$OUT/d/tapnet.sock" "$T" run --network dnsn --name dq -- sleep 100000 >"$OUT/d/dq.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do [ "$(DT ps -q | wc -l)" = 1 ] && break; sleep 0.1; done
	printf 'srv A\n' >"$OUT/q.local"
	printf 'srv.dns.podman A\n' >"$OUT/q.podman"
	printf 'fwd.example A\n' >"$OUT/q.fwd"
	# label|client ns|server|query file
	DNS_ROWS=("local: dnsmasq 2.90|tn_cmp_kb1|10.77.1.253|$OUT/q.local"
		"local: aardvark-dns 1.4|tn_cmp_kb1|10.77.1.254|$OUT/q.podman"
		"local: tapnet|tn_cmp_cli|10.99.0.1|$OUT/q.local"
		"forwarded: dnsmasq, its cache|tn_cmp_kb1|10.77.1.253|$OUT/q.fwd"
		"forwarded: dnsmasq, no cache|tn_cmp_kb1|10.77.1.252|$OUT/q.fwd"
		"forwarded: aardvark-dns (no cache)|tn_cmp_kb1|10.77.1.254|$OUT/q.fwd"
		"forwarded: tapnet, its cache|tn_cmp_cli|10.99.0.1|$OUT/q.fwd"
		"forwarded: tapnet, --dns-cache 0|tn_cmp_d_dq|10.98.0.1|$OUT/q.fwd")
	DNS_PAIRS=("2:0" "2:1" "6:3" "7:4" "7:5")
	for r in "${DNS_ROWS[@]}"; do
		IFS='|' read -r label c a q <<<"$r"
		for _ in $(seq 20); do
			nsx "$c" dig +short +tries=1 +time=1 @"$a" -q "$(cut -d' ' -f1 "$q")" A | grep -q . && continue 2
			sleep 0.2
		done
		echo "compare.sh: $label at $a does not answer" >&2
		exit 1
	done
fi

for r in "${ROWS[@]}"; do
	IFS='|' read -r _ c _ a _ <<<"$r"
	# (slirp4netns and pasta do not answer pings to other hosts: a few tries)
	for _ in $(seq 5); do nsx "$c" ping -c 1 -W 1 -q "$a" >/dev/null 2>&1 && break; sleep 0.2; done
done

listening() { # NS PORT
	for _ in $(seq 200); do nsx "$1" ss -Hltn "sport = :$2" | grep -q . && return 0; sleep 0.05; done
	return 1
}
# CPU: the machine's busy jiffies (all but idle and iowait) and total from
# /proc/stat, a process's utime+stime (all its threads) from /proc/PID/stat
NCPU=$(nproc) HZ=$(getconf CLK_TCK)
cpu_now() { # [PID] -> "total busy proc nanoseconds"
	local p=0
	[ -n "${1:-}" ] && p=$(awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null)
	awk -v p="${p:-0}" -v t="$(date +%s%N)" '/^cpu / {s = 0; for (i = 2; i <= 9; i++) s += $i; print s, s - $5 - $6, p, t}' /proc/stat
}
# iperf3 client run -> R (Gbps, or pps with -u); BUSY (cores busy on the
# whole machine) and PROC (cores the forwarding process used) meanwhile
iperf() { # CLIENT SERVER ADDR BIND TAG PID ARGS...
	local c=$1 s=$2 a=$3 bind=$4 tag=$5 pid=$6; shift 6
	ip netns exec "$s" timeout -k 5 $((DUR + 30)) iperf3 -s -1 -B "$bind" -p 5201 >"$OUT/$tag.srv" 2>&1 &
	local srv=$!
	listening "$s" 5201
	local c0 c1
	c0=$(cpu_now "$pid")
	nsx "$c" timeout -k 5 $((DUR + 30)) iperf3 -c "$a" -p 5201 -t "$DUR" -J "$@" >"$OUT/$tag.json" 2>&1
	c1=$(cpu_now "$pid")
	read -r BUSY PROC < <(echo "$c0 $c1" | awk -v n="$NCPU" -v hz="$HZ" -v pid="$pid" '{
		printf "%.2f %s\n", ($6 - $2) / ($5 - $1) * n, pid == "" ? "NA" : sprintf("%.2f", ($7 - $3) / hz / (($8 - $4) / 1e9)) }')
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
	ip netns exec "$s" timeout -k 5 $((SP_DUR + 30)) sockperf server --tcp -i "$bind" -p 5301 >"$OUT/$tag.srv" 2>&1 &
	local srv=$!
	listening "$s" 5301
	nsx "$c" timeout $((SP_DUR + 20)) sockperf ping-pong --tcp -i "$a" -p 5301 -t "$SP_DUR" -m 64 --full-rtt >"$OUT/$tag" 2>&1
	kill $srv 2>/dev/null; wait $srv 2>/dev/null
	# the next row's server may share this namespace: let the port go
	for _ in $(seq 100); do nsx "$s" ss -Hltn "sport = :5301" | grep -q . || break; sleep 0.05; done
	R=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/$tag" | awk '/percentile 50.000 =/ {print $NF}')
	[ -n "$R" ] || R=NA
}

declare -A V # V[row,col] = values
COLS=(tcp1 tcp4 udp64 rr)
for rep in $(seq "$REPS"); do
	for i in "${!ROWS[@]}"; do
		IFS='|' read -r label c s a bind pid <<<"${ROWS[i]}"
		bind=${bind:-$a}
		iperf "$c" "$s" "$a" "$bind" "tcp1.$rep.$i" "$pid"; V[$i,tcp1]+="$R "
		V[$i,busy]+="$BUSY " V[$i,proc]+="$PROC "
		# core-seconds the machine spent per gigabyte moved
		V[$i,cpb]+="$(awk -v b="$BUSY" -v r="$R" 'BEGIN {if (r + 0 > 0) printf "%.3f", b / (r / 8)}') "
		iperf "$c" "$s" "$a" "$bind" "tcp4.$rep.$i" "$pid" -P 4; V[$i,tcp4]+="$R "
		iperf "$c" "$s" "$a" "$bind" "udp.$rep.$i" "$pid" -u -l 64 -b 0; V[$i,udp64]+="$R "
		rr "$c" "$s" "$a" "$bind" "rr.$rep.$i"; V[$i,rr]+="$R "
		log "rep $rep/$REPS $label: tcp1 $(echo ${V[$i,tcp1]} | awk '{print $NF}') tcp4 $(echo ${V[$i,tcp4]} | awk '{print $NF}') udp64 $(echo ${V[$i,udp64]} | awk '{print $NF}') rr $R"
	done
done

# dnsperf -> Q (answered queries/s), P50/P99 (ms, from -v per-query times)
dnsperf_run() { # CLIENT SERVER QUERYFILE TAG ARGS...
	local c=$1 a=$2 q=$3 tag=$4; shift 4
	nsx "$c" timeout $((DNS_DUR + 20)) dnsperf -s "$a" -d "$q" -l "$DNS_DUR" "$@" >"$OUT/$tag" 2>&1
	read -r Q P50 P99 < <(python3 - "$OUT/$tag" <<'PY'
import sys
qps, lat = "NA", []
for line in open(sys.argv[1], errors="replace"):
    f = line.split()
    if line.startswith("> NOERROR") and len(f) >= 5:
        lat.append(float(f[-1]) * 1e3)
    elif line.strip().startswith("Queries per second:"):
        qps = "%.0f" % float(f[-1])
lat.sort()
p = lambda x: "%.3f" % lat[min(len(lat) - 1, int(len(lat) * x))] if lat else "NA"
print(qps, p(0.50), p(0.99))
PY
)
}
if has dns; then
	for rep in $(seq "$REPS"); do
		for i in "${!DNS_ROWS[@]}"; do
			IFS='|' read -r label c a q <<<"${DNS_ROWS[i]}"
			dnsperf_run "$c" "$a" "$q" "dns.$rep.$i"
			V[d$i,qps]+="$Q "
			dnsperf_run "$c" "$a" "$q" "dnslat.$rep.$i" -Q "$DNS_QPS" -v
			V[d$i,p50]+="$P50 " V[d$i,p99]+="$P99 "
			log "rep $rep/$REPS dns $label: $(echo ${V[d$i,qps]} | awk '{print $NF}') q/s; at $DNS_QPS q/s p50 $P50 p99 $P99 ms"
		done
	done
fi

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
echo "Interleaved: REPS=$REPS DUR=$DUR SP_DUR=$SP_DUR MTU=$MTU SETS=\"$SETS\" TAPNET_ARGS=\"$TAPNET_ARGS\" IDLE=${IDLE:-0}, $(date -u +%Y-%m-%d) (median [min-max]; RR and latency: lower is better)"
echo
[ ${#ROWS[@]} -gt 0 ] && {
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
echo "CPU during the TCP 1-stream runs ($NCPU vCPUs): cores busy on the whole machine; cores the"
echo "forwarding process used (all its threads); core-seconds the machine spent per GB moved"
echo
echo "| path | TCP 1-stream Gbps | cores busy | forwarder cores | core-s per GB |"
echo "|---|---|---|---|---|"
for i in "${!ROWS[@]}"; do
	printf '| %s | %s | %s | %s | %s |\n' "$(label "$i")" "$(med "${V[$i,tcp1]}")" \
		"$(med "${V[$i,busy]}")" "$(med "${V[$i,proc]}")" "$(med "${V[$i,cpb]}")"
done
}
if has dns; then
	echo
	echo "DNS over UDP: dnsperf -l $DNS_DUR (100 outstanding) for queries/s; -Q $DNS_QPS -v for latency"
	echo
	echo "| server | queries/s | p50 ms at $DNS_QPS q/s | p99 ms at $DNS_QPS q/s |"
	echo "|---|---|---|---|"
	for i in "${!DNS_ROWS[@]}"; do
		printf '| %s | %s | %s | %s |\n' "${DNS_ROWS[i]%%|*}" "$(stats "${V[d$i,qps]}")" "$(stats "${V[d$i,p50]}")" "$(stats "${V[d$i,p99]}")"
	done
	for p in "${DNS_PAIRS[@]}"; do
		a=${p%:*} b=${p#*:}
		printf '| **%s / %s** | **%sx** | **%sx** | **%sx** |\n' "${DNS_ROWS[a]%%|*}" "${DNS_ROWS[b]%%|*}" \
			"$(ratio "$(med "${V[d$a,qps]}")" "$(med "${V[d$b,qps]}")")" \
			"$(ratio "$(med "${V[d$a,p50]}")" "$(med "${V[d$b,p50]}")")" \
			"$(ratio "$(med "${V[d$a,p99]}")" "$(med "${V[d$b,p99]}")")"
	done
fi
echo
"$T" network inspect bench | python3 -c 'import json,sys; n=json.load(sys.stdin)[0]["Tapnet"]; print("tapnet switch drops:", {k: v for k, v in n["counters"]["drops"].items() if v})'
"$T" network inspect bench | python3 -c 'import json,sys; n=json.load(sys.stdin)[0]["Tapnet"]; print("tapnet datapath workers (main first; one worker: none):", n.get("datapath_workers"))'
log "logs in $OUT"
exit 0
