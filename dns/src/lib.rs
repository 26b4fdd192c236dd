//! tapnet's embedded DNS resolver: containers on a user-defined network
//! find each other by name; everything else goes to the upstream servers.
//!
//! - [`registry`]: networks, endpoints, names, aliases (case-insensitive).
//! - [`resolver`]: a query in, a decision out (local answer, forward, drop),
//!   with FORMERR/NOTIMP/SERVFAIL, EDNS and truncation; hickory-proto for
//!   the wire format.
//! - [`upstream`]: forwarding over UDP/TCP with short timeouts.
//! - [`cache`]: forwarded answers kept for their TTL (bounded, capped).
//!
//! The crate sees DNS messages, not frames or fds: the daemon's gateway
//! stack terminates UDP and TCP port 53 and hands it the payloads.

pub mod cache;
pub mod registry;
pub mod resolver;
pub mod upstream;

pub use cache::Cache;
pub use registry::{Endpoint, NetId, Registry};
pub use resolver::{Latency, LatencySnapshot, Outcome, Resolver, StatsSnapshot, Transport};
