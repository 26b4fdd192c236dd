#!/usr/bin/env python3
"""A raw-socket host on an 802.1Q VLAN, for the macvlan VLAN tests.

This kernel has no 8021q module, so no VLAN device can stand in for a peer
on a tagged segment. The kernel still takes a received frame's tag out of
the data; a packet socket reads it back from PACKET_AUXDATA.

  rawpeer.py peer IFACE VID IP SECS   answer ARP and ICMP echo for IP, only
                                      for frames tagged VID, tagged replies;
                                      prints "tagged VID" once per frame seen
  rawpeer.py probe IFACE              broadcast three frames: untagged
                                      (ethertype 0x88b5), VLAN 10 (0x88b6),
                                      VLAN 20 (0x88b7)
  rawpeer.py capture IFACE SECS       print the ethertype of each frame seen
"""
import select
import socket
import struct
import sys
import time

SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
ETH_P_ALL = 3


def open_sock(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    return s


def frames(s, secs):
    """Yields (frame, vlan id or None) of frames received for secs."""
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([s], [], [], 0.1)
        if not r:
            continue
        data, anc, _, addr = s.recvmsg(65536, socket.CMSG_SPACE(20))
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        vid = None
        for level, typ, d in anc:
            if level == SOL_PACKET and typ == PACKET_AUXDATA and len(d) >= 20:
                status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", d[:20])
                if status & TP_STATUS_VLAN_VALID:
                    vid = tci & 0x0FFF
        yield data, vid


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def peer(iface, vid, ip, secs):
    s = open_sock(iface)
    mac = s.getsockname()[4]
    ip = socket.inet_aton(ip)

    def send(dst, ethertype, payload):
        s.send(dst + mac + b"\x81\x00" + struct.pack("!H", vid) + ethertype + payload)

    for data, tag in frames(s, secs):
        if tag is None:
            continue
        print("tagged", tag, flush=True)
        if tag != vid or len(data) < 14:
            continue
        src, ethertype, body = data[6:12], data[12:14], data[14:]
        if ethertype == b"\x08\x06" and len(body) >= 28 and body[6:8] == b"\x00\x01" and body[24:28] == ip:
            send(src, ethertype, body[:6] + b"\x00\x02" + mac + ip + body[8:18])
        elif ethertype == b"\x08\x00" and len(body) >= 28 and body[9] == 1 and body[16:20] == ip:
            ihl = (body[0] & 15) * 4
            total = struct.unpack("!H", body[2:4])[0]
            iph, icmp = bytearray(body[:ihl]), bytearray(body[ihl:total])
            if not icmp or icmp[0] != 8:
                continue
            iph[12:16], iph[16:20] = body[16:20], body[12:16]
            iph[10:12] = b"\0\0"
            iph[10:12] = struct.pack("!H", csum(bytes(iph)))
            icmp[0] = 0
            icmp[2:4] = b"\0\0"
            icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
            send(src, ethertype, bytes(iph) + bytes(icmp))


def probe(iface):
    s = open_sock(iface)
    mac = s.getsockname()[4]
    bcast = b"\xff" * 6
    pad = b"tapnet-probe".ljust(46, b"\0")
    s.send(bcast + mac + b"\x88\xb5" + pad)
    s.send(bcast + mac + b"\x81\x00" + struct.pack("!H", 10) + b"\x88\xb6" + pad)
    s.send(bcast + mac + b"\x81\x00" + struct.pack("!H", 20) + b"\x88\xb7" + pad)


def capture(iface, secs):
    s = open_sock(iface)
    for data, _ in frames(s, secs):
        if len(data) >= 14:
            print("%02x%02x" % (data[12], data[13]), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "peer":
        peer(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    elif cmd == "probe":
        probe(sys.argv[2])
    elif cmd == "capture":
        capture(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit("unknown command " + cmd)
