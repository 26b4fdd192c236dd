# lib.sh - the reference paths the bench scripts build beside tapnet's,
# as ../shared/anchors/ builds them. Sourced by compare.sh and e2e.sh;
# every namespace is named PREFIX..., which the caller deletes.

# The kernel bridge: PREFIXkbr holds br0, PREFIXkb1 and PREFIXkb2 each an
# eth0 on it (veth) with 10.77.1.N/24, and fd00:77::N/64 when V6 is set.
kernel_bridge() { # PREFIX MTU [V6]
	local p=$1 mtu=$2 v6=${3:-} i n
	for n in kbr kb1 kb2; do ip netns add "${p}$n" && ip -n "${p}$n" link set lo up; done
	ip -n "${p}kbr" link add br0 type bridge stp_state 0
	ip -n "${p}kbr" link set br0 mtu "$mtu"
	for i in 1 2; do
		ip -n "${p}kbr" link add vb$i type veth peer name eth0 netns "${p}kb$i"
		ip -n "${p}kbr" link set vb$i mtu "$mtu" master br0 up
		ip -n "${p}kb$i" link set eth0 mtu "$mtu"
		ip -n "${p}kb$i" addr add 10.77.1.$i/24 dev eth0
		[ -n "$v6" ] && ip -n "${p}kb$i" addr add fd00:77::$i/64 dev eth0 nodad
		ip -n "${p}kb$i" link set eth0 up
	done
	ip -n "${p}kbr" link set br0 up
}

# The kernel's VXLAN path Docker's overlay uses: hosts PREFIXkh1 and
# PREFIXkh2 on an underlay veth (MTU 1500, 10.77.18.N), each with br0 -
# vxlan0 (VNI 4096, UDP 4789, static FDB) - a veth to a container
# namespace PREFIXkcN (eth0 10.77.19.N/24, MTU 1450).
kernel_vxlan() { # PREFIX
	local p=$1 i n h c o
	for n in kh1 kh2 kc1 kc2; do ip netns add "${p}$n" && ip -n "${p}$n" link set lo up; done
	ip -n "${p}kh1" link add ul0 type veth peer name ul0 netns "${p}kh2"
	for i in 1 2; do
		h=${p}kh$i c=${p}kc$i o=$((3 - i))
		ip -n "$h" link set ul0 mtu 1500 up
		ip -n "$h" addr add 10.77.18.$i/24 dev ul0
		ip -n "$h" link add br0 type bridge stp_state 0
		ip -n "$h" link add vxlan0 type vxlan id 4096 dstport 4789 local 10.77.18.$i nolearning
		ip -n "$h" link set vxlan0 mtu 1450 master br0 up
		ip -n "$h" link add vc$i type veth peer name eth0 netns "$c"
		ip -n "$h" link set vc$i mtu 1450 master br0 up
		ip -n "$h" link set br0 up
		ip -n "$c" link set eth0 address 02:42:0a:4d:13:0$i mtu 1450 up
		ip -n "$c" addr add 10.77.19.$i/24 dev eth0
		bridge -n "$h" fdb append 02:42:0a:4d:13:0$o dev vxlan0 dst 10.77.18.$o self permanent
		ip -n "$c" neigh add 10.77.19.$o lladdr 02:42:0a:4d:13:0$o dev eth0 nud permanent
	done
}

# etcd for the overlay hosts, in namespace NS, clients on 10.77.8.1:2379
# (host 1's underlay address), data in OUT/etcd; its PID joins PIDS, and
# it is healthy when this returns.
start_etcd() { # NS
	ip netns exec "$1" etcd --name n1 --data-dir "$OUT/etcd" \
		--listen-client-urls http://10.77.8.1:2379 --advertise-client-urls http://10.77.8.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster n1=http://127.0.0.1:2380 >"$OUT/etcd.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 100); do
		ip netns exec "$1" etcdctl --endpoints http://10.77.8.1:2379 endpoint health >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# Stops the processes in PIDS, newest first: TERM, up to TENTHS tenths of
# a second to go, then KILL; then deletes the namespaces named PREFIX*
# (none for an empty PREFIX).
stop_all() { # PREFIX TENTHS
	local i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		kill "${PIDS[i]}" 2>/dev/null
		for _ in $(seq "$2"); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
		kill -9 "${PIDS[i]}" 2>/dev/null
		wait "${PIDS[i]}" 2>/dev/null
	done
	[ -n "$1" ] || return 0
	for ns in $(ip netns list | awk -v p="$1" 'index($1, p) == 1 {print $1}'); do ip netns del "$ns"; done
}
