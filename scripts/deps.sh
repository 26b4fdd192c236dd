#!/usr/bin/env bash
# deps.sh - install what building, testing and demoing tapnet needs on a
# Debian machine (idempotent). Run as root.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "deps.sh: run as root (sudo)" >&2; exit 1; }
pkgs=(iproute2 iputils-ping netcat-openbsd iperf3 sockperf procps coreutils util-linux passwd
      ca-certificates curl gcc g++ libc6-dev pkg-config python3
      # the runtimes the integration tests drive (installing starts no daemon
      # here; the tests start them in their own namespaces)
      podman containernetworking-plugins runc busybox-static docker.io
      # the overlay tests' cluster store, and what the etcd client's build
      # needs (it compiles etcd's protobuf definitions)
      etcd-server etcd-client protobuf-compiler libprotobuf-dev
      # the encrypted overlay test looks at the underlay with it
      tcpdump
      # the IPv6 test checks AAAA and ip6.arpa answers with dig
      bind9-dnsutils
      # benches/compare.sh measures tapnet next to the paths it replaces:
      # pasta, slirp4netns, and for DNS dnsperf against dnsmasq and
      # aardvark-dns
      passt slirp4netns dnsperf dnsmasq-base aardvark-dns
      # the metrics test checks tapnet's /metrics with promtool
      prometheus
      # capture filters compile with libpcap; the capture test reads
      # tapnet's pcapng with tshark
      libpcap-dev tshark
      # the packaging test renders the man pages and installs the package
      man-db dpkg-dev)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "deps.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	# no service may start on install (dockerd would change the host's
	# iptables, prometheus would listen on :9090): the tests start what
	# they need inside their own namespaces. policy-rc.d is the standard
	# switch; one already there is left alone.
	policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		policy=1
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	if [ -n "$policy" ]; then
		rm -f /usr/sbin/policy-rc.d
		trap - EXIT
	fi
fi
# Rust: the machine's toolchain if it is recent enough, else rustup's stable.
need="1.91"
have=$(cargo --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
	[ -x "$HOME/.cargo/bin/cargo" ] || {
		echo "deps.sh: installing Rust (rustup, stable)" >&2
		curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
	}
	echo "deps.sh: using $HOME/.cargo/bin/cargo" >&2
fi
[ -e /dev/net/tun ] || { echo "deps.sh: /dev/net/tun is missing (modprobe tun)" >&2; exit 1; }
# the suite checks formatting
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fmt --version >/dev/null 2>&1 && command -v rustup >/dev/null; then
	rustup component add rustfmt >/dev/null
fi
