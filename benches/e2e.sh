#!/usr/bin/env bash
# e2e.sh - container-to-container through tapnet, measured the way
# ../shared/anchors/ measures the kernel bridge, veth, pasta and slirp4netns
# (same tools, same options, medians of REPS runs), so the row stands in
# that table:
#   TCP 1-/4-stream  iperf3 -t DUR [-P 4], receiver rate
#   UDP 64 B         iperf3 -u -l 64 -b 0, datagrams received per second
#   ping             ping -c 200 -i 0.01, min/avg us
#   TCP RR           sockperf ping-pong --tcp -m 64 --full-rtt, p50 us
# Everything runs in namespaces named tn_e2e_* created here; processes are
# stopped by PID and the namespaces deleted on exit. Run as root.
#   DUR=10 REPS=3 SP_DUR=5 MTU=1500 benches/e2e.sh
# MODE selects the path:
#   c2c      container -> container on one network (default)
#   c2c6     the same on a dual-stack network, over IPv6 and over IPv4, and
#            in the same run a kernel bridge (veth-br0-veth, as
#            ../shared/anchors/bridge.sh builds it) carrying both; the TCP RR
#            column is benches/tcprr.rs for all four rows (sockperf 3.7
#            takes IPv4 addresses only; same method: one connection,
#            64-byte messages, Nagle off, full round trip, p50; RR_CONNS
#            connections a rep, default 3, the median over all of them)
#   nat      container -> "internet" namespace through the root-mode NAT
#            (uplink: a veth from the daemon's namespace, tn_e2e_inet)
#   socknat  the same without an uplink: the socket NAT (host sockets,
#            the rootless back-end); the daemon's namespace has 203.0.113.254
#   rootless socknat with the daemon and CLI run as the unprivileged user
#            tn_rootless (created if missing; a private copy of the TUN node)
#   publish  host namespace (127.0.0.1) -> a container's published ports
#   macvlan  container on a macvlan network -> a peer on the parent's segment
#            (namespace tn_e2e_lan behind a veth), and, in the same run, a
#            kernel macvlan device on a second veth doing the same path
#   docker   two Docker containers on a tapnet network (the Docker plugin)
#            and, in the same run, two on a network of Docker's own bridge
#            driver; dockerd runs in the daemon's namespace with iptables
#            off (a mount namespace of its own, plugin directory private).
#            The image is busybox, so the tools run in the containers'
#            network namespaces (nsenter into Docker's sandboxes); plus
#            the time of `docker run --rm` (median of START_RUNS)
#   overlay  container on host 1 -> container on host 2 of an overlay
#            network: two daemons in two host namespaces joined by an
#            underlay veth (MTU 1500), etcd in host 1's namespace; and, in
#            the same run, the kernel's VXLAN path Docker's overlay uses
#            (veth - bridge - vxlan - underlay, static FDB, as
#            ../shared/anchors/vxlan.sh builds it)
#   overlay-encrypted  the same with -o encrypted
set -uo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
DUR="${DUR:-10}" REPS="${REPS:-3}" SP_DUR="${SP_DUR:-5}" MTU="${MTU:-1500}" MODE="${MODE:-c2c}"
PING_COUNT="${PING_COUNT:-200}" PING_INTERVAL="${PING_INTERVAL:-0.01}"
[ "$(id -u)" = 0 ] || { echo "e2e.sh: run as root" >&2; exit 1; }
for t in iperf3 sockperf ping python3 timeout; do
	command -v $t >/dev/null || { echo "e2e.sh: missing $t (scripts/deps.sh installs it)" >&2; exit 1; }
done
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p tapnet -q || exit 1
T="$PWD/target/release/tapnet"
RR_TOOL=sockperf
if [ "$MODE" = c2c6 ]; then
	cargo build --release -p tapnet-benches --bin tcprr -q || exit 1
	RR_TOOL="$PWD/target/release/tcprr"
fi
OUT="${OUT:-$(mktemp -d /tmp/tn_e2e.XXXXXX)}"
export TAPNET_SOCKET="$OUT/tapnet.sock"
PIDS=()
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cleanup() {
	# (dockerd takes a while: its containers first; the namespaces go
	# after Docker's mounts)
	stop_all "" 150
	[ "$MODE" = docker ] && umount -R -l "$OUT/docker/exec" 2>/dev/null
	for ns in $(ip netns list | awk '/^tn_e2e_/ {print $1}'); do ip netns del "$ns"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# the command prefix that runs in a container's namespace (a name under
# /run/netns, or a path); a plain command, not a function, so that a
# background job's $! is the process itself and cleanup can kill it
nsp() {
	case "$1" in
	/*) NSP_CMD=(nsenter --net="$1") ;;
	*) NSP_CMD=(ip netns exec "$1") ;;
	esac
}
nsx() {
	nsp "$1"; shift
	"${NSP_CMD[@]}" "$@"
}
AS=()
if [ "$MODE" = rootless ]; then
	id tn_rootless >/dev/null 2>&1 || useradd -M -r -s /usr/sbin/nologin tn_rootless
	RU=$(id -u tn_rootless) RG=$(id -g tn_rootless)
	mknod "$OUT/tun" c 10 200 && chmod 666 "$OUT/tun"
	chown -R "$RU:$RG" "$OUT"
	AS=(setpriv --reuid "$RU" --regid "$RG" --clear-groups env HOME="$OUT")
	DAEMON_ARGS="${DAEMON_ARGS:-} --tun-device $OUT/tun"
fi
tn() { "${AS[@]}" "$T" "$@"; }

# the daemon runs in a namespace of its own (only loopback)
ip netns add tn_e2e_host && ip -n tn_e2e_host link set lo up
UPLINK=()
if [ "$MODE" = nat ] || [ "$MODE" = socknat ] || [ "$MODE" = rootless ]; then
	ip netns add tn_e2e_inet && ip -n tn_e2e_inet link set lo up
	ip -n tn_e2e_host link add up0 type veth peer name inet0 netns tn_e2e_inet
	ip -n tn_e2e_host link set up0 up
	ip -n tn_e2e_inet addr add 203.0.113.1/24 dev inet0
	ip -n tn_e2e_inet link set inet0 up
	if [ "$MODE" = nat ]; then
		UPLINK=(--uplink up0 --uplink-ip 203.0.113.2/24 --uplink-gateway 203.0.113.1)
	else
		ip -n tn_e2e_host addr add 203.0.113.254/24 dev up0
		ip netns exec tn_e2e_host sysctl -q -w net.ipv4.ping_group_range="0 2147483647"
	fi
fi
if [ "$MODE" = macvlan ]; then
	# the segment: two veths from the daemon's namespace to tn_e2e_lan, one
	# for tapnet's macvlan network, one for the kernel's macvlan device
	ip netns add tn_e2e_lan && ip -n tn_e2e_lan link set lo up
	ip netns add tn_e2e_kmv && ip -n tn_e2e_kmv link set lo up
	for i in 0 1; do
		ip -n tn_e2e_host link add lanp$i type veth peer name lan$i netns tn_e2e_lan
		ip -n tn_e2e_host link set lanp$i up
		ip -n tn_e2e_lan addr add 10.9$((8 - i)).0.1/24 dev lan$i
		ip -n tn_e2e_lan link set lan$i up
	done
	ip -n tn_e2e_host link add kmv0 link lanp1 type macvlan mode bridge
	ip -n tn_e2e_host link set kmv0 netns tn_e2e_kmv
	ip -n tn_e2e_kmv addr add 10.97.0.2/24 dev kmv0
	ip -n tn_e2e_kmv link set kmv0 mtu "$MTU" up
fi
if [ "$MODE" = docker ]; then
	for t in dockerd docker busybox; do
		command -v $t >/dev/null || { echo "e2e.sh: missing $t (scripts/deps.sh installs it)" >&2; exit 1; }
	done
	mkdir -p "$OUT/plugins"
	DAEMON_ARGS="${DAEMON_ARGS:-} --docker-plugin $OUT/plugins/tapnet.sock"
fi
OVERLAY=
case "$MODE" in overlay | overlay-encrypted) OVERLAY=1 ;; esac
if [ -n "$OVERLAY" ]; then
	command -v etcd >/dev/null || { echo "e2e.sh: missing etcd (scripts/deps.sh installs it)" >&2; exit 1; }
	# host 1 is the daemon's namespace, host 2 another; one underlay veth
	ip netns add tn_e2e_h2 && ip -n tn_e2e_h2 link set lo up
	ip -n tn_e2e_host link add ul0 type veth peer name ul0 netns tn_e2e_h2
	for i in 1 2; do
		h=tn_e2e_host; [ $i = 2 ] && h=tn_e2e_h2
		ip -n $h addr add 10.77.8.$i/24 dev ul0
		ip -n $h link set ul0 mtu 1500 up
	done
	start_etcd tn_e2e_host || { echo "etcd did not start: $OUT/etcd.log" >&2; exit 1; }
	CLUSTER=(--cluster-store etcd://10.77.8.1:2379)
	DAEMON_ARGS="${DAEMON_ARGS:-} ${CLUSTER[*]} --cluster-advertise 10.77.8.1"
	# the kernel's path, on namespaces of its own (as the anchor builds it)
	kernel_vxlan tn_e2e_
fi
nsenter --net=/run/netns/tn_e2e_host "${AS[@]}" "$T" daemon --state-dir "$OUT/state" --netns-prefix tn_e2e_ \
	--dns 127.0.0.1 "${UPLINK[@]}" ${DAEMON_ARGS:-} >"$OUT/daemon.log" 2>&1 &
PIDS+=($!)
DPID=$! # (nsenter execs the daemon; rootless: setpriv and env exec too)
for _ in $(seq 50); do tn network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
if [ "$MODE" = docker ]; then
	D="$OUT/docker"
	mkdir -p "$D/exec" "$D/rootfs/bin"
	# the exec-root shared, so Docker's sandboxes (its containers'
	# namespaces) are seen from here as when dockerd runs in the host's
	mount --bind "$D/exec" "$D/exec" && mount --make-shared "$D/exec"
	nsenter --net=/run/netns/tn_e2e_host unshare -m --propagation unchanged sh -c "
		mount --make-private / && (! mountpoint -q /run || mount --make-private /run) &&
		mkdir -p /run/docker/plugins && mount --bind $OUT/plugins /run/docker/plugins &&
		exec dockerd --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
		--bridge=none --data-root $D/data --exec-root $D/exec -H unix://$D/docker.sock \
		--pidfile $D/docker.pid --cgroup-parent /tn_e2e" >"$D/dockerd.log" 2>&1 &
	PIDS+=($!)
	dk() { timeout 120 /usr/bin/docker -H "unix://$D/docker.sock" "$@"; }
	for _ in $(seq 100); do dk info >/dev/null 2>&1 && break; sleep 0.2; done
	dk info >/dev/null || { echo "e2e.sh: dockerd did not start: $D/dockerd.log" >&2; exit 1; }
	cp /bin/busybox "$D/rootfs/bin/busybox"
	for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$D/rootfs/bin/$a"; done
	tar -C "$D/rootfs" -cf "$D/rootfs.tar" . && dk import "$D/rootfs.tar" tn-busybox >/dev/null || exit 1
	dk network create -d bridge --subnet 10.98.0.0/24 -o com.docker.network.driver.mtu="$MTU" refnet >/dev/null || exit 1
	dk network create -d tapnet --subnet 10.99.0.0/24 -o com.docker.network.driver.mtu="$MTU" tnnet >/dev/null || exit 1
	for n in refnet tnnet; do
		for c in cli srv; do
			dk run -d --name "$c-$n" --network "$n" tn-busybox sleep 100000 >/dev/null || exit 1
		done
	done
	sandbox() { dk inspect -f '{{.NetworkSettings.SandboxKey}}' "$1"; }
	ipof() { dk inspect -f "{{(index .NetworkSettings.Networks \"$2\").IPAddress}}" "$1"; }
	# the time of `docker run --rm` on each network, runs alternated
	START_RUNS="${START_RUNS:-11}"
	st_ref=() st_tn=()
	for _ in $(seq "$START_RUNS"); do
		for n in refnet tnnet; do
			t0=$(date +%s%N)
			dk run --rm --network "$n" tn-busybox true || exit 1
			ms=$(( ($(date +%s%N) - t0) / 1000000 ))
			if [ $n = refnet ]; then st_ref+=("$ms"); else st_tn+=("$ms"); fi
		done
	done
elif [ -n "$OVERLAY" ]; then
	T2() { TAPNET_SOCKET="$OUT/t2.sock" "$T" "$@"; }
	nsenter --net=/run/netns/tn_e2e_h2 "$T" --socket "$OUT/t2.sock" daemon --state-dir "$OUT/state2" \
		--netns-prefix tn_e2e_b_ --dns 127.0.0.1 "${CLUSTER[@]}" --cluster-advertise 10.77.8.2 \
		>"$OUT/daemon2.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 50); do T2 network ls -q >/dev/null 2>&1 && break; sleep 0.1; done
	ENC=()
	[ "$MODE" = overlay-encrypted ] && ENC=(-o encrypted)
	tn network create -d overlay --subnet 10.99.0.0/24 "${ENC[@]}" bench >/dev/null || exit 1
	for _ in $(seq 100); do T2 network ls --format "{{.Name}}" | grep -qx bench && break; sleep 0.1; done
elif [ "$MODE" = macvlan ]; then
	tn network create -d macvlan -o parent=lanp0 --subnet 10.98.0.0/24 --gateway 10.98.0.1 \
		--mtu "$MTU" bench >/dev/null || exit 1
elif [ "$MODE" = c2c6 ]; then
	tn network create bench --ipv6 --subnet 10.99.0.0/24 --subnet fd00:99::/64 --mtu "$MTU" >/dev/null || exit 1
	# the kernel bridge, both families, on namespaces of its own
	kernel_bridge tn_e2e_ "$MTU" v6
else
	tn network create bench --subnet 10.99.0.0/24 --mtu "$MTU" >/dev/null || exit 1
fi
PUB=()
[ "$MODE" = publish ] && PUB=(-p 5201:5201 -p 5201:5201/udp -p 5301:5301)
if [ -n "$OVERLAY" ]; then
	"$T" run --network bench --name cli -- sleep 100000 >"$OUT/cli.log" 2>&1 &
	PIDS+=($!)
	TAPNET_SOCKET="$OUT/t2.sock" "$T" run --network bench --name srv -- sleep 100000 >"$OUT/srv.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do [ "$(T2 ps -q | wc -l)" = 1 ] && [ "$(tn ps -q | wc -l)" = 1 ] && break; sleep 0.1; done
	SRV_IP=$(T2 ps --format json | python3 -c 'import json,sys; print([c for c in json.load(sys.stdin) if c["name"]=="srv"][0]["endpoints"][0]["ip"].split("/")[0])')
	C=tn_e2e_cli S=tn_e2e_b_srv SB=$SRV_IP TGT=$SRV_IP
elif [ "$MODE" != docker ]; then
	"${AS[@]}" "$T" run --network bench --name cli -- sleep 100000 >"$OUT/cli.log" 2>&1 &
	PIDS+=($!)
	"${AS[@]}" "$T" run --network bench --name srv "${PUB[@]}" -- sleep 100000 >"$OUT/srv.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do [ "$(tn ps -q | wc -l)" = 2 ] && break; sleep 0.1; done
	SRV_IP=$(tn ps --format json | python3 -c 'import json,sys; print([c for c in json.load(sys.stdin) if c["name"]=="srv"][0]["endpoints"][0]["ip"].split("/")[0])')
	C=tn_e2e_cli S=tn_e2e_srv SB=$SRV_IP TGT=$SRV_IP
fi
LABEL="tapnet (tap-io_uring switch-tap)"
case "$MODE" in
c2c) ;;
c2c6)
	SRV_IP6=$(tn ps --format json | python3 -c 'import json,sys; print([c for c in json.load(sys.stdin) if c["name"]=="srv"][0]["endpoints"][0]["ip6"].split("/")[0])')
	;;
nat)
	S=tn_e2e_inet SB=203.0.113.1 TGT=203.0.113.1
	LABEL="tapnet NAT out (container -> uplink, root mode)"
	;;
socknat)
	S=tn_e2e_inet SB=203.0.113.1 TGT=203.0.113.1
	LABEL="tapnet socket NAT out (container -> host sockets)"
	;;
rootless)
	S=tn_e2e_inet SB=203.0.113.1 TGT=203.0.113.1
	DPID=${PIDS[0]} # nsenter, setpriv and env exec: the daemon itself
	NSP=$(tn ps --format json | python3 -c 'import json,sys; print([c for c in json.load(sys.stdin) if c["name"]=="cli"][0]["netns"])')
	C="/proc/$DPID/root$NSP"
	LABEL="tapnet rootless, socket NAT out (unprivileged daemon)"
	;;
macvlan)
	S=tn_e2e_lan SB=10.98.0.1 TGT=10.98.0.1
	LABEL="tapnet macvlan (container -> peer on the parent's segment)"
	;;
docker)
	C=$(sandbox cli-tnnet) S=$(sandbox srv-tnnet) SB=$(ipof srv-tnnet tnnet) TGT=$SB
	LABEL="tapnet Docker plugin (container -> container, docker run)"
	;;
overlay)
	LABEL="tapnet overlay (VXLAN by the datapath, host 1 -> host 2)"
	;;
overlay-encrypted)
	LABEL="tapnet overlay, encrypted (host 1 -> host 2)"
	;;
publish)
	C=tn_e2e_host TGT=127.0.0.1
	LABEL="tapnet published port (host 127.0.0.1 -> container, splice relay)"
	;;
*) echo "unknown MODE $MODE" >&2; exit 1 ;;
esac
for _ in $(seq 20); do nsx $C ping -c 1 -W 1 -q "$SB" >/dev/null 2>&1 && break; sleep 0.2; done

bg() { # NS LOG CMD...
	local ns=$1 lg=$2; shift 2
	nsp "$ns"
	"${NSP_CMD[@]}" timeout -k 5 3600 "$@" >"$lg" 2>&1 &
	BG=$!
	PIDS+=($BG)
}
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
listening() { # NS PORT
	for _ in $(seq 200); do nsx "$1" ss -Hltn "sport = :$2" | grep -q . && return 0; sleep 0.05; done
	return 1
}
median() { printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "NA"; else if (NR%2) print a[(NR+1)/2]; else printf "%.6g\n", (a[NR/2]+a[NR/2+1])/2}'; }

iperf() { # TAG ARGS... -> R
	local tag=$1; shift
	bg $S "$OUT/$tag.srv.log" iperf3 -s -1 -B "$SB" -p 5201
	local srv=$BG
	listening $S 5201
	# the daemon's CPU (utime + stime of all its threads) meanwhile
	local t0 t1
	t0=$(awk '{print $14 + $15}' "/proc/$DPID/stat")
	nsx $C timeout -k 5 $((DUR + 30)) iperf3 -c "$TGT" -p 5201 -t "$DUR" -J "$@" >"$OUT/$tag.json" 2>&1
	t1=$(awk '{print $14 + $15}' "/proc/$DPID/stat")
	DTICKS=$((t1 - t0))
	sleep 0.2; stop $srv
	R=$(python3 - "$OUT/$tag.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1])); e = d["end"]
    if "sum_received" in e and e["sum_sent"].get("retransmits") is not None:
        print("%.3f %s" % (e["sum_received"]["bits_per_second"] / 1e9, e["sum_sent"]["retransmits"]))
    else:
        s, r = e["sum_sent"], e["sum_received"] if "sum_received" in e else e["sum"]
        print("%.0f %.2f" % ((r["packets"] - r["lost_packets"]) / r["seconds"], r["lost_percent"]))
except Exception as ex:
    print("NA NA")
PY
)
}

# measure: every test REPS times from $C to $S ($SB/$TGT); prints the row
measure() {
	if [ "$RR_TOOL" = sockperf ]; then
		bg $S "$OUT/sockperf-srv.log" sockperf server --tcp -i "$SB" -p 5301
	else
		bg $S "$OUT/tcprr-srv.log" "$RR_TOOL" server "$SB" 5301
	fi
	SP=$BG
	listening $S 5301
	t1=() t4=() u=() ul=() pm=() pa=() sp=() r1=() r4=()
	for rep in $(seq "$REPS"); do
		iperf tcp1.$rep; t1+=("${R% *}"); r1+=("${R#* }"); log "rep $rep tcp1: ${R% *} Gbps (retrans ${R#* })"
		iperf tcp4.$rep -P 4; t4+=("${R% *}"); r4+=("${R#* }"); log "rep $rep tcp4: ${R% *} Gbps (retrans ${R#* })"
		iperf udp.$rep -u -l 64 -b 0; u+=("${R% *}"); ul+=("${R#* }"); log "rep $rep udp64: ${R% *} pps (loss ${R#* }%)"
		[ "$MODE" = publish ] || nsx $C timeout 60 ping -n -c "$PING_COUNT" -i "$PING_INTERVAL" -W 1 -q "$TGT" >"$OUT/ping.$rep" 2>&1
		read -r a b < <(awk '/^rtt/ {split($4, v, "/"); printf "%.1f %.1f\n", v[1]*1000, v[2]*1000}' "$OUT/ping.$rep")
		pm+=("$a"); pa+=("$b"); log "rep $rep ping: min $a us avg $b us"
		if [ "$RR_TOOL" = sockperf ]; then
			nsx $C timeout $((SP_DUR + 20)) sockperf ping-pong --tcp -i "$TGT" -p 5301 -t "$SP_DUR" -m 64 --full-rtt >"$OUT/sockperf.$rep" 2>&1
			p50=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/sockperf.$rep" | awk '/percentile 50.000 =/ {print $NF}')
		else
			nsx $C timeout $((SP_DUR + 20)) "$RR_TOOL" client "$TGT" 5301 "$SP_DUR" >"$OUT/tcprr.$rep" 2>&1
			p50=$(awk '$1 == "p50" {print $2}' "$OUT/tcprr.$rep")
		fi
		sp+=("$p50"); log "rep $rep sockperf p50: $p50 us"
	done
	stop $SP
	PING="-"
	[ "$MODE" = publish ] || PING=$(printf '%.0f / %.0f' "$(median "${pm[@]}")" "$(median "${pa[@]}")")
	row=$(printf '| %s | %s | %.2f | %.2f | %.0f | %.1f | - | %s | %.0f | %s |' \
		"$LABEL" "$MTU" "$(median "${t1[@]}")" "$(median "${t4[@]}")" "$(median "${u[@]}")" "$(median "${ul[@]}")" \
		"$PING" "$(median "${sp[@]}")" \
		"DUR=$DUR REPS=$REPS; retrans1=${r1[*]} retrans4=${r4[*]}")
	echo
	echo "| path | MTU | TCP 1-stream Gbps | TCP 4-stream Gbps | UDP 64B rx pps (iperf3) | UDP loss % | L2 64B rx pps (trafgen) | ping min / avg RTT us | TCP RR RTT p50 us ($(basename "$RR_TOOL")) | notes |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	echo "$row"
	echo
}
if [ -n "$OVERLAY" ]; then
	( C=tn_e2e_kc1 S=tn_e2e_kc2 SB=10.77.19.2 TGT=10.77.19.2 MTU=1450
	  LABEL="kernel VXLAN (veth-br-vxlan ~ underlay ~ vxlan-br-veth, static FDB)"
	  for _ in $(seq 20); do nsx $C ping -c 1 -W 1 -q "$SB" >/dev/null 2>&1 && break; sleep 0.2; done
	  measure )
	MTU=$(tn network inspect bench | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Tapnet"]["mtu"])')
	measure
	tn network inspect bench | python3 -c 'import json,sys; n=json.load(sys.stdin)[0]["Tapnet"]; print("host 1 VTEP:", json.dumps(n["overlay"]["vtep_counters"]))'
	T2 network inspect bench | python3 -c 'import json,sys; n=json.load(sys.stdin)[0]["Tapnet"]; print("host 2 VTEP:", json.dumps(n["overlay"]["vtep_counters"]))'
	log "logs in $OUT"
	exit 0
fi
if [ "$MODE" = c2c6 ]; then
	# four paths, interleaved rep by rep (A B C D A B C D ...) so that the
	# VM's swings hit them alike: TCP 1-/4-stream (iperf3) and TCP RR p50
	# (tcprr); medians, then the ratios the issue asks for
	ROWS=("kernel bridge, IPv4|tn_e2e_kb1|tn_e2e_kb2|10.77.1.2"
		"kernel bridge, IPv6|tn_e2e_kb1|tn_e2e_kb2|fd00:77::2"
		"tapnet, IPv4|$C|$S|$SRV_IP"
		"tapnet, IPv6|$C|$S|$SRV_IP6")
	declare -A T1 T4 RR CPB CPB4
	HZ=$(getconf CLK_TCK)
	gb_cost() { # TICKS IPERF_JSON -> core-seconds per GB received
		python3 -c 'import json,sys; b=json.load(open(sys.argv[2]))["end"]["sum_received"]["bytes"]; print("%.3f" % (int(sys.argv[1]) / float(sys.argv[3]) / (b / 1e9)))' "$1" "$2" "$HZ" 2>/dev/null || echo NA
	}
	for r in "${ROWS[@]}"; do
		IFS='|' read -r _ c s a <<<"$r"
		for _ in $(seq 20); do nsx $c ping -c 1 -W 1 -q "$a" >/dev/null 2>&1 && break; sleep 0.2; done
	done
	for rep in $(seq "$REPS"); do
		for i in "${!ROWS[@]}"; do
			IFS='|' read -r label C S SB <<<"${ROWS[i]}"
			TGT=$SB
			iperf "tcp1.$rep.$i"; T1[$i]+="${R% *} "
			# tapnet's own cost: its core-seconds per GB moved (1 stream)
			[ $i -ge 2 ] && CPB[$i]+="$(gb_cost "$DTICKS" "$OUT/tcp1.$rep.$i.json") "
			iperf "tcp4.$rep.$i" -P 4; T4[$i]+="${R% *} "
			[ $i -ge 2 ] && CPB4[$i]+="$(gb_cost "$DTICKS" "$OUT/tcp4.$rep.$i.json") "
			bg $S "$OUT/tcprr-srv.$i.log" "$RR_TOOL" server "$SB" 5301
			srv=$BG
			listening $S 5301
			# RR_CONNS connections one after another, each one's p50
			# kept: where the kernel and the scheduler put a connection
			# (which queue, which CPU) moves its p50 between two values
			# here, in both families, so one connection per rep makes
			# the median a coin toss
			for k in $(seq "${RR_CONNS:-3}"); do
				nsx $C timeout $((SP_DUR + 20)) "$RR_TOOL" client "$TGT" 5301 "$SP_DUR" >"$OUT/tcprr.$rep.$i.$k" 2>&1
				p50=$(awk '$1 == "p50" {print $2}' "$OUT/tcprr.$rep.$i.$k")
				RR[$i]+="$p50 "
			done
			stop $srv
			log "rep $rep $label: tcp1 $(echo ${T1[$i]} | awk "{print \$NF}") tcp4 $(echo ${T4[$i]} | awk "{print \$NF}") rr $p50"
		done
	done
	echo
	echo "| path (interleaved, REPS=$REPS DUR=$DUR) | TCP 1-stream Gbps | TCP 4-stream Gbps | TCP RR p50 us (tcprr) |"
	echo "|---|---|---|---|"
	declare -A M1 M4 MR
	for i in "${!ROWS[@]}"; do
		M1[$i]=$(median ${T1[$i]}) M4[$i]=$(median ${T4[$i]}) MR[$i]=$(median ${RR[$i]})
		echo "| ${ROWS[i]%%|*} | ${M1[$i]} | ${M4[$i]} | ${MR[$i]} |"
	done
	echo
	ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('%.2f' % (a/b))" "$1" "$2"; }
	echo "tapnet IPv6 / tapnet IPv4: TCP-1 $(ratio "${M1[3]}" "${M1[2]}"), TCP-4 $(ratio "${M4[3]}" "${M4[2]}"), RR p50 $(ratio "${MR[3]}" "${MR[2]}") (lower is better)"
	echo "kernel bridge IPv6 / IPv4: TCP-1 $(ratio "${M1[1]}" "${M1[0]}"), TCP-4 $(ratio "${M4[1]}" "${M4[0]}"), RR p50 $(ratio "${MR[1]}" "${MR[0]}")"
	echo "tapnet IPv6 / kernel bridge IPv6: TCP-1 $(ratio "${M1[3]}" "${M1[1]}"), TCP-4 $(ratio "${M4[3]}" "${M4[1]}"), RR p50 $(ratio "${MR[3]}" "${MR[1]}")"
	echo "tapnet's own CPU, core-seconds per GB (median; TCP 1-stream / 4-stream): IPv4 $(median ${CPB[2]}) / $(median ${CPB4[2]}), IPv6 $(median ${CPB[3]}) / $(median ${CPB4[3]})"
	log "logs in $OUT"
	exit 0
fi
if [ "$MODE" = macvlan ]; then
	# the reference first, on its own parent: tapnet's trunk does not see it
	( C=tn_e2e_kmv S=tn_e2e_lan SB=10.97.0.1 TGT=10.97.0.1 LABEL="kernel macvlan (bridge mode, same path)"
	  for _ in $(seq 20); do nsx $C ping -c 1 -W 1 -q "$SB" >/dev/null 2>&1 && break; sleep 0.2; done
	  measure )
fi
if [ "$MODE" = docker ]; then
	( C=$(sandbox cli-refnet) S=$(sandbox srv-refnet) SB=$(ipof srv-refnet refnet) TGT=$SB
	  LABEL="Docker bridge driver (veth + Linux bridge, iptables off)"
	  for _ in $(seq 20); do nsx $C ping -c 1 -W 1 -q "$SB" >/dev/null 2>&1 && break; sleep 0.2; done
	  measure )
	measure
	echo "docker run --rm start time, median of $START_RUNS (ms): bridge $(median "${st_ref[@]}"), tapnet $(median "${st_tn[@]}")"
	echo "  bridge: ${st_ref[*]}"
	echo "  tapnet: ${st_tn[*]}"
	dk rm -f cli-refnet srv-refnet cli-tnnet srv-tnnet >/dev/null
	dk network rm refnet tnnet >/dev/null
	log "logs in $OUT"
	exit 0
fi
measure
echo
tn network inspect bench | python3 -c 'import json,sys; n=json.load(sys.stdin)[0]["Tapnet"]; print("switch drops:", n["counters"]["drops"])'
log "logs in $OUT"
