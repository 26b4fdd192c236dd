//! tapnet's wire layer: the stateless packet code every other crate shares.
//!
//! - [`vnet`]: the `virtio_net_hdr` before every frame on a TAP or packet
//!   socket opened with vnet headers.
//! - [`eth`]: Ethernet offsets, EtherTypes and a frame builder.
//! - [`arp`]: a checked view of Ethernet/IPv4 ARP and its builders.
//! - [`ipv4`]: IPv4 header offsets and the TTL decrement.
//! - [`ipv6`]: IPv6 header offsets, a checked header view, the multicast
//!   addresses of neighbour discovery and the pseudo-header sum.
//! - [`icmpv6`]: ICMPv6 and neighbour discovery (solicitations parsed,
//!   advertisements built).
//! - [`tcp`]: TCP header offsets and flags.
//! - [`csum`]: the Internet checksum (RFC 1071) and its incremental updates
//!   (RFC 1624).
//! - [`gso`]: software segmentation and checksum completion of offloaded
//!   frames, for wires without offloads (a VXLAN tunnel).
//! - [`vxlan`]: the VXLAN header (RFC 7348).
//!
//! Offsets are named once here; views check their length once, so their
//! accessors cannot panic.

pub mod arp;
pub mod csum;
pub mod eth;
pub mod frag6;
pub mod gso;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod vnet;
pub mod vxlan;
