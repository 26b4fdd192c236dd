#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/seed-*): well-formed
inputs of each kind the targets take, so that fuzzing starts past the
first length checks. The addresses match fuzz/src/lib.rs."""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
VNET = bytes(10)
MAC_C0 = bytes([2, 0x42, 10, 1, 0, 2])
MAC_C1 = bytes([2, 0x42, 10, 1, 0, 3])
GW0_MAC = bytes([2, 0x42, 10, 1, 0, 1])
BCAST = b"\xff" * 6
PARENT = bytes([2, 0xAA, 0, 0, 0, 1])
UP_MAC = bytes([2, 0, 0, 0, 0, 0xEE])
C0, C1, GW0 = bytes([10, 1, 0, 2]), bytes([10, 1, 0, 3]), bytes([10, 1, 0, 1])
EXT, INET = bytes([203, 0, 113, 2]), bytes([198, 51, 100, 7])


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, etype, payload, vlan=None):
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return VNET + dst + src + tag + struct.pack("!H", etype) + payload


def ipv4(src, dst, proto, payload, frag=0, ttl=64, ident=1):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, ttl, proto, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def l4sum(src, dst, proto, seg):
    return csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)


def udp(src, dst, sport, dport, data):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = l4sum(src, dst, 17, seg) or 0xFFFF
    return ipv4(src, dst, 17, seg[:6] + struct.pack("!H", c) + seg[8:])


def tcp(src, dst, sport, dport, flags, data=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 65535, 0, 0) + data
    c = l4sum(src, dst, 6, seg)
    return ipv4(src, dst, 6, seg[:16] + struct.pack("!H", c) + seg[18:])


def icmp(src, dst, typ, code, rest, data):
    m = struct.pack("!BBH", typ, code, 0) + rest + data
    return ipv4(src, dst, 1, m[:2] + struct.pack("!H", csum(m)) + m[4:])


def ipv6(src, dst, nh, payload, hop=64):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, hop, src, dst) + payload


def icmp6(src, dst, typ, code, body, hop=64):
    m = struct.pack("!BBH", typ, code, 0) + body
    c = csum(src + dst + struct.pack("!IxxxB", len(m), 58) + m)
    return ipv6(src, dst, 58, m[:2] + struct.pack("!H", c) + m[4:], hop)


C0_6 = bytes.fromhex("fd000001000000000000000000000002")
GW0_6 = bytes.fromhex("fd000001000000000000000000000001")
SN_GW0 = bytes.fromhex("ff0200000000000000000001ff000001")


def udp6(src, dst, sport, dport, data):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    c = csum(src + dst + struct.pack("!IxxxB", len(seg), 17) + seg) or 0xFFFF
    return ipv6(src, dst, 17, seg[:6] + struct.pack("!H", c) + seg[8:])


EXT6 = bytes.fromhex("20010db8011300000000000000000002")
INET6 = bytes.fromhex("20010db8011300000000000000000001")


def arp(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa


def dnsq(name, qtype=1, ident=0x1234, edns=False):
    q = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", qtype, 1)
    if edns:
        q += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return q


def rec(sel, frame):
    return bytes([sel]) + struct.pack("!H", len(frame)) + frame


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    # ---- pipeline: ports 0-2 net 0, 3 internal, 4 macvlan TAP, 5 trunk, 6 uplink
    out_udp = eth(GW0_MAC, MAC_C0, 0x0800, udp(C0, INET, 40000, 53, dnsq("example.org")))
    seeds = {
        "arp-gw": [rec(0, eth(BCAST, MAC_C0, 0x0806, arp(1, MAC_C0, C0, bytes(6), GW0)))],
        "ping-gw": [rec(0, eth(GW0_MAC, MAC_C0, 0x0800, icmp(C0, GW0, 8, 0, b"\0\1\0\1", b"x" * 56)))],
        "nat-udp": [
            rec(0, out_udp),
            rec(6, eth(UP_MAC, PARENT, 0x0800, udp(INET, EXT, 53, 32768, b"answer"))),
            rec(6, eth(UP_MAC, PARENT, 0x0800, icmp(INET, EXT, 3, 3, bytes(4), udp(EXT, INET, 32768, 53, b"q")[:28]))),
        ],
        "nat-tcp": [
            rec(0, eth(GW0_MAC, MAC_C0, 0x0800, tcp(C0, INET, 40001, 80, 0x02))),
            rec(6, eth(UP_MAC, PARENT, 0x0800, tcp(INET, EXT, 80, 32768, 0x12))),
            rec(0x80, eth(GW0_MAC, MAC_C0, 0x0800, tcp(C0, INET, 40001, 80, 0x04))),
        ],
        "publish": [
            rec(6, eth(UP_MAC, PARENT, 0x0806, arp(1, PARENT, INET, bytes(6), EXT))),
            rec(6, eth(UP_MAC, PARENT, 0x0800, tcp(INET, EXT, 50000, 8080, 0x02))),
            rec(0, eth(GW0_MAC, MAC_C0, 0x0800, udp(C0, EXT, 40002, 5353, b"hairpin"))),
        ],
        "switch": [
            rec(1, eth(BCAST, MAC_C1, 0x0800, udp(C1, bytes([10, 1, 0, 255]), 1, 2, b"bcast"))),
            rec(0, eth(MAC_C1, MAC_C0, 0x0800, udp(C0, C1, 1, 2, b"unicast"))),
            rec(0, eth(MAC_C1, bytes([2, 9, 9, 9, 9, 9]), 0x0800, udp(C0, C1, 1, 2, b"spoofed"))),
            rec(3, eth(bytes([2, 0x42, 10, 2, 0, 1]), bytes([2, 0x42, 10, 2, 0, 2]), 0x0800,
                       udp(bytes([10, 2, 0, 2]), INET, 1, 2, b"internal"))),
        ],
        "trunk": [
            rec(5, eth(PARENT, bytes([2, 7, 7, 7, 7, 7]), 0x0800,
                       udp(bytes([192, 168, 5, 20]), bytes([192, 168, 5, 9]), 1, 2, b"in"), vlan=12)),
            rec(5, eth(BCAST, bytes([2, 7, 7, 7, 7, 7]), 0x0806,
                       arp(1, bytes([2, 7, 7, 7, 7, 7]), bytes([192, 168, 5, 20]), bytes(6), bytes([192, 168, 5, 9])), vlan=12)),
            rec(4, eth(bytes([2, 7, 7, 7, 7, 7]), bytes([2, 0x42, 192, 168, 5, 9]), 0x0800,
                       udp(bytes([192, 168, 5, 9]), bytes([192, 168, 5, 20]), 2, 1, b"out"))),
        ],
        "ipv6": [
            rec(0, eth(bytes([0x33, 0x33, 0xFF, 0, 0, 1]), MAC_C0, 0x86DD,
                       icmp6(C0_6, SN_GW0, 135, 0, bytes(4) + GW0_6 + bytes([1, 1]) + MAC_C0, hop=255))),
            rec(0, eth(GW0_MAC, MAC_C0, 0x86DD, icmp6(C0_6, GW0_6, 128, 0, b"\0\1\0\1" + b"p" * 32))),
            rec(0, eth(GW0_MAC, MAC_C0, 0x86DD, icmp6(C0_6, bytes.fromhex("20010db8000000000000000000000001"), 128, 0, b"\0\1\0\2", hop=1))),
        ],
        "fragments": [
            rec(0, eth(GW0_MAC, MAC_C0, 0x0800, ipv4(C0, INET, 17, udp(C0, INET, 40003, 9, b"a" * 64)[20:60], frag=0x2000, ident=7))),
            rec(0, eth(GW0_MAC, MAC_C0, 0x0800, ipv4(C0, INET, 17, b"b" * 32, frag=5, ident=7))),
            rec(0, eth(GW0_MAC, MAC_C0, 0x0800, icmp(C0, INET, 8, 0, b"\0\2\0\1", b"y" * 16)[:20] + b"ttl", )),
        ],
    }
    for name, recs in seeds.items():
        write("pipeline", name, b"".join(recs))
    # ---- nat: even = out from net 0, odd = in from the uplink
    nat = {
        "udp6-roundtrip": [rec(0, eth(GW0_MAC, MAC_C0, 0x86DD, udp6(C0_6, INET6, 40000, 53, b"q6"))),
                           rec(1, eth(UP_MAC, PARENT, 0x86DD, udp6(INET6, EXT6, 53, 40000, b"a6")))],
        "udp-roundtrip": [rec(0, out_udp), rec(1, eth(UP_MAC, PARENT, 0x0800, udp(INET, EXT, 53, 32768, b"a")))],
        "tcp-forward": [rec(1, eth(UP_MAC, PARENT, 0x0800, tcp(INET, EXT, 50000, 8080, 0x02))),
                        rec(0, eth(GW0_MAC, MAC_C0, 0x0800, tcp(C0, INET, 80, 50000, 0x12)))],
        "icmp-echo": [rec(0, eth(GW0_MAC, MAC_C0, 0x0800, icmp(C0, INET, 8, 0, b"\0\3\0\1", b"z" * 8))),
                      rec(1, eth(UP_MAC, PARENT, 0x0800, icmp(INET, EXT, 0, 0, b"\x80\0\0\1", b"z" * 8)))],
        "icmp-error": [rec(0, out_udp),
                       rec(1, eth(UP_MAC, PARENT, 0x0800, icmp(INET, EXT, 3, 3, bytes(4), udp(EXT, INET, 32768, 53, b"q")))),
                       rec(0x10, eth(GW0_MAC, MAC_C0, 0x0800, icmp(C0, INET, 11, 0, bytes(4), udp(INET, C0, 53, 40000, b"r"))))],
    }
    for name, recs in nat.items():
        write("nat", name, b"".join(recs))
    # ---- dns_query: first byte = transport (bit 0), network (bit 1), client
    for i, (name, qt, edns) in enumerate([
        ("web", 1, False), ("www.n1", 1, True), ("db", 28, False),
        ("2.0.1.10.in-addr.arpa", 12, False), ("data.base", 255, True), ("example.org", 1, False),
    ]):
        write("dns_query", "q%d" % i, bytes([8 | (i & 1)]) + dnsq(name, qt, edns=edns))
    # ---- api: first byte = body kind (see lib.rs)
    api = [
        (0, {"name": "n1", "subnet": "10.9.0.0/24", "gateway": "10.9.0.254", "ip_range": "10.9.0.128/25",
             "mtu": 9000, "dns": ["1.1.1.1", "9.9.9.9:53"], "internal": True}),
        (0, {"name": "mv", "driver": "macvlan", "options": {"parent": "eth0.12", "macvlan_mode": "private"},
             "subnet": "192.168.7.0/24"}),
        (0, {"name": "iv", "driver": "ipvlan", "options": {"parent": "eth1", "ipvlan_mode": "l3"}}),
        (1, {"container": "c1", "netns": "/run/netns/x", "ip": "10.9.0.5", "mac": "02:42:0a:09:00:05",
             "aliases": ["web"], "ports": ["127.0.0.1:8080:80/tcp", "9000-9002:9000-9002/udp"]}),
        (2, {"name": "c2", "network": "container:c1", "dns": ["8.8.8.8"], "ports": ["53:53/udp"], "client_pid": 42}),
        (3, {"container": "c1", "name": "c3", "pid": 7}),
        (4, {"name": "n1", "id": "ab" * 16, "driver": "bridge", "options": {}, "created": 1, "subnet": "10.9.0.0/24",
             "gateway": "10.9.0.1", "ip_range": None, "mtu": 1500, "builtin": False, "dns_names": True,
             "dns": [], "internal": False, "endpoints": {}}),
        (5, {}),
        (6, {"cniVersion": "1.0.0", "name": "tn", "type": "tapnet", "network": "n1", "socket": "/run/tapnet/tapnet.sock",
             "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                                {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}],
                               "ips": ["10.9.0.7/24"], "mac": "02:42:0a:09:00:07", "aliases": ["web"]},
             "prevResult": {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.9.0.7/24", "interface": 0}]},
             "cni.dev/valid-attachments": [{"containerID": "ab" * 32, "ifname": "eth0"}]}),
    ]
    for i, (k, body) in enumerate(api):
        write("api", "b%d" % i, bytes([k]) + json.dumps(body).encode())


if __name__ == "__main__":
    main()
