//! Who is called what: networks, their endpoints, names and aliases.
//!
//! Names are case-insensitive. A container answers to its name, to
//! `name.network`, and to its network-scoped aliases. A query is answered
//! from the networks of the container that asked (the network it asked on
//! first), so a container attached to two networks resolves names of both.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub type NetId = u16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub container: String,
    pub aliases: Vec<String>,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
    /// Per-container upstream servers (`run --dns`).
    pub dns: Vec<SocketAddr>,
}

impl Endpoint {
    /// Whether `ip` is one of its addresses.
    fn has(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => a == self.ip,
            IpAddr::V6(a) => Some(a) == self.ip6,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Net {
    name: String,
    /// Resolve container names on this network (off on the default bridge).
    resolve: bool,
    /// Per-network upstream servers (`network create --dns`).
    dns: Vec<SocketAddr>,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Default)]
pub struct Registry {
    nets: HashMap<NetId, Net>,
}

/// What a local lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T> {
    /// The name is ours: these records (possibly none: NODATA).
    Local(T),
    /// Not a local name: forward it.
    NotLocal,
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// `name` is `container.network`.
fn qualified(name: &str, container: &str, network: &str) -> bool {
    let c = container.len();
    name.len() == c + 1 + network.len()
        && name.get(..c).is_some_and(|x| eq(x, container))
        && name.as_bytes()[c] == b'.'
        && name.get(c + 1..).is_some_and(|x| eq(x, network))
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn set_network(&mut self, id: NetId, name: &str, resolve: bool, dns: Vec<SocketAddr>) {
        let n = self.nets.entry(id).or_default();
        n.name = name.to_string();
        n.resolve = resolve;
        n.dns = dns;
    }

    /// Sets a network and all its endpoints at once.
    pub fn replace_network(
        &mut self,
        id: NetId,
        name: &str,
        resolve: bool,
        dns: Vec<SocketAddr>,
        endpoints: Vec<Endpoint>,
    ) {
        self.nets.insert(
            id,
            Net {
                name: name.to_string(),
                resolve,
                dns,
                endpoints,
            },
        );
    }

    pub fn remove_network(&mut self, id: NetId) {
        self.nets.remove(&id);
    }

    /// Adds (or replaces) `container`'s endpoint on network `id`.
    pub fn add_endpoint(&mut self, id: NetId, ep: Endpoint) {
        if let Some(n) = self.nets.get_mut(&id) {
            n.endpoints.retain(|e| e.container != ep.container);
            n.endpoints.push(ep);
        }
    }

    pub fn remove_endpoint(&mut self, id: NetId, container: &str) {
        if let Some(n) = self.nets.get_mut(&id) {
            n.endpoints.retain(|e| e.container != container);
        }
    }

    /// Renames a container on every network.
    pub fn rename(&mut self, old: &str, new: &str) {
        for n in self.nets.values_mut() {
            for e in n.endpoints.iter_mut().filter(|e| e.container == old) {
                e.container = new.to_string();
            }
        }
    }

    pub fn resolves(&self, id: NetId) -> bool {
        self.nets.get(&id).is_some_and(|n| n.resolve)
    }

    /// Networks to search for a query from `client` arriving on `id`: that
    /// network first, then the client's other networks.
    fn search_order(&self, id: NetId, client: IpAddr) -> Vec<NetId> {
        let mut order = vec![id];
        let who = self
            .nets
            .get(&id)
            .and_then(|n| n.endpoints.iter().find(|e| e.has(client)))
            .map(|e| e.container.clone());
        if let Some(who) = who {
            let mut others: Vec<NetId> = self
                .nets
                .iter()
                .filter(|(nid, n)| **nid != id && n.endpoints.iter().any(|e| e.container == who))
                .map(|(nid, _)| *nid)
                .collect();
            others.sort_unstable();
            order.extend(others);
        }
        order.retain(|n| self.resolves(*n));
        order
    }

    /// Addresses for `name` (without the trailing dot) as seen by `client`:
    /// the IPv4 ones, then the IPv6 ones.
    pub fn lookup(&self, id: NetId, client: IpAddr, name: &str) -> Found<Vec<IpAddr>> {
        for nid in self.search_order(id, client) {
            let n = &self.nets[&nid];
            let ips: Vec<&Endpoint> = n
                .endpoints
                .iter()
                .filter(|e| {
                    eq(&e.container, name)
                        || e.aliases.iter().any(|a| eq(a, name))
                        || qualified(name, &e.container, &n.name)
                })
                .collect();
            if !ips.is_empty() {
                let v4 = ips.iter().map(|e| IpAddr::V4(e.ip));
                let v6 = ips.iter().filter_map(|e| e.ip6.map(IpAddr::V6));
                return Found::Local(v4.chain(v6).collect());
            }
        }
        Found::NotLocal
    }

    /// `container.network` for an address on one of `client`'s networks.
    pub fn reverse(&self, id: NetId, client: IpAddr, ip: IpAddr) -> Found<String> {
        for nid in self.search_order(id, client) {
            let n = &self.nets[&nid];
            if let Some(e) = n.endpoints.iter().find(|e| e.has(ip)) {
                return Found::Local(format!("{}.{}", e.container, n.name));
            }
        }
        Found::NotLocal
    }

    /// Upstream servers for `client`: its own, else its network's (empty:
    /// the caller's defaults).
    pub fn upstreams(&self, id: NetId, client: IpAddr) -> Vec<SocketAddr> {
        let Some(n) = self.nets.get(&id) else {
            return Vec::new();
        };
        if let Some(e) = n.endpoints.iter().find(|e| e.has(client)) {
            if !e.dns.is_empty() {
                return e.dns.clone();
            }
        }
        n.dns.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(c: &str, ip: &str, aliases: &[&str]) -> Endpoint {
        Endpoint {
            container: c.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ip: ip.parse().unwrap(),
            ip6: None,
            dns: vec![],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_aliases_and_scoping() {
        let mut r = Registry::new();
        r.set_network(1, "front", true, vec![]);
        r.set_network(2, "back", true, vec![]);
        r.set_network(0, "bridge", false, vec![]);
        r.add_endpoint(1, ep("web", "10.1.0.2", &["www"]));
        r.add_endpoint(1, ep("web2", "10.1.0.3", &["www"]));
        r.add_endpoint(2, ep("web", "10.2.0.2", &[]));
        r.add_endpoint(2, ep("db", "10.2.0.3", &["database"]));
        r.add_endpoint(0, ep("b1", "172.17.0.2", &[]));
        r.add_endpoint(0, ep("b2", "172.17.0.3", &[]));
        let c = ip("10.1.0.3"); // web2, only on front
        assert_eq!(r.lookup(1, c, "WEB"), Found::Local(vec![ip("10.1.0.2")]));
        assert_eq!(
            r.lookup(1, c, "www"),
            Found::Local(vec![ip("10.1.0.2"), ip("10.1.0.3")])
        );
        assert_eq!(
            r.lookup(1, c, "web.front"),
            Found::Local(vec![ip("10.1.0.2")])
        );
        assert_eq!(r.lookup(1, c, "db"), Found::NotLocal); // other network
                                                           // web is on both: from front it sees its front address first and db too
        let w = ip("10.1.0.2");
        assert_eq!(r.lookup(1, w, "db"), Found::Local(vec![ip("10.2.0.3")]));
        assert_eq!(
            r.lookup(1, w, "database"),
            Found::Local(vec![ip("10.2.0.3")])
        );
        // bridge: no names
        assert_eq!(r.lookup(0, ip("172.17.0.2"), "b2"), Found::NotLocal);
        // reverse
        assert_eq!(
            r.reverse(1, w, ip("10.2.0.3")),
            Found::Local("db.back".to_string())
        );
        assert_eq!(r.reverse(1, c, ip("10.2.0.3")), Found::NotLocal);
        // rename and remove take effect at once
        r.rename("web2", "api");
        assert_eq!(r.lookup(1, w, "api"), Found::Local(vec![ip("10.1.0.3")]));
        assert_eq!(r.lookup(1, w, "web2"), Found::NotLocal);
        r.remove_endpoint(2, "db");
        assert_eq!(r.lookup(1, w, "db"), Found::NotLocal);
    }

    #[test]
    fn dual_stack() {
        let mut r = Registry::new();
        r.set_network(1, "ds", true, vec![]);
        let mut a = ep("a", "10.1.0.2", &["alias"]);
        a.ip6 = Some("fd00::2".parse().unwrap());
        r.add_endpoint(1, a);
        r.add_endpoint(1, ep("b", "10.1.0.3", &[]));
        // asked from b's IPv6-less address and from a's IPv6 address
        for c in [ip("10.1.0.3"), ip("fd00::2")] {
            assert_eq!(
                r.lookup(1, c, "alias"),
                Found::Local(vec![ip("10.1.0.2"), ip("fd00::2")])
            );
        }
        assert_eq!(
            r.reverse(1, ip("fd00::2"), ip("fd00::2")),
            Found::Local("a.ds".into())
        );
        assert_eq!(r.reverse(1, ip("fd00::2"), ip("fd00::3")), Found::NotLocal);
    }
}
