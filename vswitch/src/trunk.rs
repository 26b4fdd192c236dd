//! Trunk ports: a packet socket on a host interface (the *parent*) that
//! carries one network's frames to and from the parent's segment, for the
//! macvlan and ipvlan drivers.
//!
//! - VLAN (802.1Q): the kernel takes a received frame's tag out of the data
//!   before packet sockets see it (`skb_vlan_untag`), so a classic BPF
//!   filter on the socket lets in only frames of the network's VLAN (or
//!   only untagged ones), and they arrive untagged. On the way out the tag
//!   is inserted by [`egress_frame`]. No 8021q module is needed.
//! - ipvlan: containers share the parent's MAC on the wire. Outbound frames
//!   get the parent's MAC as source (and as ARP sender, and in neighbour
//!   discovery's link-layer address options); inbound frames for the
//!   parent's MAC are given back the container's MAC by destination IP,
//!   IPv4 or IPv6 ([`ipvlan_ingress`]). The containers' own ARP and
//!   neighbour advertisements, rewritten on the way out, answer for their
//!   addresses on the parent.
//!
//! Frame functions take a vnet header followed by an Ethernet frame and
//! never panic on short input.

use crate::mac::Mac;
use crate::switch::ETH_HDR_LEN;
use crate::vnet::{VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
use rustc_hash::FxHashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use wire::arp::Arp;
use wire::eth::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, VLAN_TAG_LEN};
use wire::{csum, icmpv6, ipv4, ipv6};

/// How a trunk changes frames on their way to and from the wire.
#[derive(Debug, Clone, Default)]
pub struct TrunkXform {
    /// 802.1Q VLAN id of the network on the parent (1-4094).
    pub vlan: Option<u16>,
    /// ipvlan: the parent's MAC, shared by every container on the wire.
    pub shared_mac: Option<Mac>,
    /// ipvlan: container address -> its own MAC (inside the switch).
    pub hosts: FxHashMap<Ipv4Addr, Mac>,
    /// ipvlan: the same for IPv6 (each container's address and its
    /// link-local one).
    pub hosts6: FxHashMap<Ipv6Addr, Mac>,
}

/// A container on a trunked network: its addresses and its own MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrunkHost {
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    pub mac: Mac,
}

impl TrunkXform {
    /// Takes `hosts` as the network's containers (ipvlan's address maps).
    pub fn set_hosts(&mut self, hosts: &[TrunkHost]) {
        self.hosts = hosts.iter().map(|h| (h.ip, h.mac)).collect();
        self.hosts6 = hosts
            .iter()
            .filter_map(|h| h.ip6.map(|a| (a, h.mac)))
            .flat_map(|(a, m)| [(a, m), (ipv6::link_local(m.0), m)])
            .collect();
    }
}

impl TrunkXform {
    /// Whether frames to the wire need [`egress_frame`] (else they go out
    /// as they are, without a copy).
    pub fn rewrites(&self) -> bool {
        self.vlan.is_some() || self.shared_mac.is_some()
    }
}

/// The frame to write to the trunk for `frame` (vnet header + Ethernet):
/// VLAN tag inserted, ipvlan source MAC replaced. `None` for a runt, or
/// for a vnet header whose offsets would overflow with the tag.
pub fn egress_frame(x: &TrunkXform, frame: &[u8]) -> Option<Vec<u8>> {
    const E: usize = VNET_HDR_LEN;
    if frame.len() < E + ETH_HDR_LEN {
        return None;
    }
    let mut v = Vec::with_capacity(frame.len() + VLAN_TAG_LEN);
    v.extend_from_slice(&frame[..E + 12]);
    if let Some(vid) = x.vlan {
        v.extend_from_slice(&ETHERTYPE_VLAN);
        v.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        // offsets in the vnet header count from the frame's start: they
        // move with the payload
        // (a header whose offsets cannot move is not one the kernel made:
        // the frame is dropped)
        let mut h = VnetHdr::parse(frame);
        if h.flags & F_NEEDS_CSUM != 0 {
            h.csum_start = h.csum_start.checked_add(VLAN_TAG_LEN as u16)?;
        }
        if h.hdr_len != 0 {
            h.hdr_len = h.hdr_len.checked_add(VLAN_TAG_LEN as u16)?;
        }
        h.write(&mut v[..E]);
    }
    let l3 = v.len() + 2;
    v.extend_from_slice(&frame[E + 12..]);
    if let Some(mac) = x.shared_mac {
        v[E + 6..E + 12].copy_from_slice(&mac.0);
        if v[l3 - 2..l3] == ETHERTYPE_ARP {
            if let Some(mut a) = Arp::new(&mut v[l3..]) {
                a.set_sender_mac(mac.0);
            }
        }
        if v[l3 - 2..l3] == ETHERTYPE_IPV6 {
            let partial = VnetHdr::parse(&v).flags & F_NEEDS_CSUM != 0;
            nd_link_options(&mut v[l3..], mac.0, partial);
        }
    }
    Some(v)
}

/// The link-layer address options (source, target) of the router or
/// neighbour solicitation or neighbour advertisement in IPv6 packet `p`
/// say `mac`, the ICMPv6 checksum kept right (a `partial` one covers no
/// payload yet: left alone). (Router advertisements and redirects never
/// leave a container: port security drops them.) Any other packet, or a
/// malformed option list, is left as it is after the last whole option.
fn nd_link_options(p: &mut [u8], mac: [u8; 6], partial: bool) {
    let Some(h) = ipv6::Header::new(p) else {
        return;
    };
    const L4: usize = ipv6::HDR_LEN;
    let end = (L4 + h.payload_len()).min(p.len());
    if h.next_header() != ipv6::PROTO_ICMPV6 || end < L4 + 4 {
        return;
    }
    // where the options start (RFC 4861 section 4)
    let mut o = L4
        + match p[L4 + icmpv6::TYPE] {
            icmpv6::ROUTER_SOLICIT => 8,
            icmpv6::NEIGHBOR_SOLICIT | icmpv6::NEIGHBOR_ADVERT => icmpv6::ND_LEN,
            _ => return,
        };
    let csum_at = L4 + 2;
    while o + 8 <= end {
        let len = p[o + 1] as usize * 8;
        if len == 0 || o + len > end {
            return;
        }
        if matches!(p[o], icmpv6::OPT_SLLA | icmpv6::OPT_TLLA) && len == 8 {
            let mut c = u16::from_be_bytes([p[csum_at], p[csum_at + 1]]);
            for k in 0..3 {
                let at = o + 2 + 2 * k;
                let old = u16::from_be_bytes([p[at], p[at + 1]]);
                let new = u16::from_be_bytes([mac[2 * k], mac[2 * k + 1]]);
                if !partial {
                    c = csum::update16(c, old, new);
                }
                p[at..at + 2].copy_from_slice(&[mac[2 * k], mac[2 * k + 1]]);
            }
            p[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        }
        o += len;
    }
}

/// ipvlan, in place on a frame from the wire (untagged): a frame for the
/// shared MAC gets the MAC of the container that owns its destination
/// address (IPv4 and IPv6 by their destination, ARP by its target, whose
/// hardware address is replaced too). Other frames are left alone.
pub fn ipvlan_ingress(x: &TrunkXform, f: &mut [u8]) {
    const E: usize = VNET_HDR_LEN;
    const L3: usize = E + ETH_HDR_LEN;
    let Some(shared) = x.shared_mac else {
        return;
    };
    if f.len() < L3 || f[E..E + 6] != shared.0 {
        return;
    }
    let ethertype = [f[E + 12], f[E + 13]];
    let mac = match ethertype {
        ETHERTYPE_IPV4 => ipv4::dst(&f[L3..]).and_then(|ip| x.hosts.get(&ip)),
        ETHERTYPE_ARP => Arp::new(&f[L3..])
            .map(|a| a.target_ip())
            .and_then(|ip| x.hosts.get(&ip)),
        ETHERTYPE_IPV6 => ipv6::dst(&f[L3..]).and_then(|ip| x.hosts6.get(&ip)),
        _ => None,
    };
    let Some(mac) = mac else {
        return;
    };
    f[E..E + 6].copy_from_slice(&mac.0);
    if ethertype == ETHERTYPE_ARP {
        if let Some(mut a) = Arp::new(&mut f[L3..]) {
            a.set_target_mac(mac.0);
        }
    }
}

// classic BPF, for the VLAN filter (linux/filter.h)
const BPF_LD_W_ABS: u16 = 0x00 | 0x00 | 0x20;
const BPF_ALU_AND_K: u16 = 0x04 | 0x50;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_RET_K: u16 = 0x06;
const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
const SKF_AD_VLAN_TAG: u32 = 44;
const SKF_AD_VLAN_TAG_PRESENT: u32 = 48;
const ACCEPT: u32 = 0x40000;

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter that lets in only frames of VLAN `vlan`, or only untagged
/// frames for `None`.
fn vlan_filter(vlan: Option<u16>) -> Vec<libc::sock_filter> {
    match vlan {
        None => vec![
            ins(BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT),
            ins(BPF_JMP_JEQ_K, 0, 1, 0),
            ins(BPF_RET_K, 0, 0, ACCEPT),
            ins(BPF_RET_K, 0, 0, 0),
        ],
        Some(vid) => vec![
            ins(BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT),
            ins(BPF_JMP_JEQ_K, 0, 3, 1),
            ins(BPF_LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_VLAN_TAG),
            ins(BPF_ALU_AND_K, 0, 0, 0x0fff),
            ins(BPF_JMP_JEQ_K, 1, 0, u32::from(vid)),
            ins(BPF_RET_K, 0, 0, 0),
            ins(BPF_RET_K, 0, 0, ACCEPT),
        ],
    }
}

/// Opens a trunk's packet socket on `parent` (in the calling thread's
/// network namespace): vnet headers like the uplink's, only frames of
/// `vlan` (untagged for `None`), and, with `promisc`, the parent in
/// promiscuous mode for as long as the socket is open (macvlan: frames for
/// the containers' own MACs must reach it). Returns the socket, the
/// parent's MAC and MTU.
pub fn open_trunk(
    parent: &str,
    vlan: Option<u16>,
    promisc: bool,
) -> io::Result<(OwnedFd, Mac, u32)> {
    let (fd, mac, mtu) = crate::uplink::open_packet_socket(parent)?;
    let prog = vlan_filter(vlan);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut _,
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
        .map_err(|e| io::Error::new(e.kind(), format!("VLAN filter on {parent}: {e}")))?;
    // frames queued before the filter was attached: drop them
    let mut scratch = [0u8; 64];
    while unsafe {
        libc::recv(
            fd.as_raw_fd(),
            scratch.as_mut_ptr() as *mut _,
            scratch.len(),
            libc::MSG_DONTWAIT,
        )
    } >= 0
    {}
    // straight to the driver: a trunk's frames need no queueing discipline
    // (veth and most virtual devices have none anyway); best effort
    let _ = setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32);
    if promisc {
        let cname = std::ffi::CString::new(parent)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
        let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mr.mr_ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        mr.mr_type = libc::PACKET_MR_PROMISC as u16;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr)
            .map_err(|e| io::Error::new(e.kind(), format!("promiscuous mode on {parent}: {e}")))?;
    }
    Ok((fd, mac, mtu))
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, opt: i32, v: &T) -> io::Result<()> {
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            v as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: Mac = Mac([2, 0xaa, 0, 0, 0, 1]);
    const CTR: Mac = Mac([2, 0x42, 10, 0, 0, 2]);

    fn eth(dst: Mac, src: Mac, ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(payload);
        f
    }

    fn arp(op: u8, sha: Mac, spa: [u8; 4], tha: Mac, tpa: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, op];
        a.extend_from_slice(&sha.0);
        a.extend_from_slice(&spa);
        a.extend_from_slice(&tha.0);
        a.extend_from_slice(&tpa);
        a
    }

    #[test]
    fn vlan_tag_inserted_and_offsets_moved() {
        let mut f = eth(PARENT, CTR, ETHERTYPE_IPV4, &[0x45; 40]);
        VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            hdr_len: 54,
            ..Default::default()
        }
        .write(&mut f);
        let x = TrunkXform {
            vlan: Some(10),
            ..Default::default()
        };
        let out = egress_frame(&x, &f).unwrap();
        assert_eq!(out.len(), f.len() + 4);
        let e = VNET_HDR_LEN;
        assert_eq!(&out[e + 12..e + 18], &[0x81, 0, 0, 10, 8, 0]);
        assert_eq!(&out[e..e + 12], &f[e..e + 12]);
        let h = VnetHdr::parse(&out);
        assert_eq!((h.csum_start, h.hdr_len, h.csum_offset), (38, 58, 16));
        assert!(egress_frame(&x, &f[..e + 5]).is_none());
    }

    #[test]
    fn ipvlan_rewrites_both_ways() {
        let mut x = TrunkXform {
            shared_mac: Some(PARENT),
            ..Default::default()
        };
        x.hosts.insert(Ipv4Addr::new(10, 0, 0, 2), CTR);
        // out: an ARP reply from the container carries the parent's MAC
        let peer = Mac([2, 0xbb, 0, 0, 0, 9]);
        let reply = eth(
            peer,
            CTR,
            ETHERTYPE_ARP,
            &arp(2, CTR, [10, 0, 0, 2], peer, [10, 0, 0, 9]),
        );
        let out = egress_frame(&x, &reply).unwrap();
        let e = VNET_HDR_LEN;
        assert_eq!(&out[e + 6..e + 12], &PARENT.0);
        assert_eq!(&out[e + 14 + 8..e + 14 + 14], &PARENT.0);
        // in: an ARP reply to the parent's MAC for the container's address
        let mut inb = eth(
            PARENT,
            peer,
            ETHERTYPE_ARP,
            &arp(2, peer, [10, 0, 0, 9], PARENT, [10, 0, 0, 2]),
        );
        ipvlan_ingress(&x, &mut inb);
        assert_eq!(&inb[e..e + 6], &CTR.0);
        assert_eq!(&inb[e + 14 + 18..e + 14 + 24], &CTR.0);
        // in: IPv4 for an unknown address stays as it is
        let mut ip = vec![0x45u8; 20];
        ip[16..20].copy_from_slice(&[10, 0, 0, 77]);
        let mut f = eth(PARENT, peer, ETHERTYPE_IPV4, &ip);
        let before = f.clone();
        ipvlan_ingress(&x, &mut f);
        assert_eq!(f, before);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let mut f = eth(PARENT, peer, ETHERTYPE_IPV4, &ip);
        ipvlan_ingress(&x, &mut f);
        assert_eq!(&f[e..e + 6], &CTR.0);
        // truncated input: no panic, no change
        let mut short = f[..e + 15].to_vec();
        let s2 = short.clone();
        ipvlan_ingress(&x, &mut short);
        assert_eq!(short, s2);
    }

    /// IPv6 on ipvlan: the container's neighbour advertisement and
    /// solicitation leave with the parent's MAC in their link-layer option
    /// (checksum still right); frames for its address and its link-local
    /// one come back to its own MAC.
    #[test]
    fn ipvlan_ipv6_neighbour_discovery_both_ways() {
        let c6: Ipv6Addr = "fd00:79::2".parse().unwrap();
        let peer6: Ipv6Addr = "fd00:79::1".parse().unwrap();
        let mut x = TrunkXform {
            shared_mac: Some(PARENT),
            ..Default::default()
        };
        x.set_hosts(&[TrunkHost {
            ip: Ipv4Addr::new(10, 0, 0, 2),
            ip6: Some(c6),
            mac: CTR,
        }]);
        let peer = Mac([2, 0xbb, 0, 0, 0, 9]);
        let e = VNET_HDR_LEN;
        let l4 = e + 14 + ipv6::HDR_LEN;
        let packet = |msg: &[u8], src: Ipv6Addr, dst: Ipv6Addr| {
            let mut p = vec![0u8; ipv6::HDR_LEN];
            ipv6::emit(&mut p, msg.len() as u16, ipv6::PROTO_ICMPV6, 255, src, dst);
            p.extend_from_slice(msg);
            p
        };
        let mut na = [0u8; icmpv6::NA_WITH_TLLA];
        icmpv6::emit_na(&mut na, 0x60, c6, CTR.0, c6, peer6);
        let mut ns = [0u8; icmpv6::ND_LEN + 8];
        icmpv6::emit_ns(&mut ns, peer6, CTR.0, c6, peer6);
        for (msg, dst) in [(&na[..], peer6), (&ns[..], peer6)] {
            let f = eth(peer, CTR, ETHERTYPE_IPV6, &packet(msg, c6, dst));
            let out = egress_frame(&x, &f).unwrap();
            assert_eq!(&out[e + 6..e + 12], &PARENT.0);
            let m = &out[l4..];
            assert_eq!(&m[icmpv6::ND_LEN + 2..icmpv6::ND_LEN + 8], &PARENT.0);
            assert_eq!(ipv6::upper_checksum(c6, dst, ipv6::PROTO_ICMPV6, m), 0);
        }
        // in: to the parent's MAC for c's address and its link-local one
        for dst in [c6, ipv6::link_local(CTR.0)] {
            let mut f = eth(PARENT, peer, ETHERTYPE_IPV6, &packet(&ns, peer6, dst));
            ipvlan_ingress(&x, &mut f);
            assert_eq!(&f[e..e + 6], &CTR.0, "{dst}");
        }
        // an unknown address stays; a cut option list or header: no panic
        let mut f = eth(PARENT, peer, ETHERTYPE_IPV6, &packet(&ns, peer6, peer6));
        ipvlan_ingress(&x, &mut f);
        assert_eq!(&f[e..e + 6], &PARENT.0);
        let full = eth(peer, CTR, ETHERTYPE_IPV6, &packet(&na, c6, peer6));
        for cut in 0..full.len() {
            let _ = egress_frame(&x, &full[..cut]);
        }
        let mut zero = na;
        zero[icmpv6::ND_LEN + 1] = 0;
        let f = eth(peer, CTR, ETHERTYPE_IPV6, &packet(&zero, c6, peer6));
        let out = egress_frame(&x, &f).unwrap();
        assert_eq!(
            &out[l4 + icmpv6::ND_LEN + 2..l4 + icmpv6::ND_LEN + 8],
            &CTR.0
        );
    }
}
