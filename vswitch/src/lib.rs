//! tapnet's userspace L2 switch.
//!
//! - [`tap`]: TAP ports created inside a container's network namespace
//!   (`IFF_VNET_HDR`, checksum/TSO offloads).
//! - [`table`]: the (network, MAC) -> port learning table with aging.
//! - [`switch`]: the per-frame decision and counters, free of I/O.
//! - [`trunk`]: packet-socket ports on a parent interface (macvlan,
//!   ipvlan): VLAN tags, the shared MAC.
//! - [`router`]: each network's gateway (ARP, ICMP echo), inside the switch.
//! - [`datapath`]: the io_uring worker that moves frames between ports.

pub mod bufring;
pub mod datapath;
pub mod mac;
pub mod router;
pub mod router6;
pub mod seal;
pub mod switch;
pub mod table;
pub mod tap;
pub mod trunk;
pub mod uplink;
/// The vnet header, from the shared wire layer.
pub use wire::vnet;

pub use datapath::{
    open_vtep, Datapath, DatapathConfig, DatapathError, Injector, PortId, PortState, PuntHook,
    RoutedConfig, RoutedV6, Snapshot, TrunkConfig, TunnelPeer, TunnelSnapshot, UplinkConfig,
    UplinkSnapshot, VtepSnapshot, VtepStats,
};
pub use mac::Mac;
pub use switch::{DropCounters, Net6, NetConfig, PortCounters, PortIdentity, PortKind, TrunkMode};
pub use table::NetIdx;
pub use tap::{in_netns, open_tap, NetnsRef, TapOptions};
