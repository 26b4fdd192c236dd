//! IP address management: subnets, gateways, ranges and allocations.

use ipnet::{Ipv4Net, Ipv6Net};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid subnet {0:?}: expected an IPv4 CIDR like 10.88.0.0/24")]
    BadCidr(String),
    #[error("invalid subnet {given}: host bits are set, did you mean {net}?")]
    HostBits { given: String, net: Ipv4Net },
    #[error("subnet {0} is too small: it needs room for a gateway and at least one container (at most /30)")]
    TooSmall(Ipv4Net),
    #[error("invalid address {0:?}: expected an IPv4 address like 10.88.0.5")]
    BadAddr(String),
    #[error("address {ip} is outside subnet {subnet}")]
    Outside { ip: Ipv4Addr, subnet: Ipv4Net },
    #[error("IP range {range} is outside subnet {subnet}")]
    RangeOutside { range: Ipv4Net, subnet: Ipv4Net },
    #[error("address {0} is reserved (network, broadcast or gateway address)")]
    Reserved(Ipv4Addr),
    #[error("address {0} is already in use")]
    InUse(Ipv4Addr),
    #[error("no free address left in {0} (address pool exhausted)")]
    Exhausted(Ipv4Net),
    #[error("subnet {subnet} overlaps with network {network} ({other})")]
    Overlap {
        subnet: Ipv4Net,
        network: String,
        other: Ipv4Net,
    },
    #[error("no free subnet left in the default pools (172.18-31.0.0/16, 192.168.0.0/16 in /20s): pass --subnet")]
    NoFreeSubnet,
}

pub fn parse_subnet(s: &str) -> Result<Ipv4Net, IpamError> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| IpamError::BadCidr(s.to_string()))?;
    if net.addr() != net.network() {
        return Err(IpamError::HostBits {
            given: s.to_string(),
            net: net.trunc(),
        });
    }
    if net.prefix_len() > 30 {
        return Err(IpamError::TooSmall(net));
    }
    Ok(net)
}

pub fn parse_addr(s: &str) -> Result<Ipv4Addr, IpamError> {
    s.trim()
        .parse()
        .map_err(|_| IpamError::BadAddr(s.to_string()))
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Picks the first subnet of Docker's default pools that overlaps none of
/// `taken`: 172.18.0.0/16 ... 172.31.0.0/16, then 192.168.0.0/20 ...
pub fn auto_subnet(taken: &[Ipv4Net]) -> Result<Ipv4Net, IpamError> {
    let a = (18..=31).map(|o| Ipv4Net::new(Ipv4Addr::new(172, o, 0, 0), 16).expect("valid"));
    let b = (0..16).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).expect("valid"));
    a.chain(b)
        .find(|c| taken.iter().all(|t| !overlaps(c, t)))
        .ok_or(IpamError::NoFreeSubnet)
}

/// The addresses of one network.
#[derive(Debug, Clone)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Where automatic addresses come from (the subnet unless --ip-range).
    pub range: Ipv4Net,
    used: BTreeSet<Ipv4Addr>,
}

impl Pool {
    pub fn new(
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        range: Option<Ipv4Net>,
    ) -> Result<Pool, IpamError> {
        let gateway = gateway.unwrap_or_else(|| first_host(&subnet));
        if !subnet.contains(&gateway) {
            return Err(IpamError::Outside {
                ip: gateway,
                subnet,
            });
        }
        if gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(IpamError::Reserved(gateway));
        }
        let range = match range {
            Some(r) if !(subnet.contains(&r.network()) && subnet.contains(&r.broadcast())) => {
                return Err(IpamError::RangeOutside { range: r, subnet })
            }
            Some(r) => r,
            None => subnet,
        };
        Ok(Pool {
            subnet,
            gateway,
            range,
            used: BTreeSet::new(),
        })
    }

    fn check(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        if !self.subnet.contains(&ip) {
            return Err(IpamError::Outside {
                ip,
                subnet: self.subnet,
            });
        }
        if ip == self.subnet.network() || ip == self.subnet.broadcast() || ip == self.gateway {
            return Err(IpamError::Reserved(ip));
        }
        if self.used.contains(&ip) {
            return Err(IpamError::InUse(ip));
        }
        Ok(())
    }

    /// Allocates `want`, or the lowest free address of the range.
    pub fn allocate(&mut self, want: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        let ip = match want {
            Some(ip) => {
                self.check(ip)?;
                ip
            }
            None => {
                let lo = u32::from(self.range.network());
                let hi = u32::from(self.range.broadcast());
                (lo..=hi)
                    .map(Ipv4Addr::from)
                    .find(|ip| self.check(*ip).is_ok())
                    .ok_or(IpamError::Exhausted(self.range))?
            }
        };
        self.used.insert(ip);
        Ok(ip)
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }

    /// The addresses allocated.
    pub fn used(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.used.iter().copied()
    }
}

pub fn first_host(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

// ---- IPv6 ----

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ipam6Error {
    #[error("invalid IPv6 subnet {0:?}: expected an IPv6 CIDR like fd00:1::/64")]
    BadCidr(String),
    #[error("invalid IPv6 subnet {given}: host bits are set, did you mean {net}?")]
    HostBits { given: String, net: Ipv6Net },
    #[error("IPv6 subnet {0} is too small: the prefix may be at most /120")]
    TooSmall(Ipv6Net),
    #[error("IPv6 subnet {0} is too large to hand out addresses from: use at most a /48, or pass --ip-range with a smaller range")]
    TooLarge(Ipv6Net),
    #[error("invalid IPv6 address {0:?}: expected an address like fd00:1::5")]
    BadAddr(String),
    #[error("address {ip} is outside subnet {subnet}")]
    Outside { ip: Ipv6Addr, subnet: Ipv6Net },
    #[error("IP range {range} is outside subnet {subnet}")]
    RangeOutside { range: Ipv6Net, subnet: Ipv6Net },
    #[error("address {0} is reserved (the subnet-router anycast or gateway address)")]
    Reserved(Ipv6Addr),
    #[error("address {0} is already in use")]
    InUse(Ipv6Addr),
    #[error("no free address left in {0} (address pool exhausted)")]
    Exhausted(Ipv6Net),
    #[error("IPv6 subnet {subnet} overlaps with network {network} ({other})")]
    Overlap {
        subnet: Ipv6Net,
        network: String,
        other: Ipv6Net,
    },
    #[error("no free /64 left in the default IPv6 pool {0}: pass --subnet with an IPv6 CIDR")]
    NoFreeSubnet(Ipv6Net),
}

/// Parses an IPv6 subnet a network may have: no host bits, at most /120
/// (room for a gateway and containers). A prefix shorter than /48 is
/// refused unless an `--ip-range` narrows where addresses come from
/// (`ranged`).
pub fn parse_subnet6(s: &str, ranged: bool) -> Result<Ipv6Net, Ipam6Error> {
    let net: Ipv6Net = s
        .trim()
        .parse()
        .map_err(|_| Ipam6Error::BadCidr(s.to_string()))?;
    if net.addr() != net.network() {
        return Err(Ipam6Error::HostBits {
            given: s.to_string(),
            net: net.trunc(),
        });
    }
    if net.prefix_len() > 120 {
        return Err(Ipam6Error::TooSmall(net));
    }
    if net.prefix_len() < 48 && !ranged {
        return Err(Ipam6Error::TooLarge(net));
    }
    Ok(net)
}

pub fn parse_addr6(s: &str) -> Result<Ipv6Addr, Ipam6Error> {
    s.trim()
        .parse()
        .map_err(|_| Ipam6Error::BadAddr(s.to_string()))
}

pub fn overlaps6(a: &Ipv6Net, b: &Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A random unique local /48 (RFC 4193: fd00::/8 and a 40-bit random
/// global id): the daemon's default IPv6 pool, chosen once and kept.
pub fn random_ula48() -> Ipv6Net {
    let r: [u8; 5] = rand::random();
    let a = Ipv6Addr::new(
        0xfd00 | r[0] as u16,
        u16::from_be_bytes([r[1], r[2]]),
        u16::from_be_bytes([r[3], r[4]]),
        0,
        0,
        0,
        0,
        0,
    );
    Ipv6Net::new(a, 48).expect("valid")
}

/// The first /64 of `pool` that overlaps none of `taken`.
pub fn auto_subnet6(pool: Ipv6Net, taken: &[Ipv6Net]) -> Result<Ipv6Net, Ipam6Error> {
    let base = u128::from(pool.network());
    let count = 1u128 << (64 - pool.prefix_len().min(64));
    (0..count.min(65536))
        .map(|i| Ipv6Net::new(Ipv6Addr::from(base + (i << 64)), 64).expect("valid"))
        .find(|c| taken.iter().all(|t| !overlaps6(c, t)))
        .ok_or(Ipam6Error::NoFreeSubnet(pool))
}

/// The IPv6 addresses of one network.
#[derive(Debug, Clone)]
pub struct Pool6 {
    pub subnet: Ipv6Net,
    pub gateway: Ipv6Addr,
    pub range: Ipv6Net,
    used: BTreeSet<Ipv6Addr>,
}

impl Pool6 {
    pub fn new(
        subnet: Ipv6Net,
        gateway: Option<Ipv6Addr>,
        range: Option<Ipv6Net>,
    ) -> Result<Pool6, Ipam6Error> {
        let gateway = gateway.unwrap_or_else(|| Ipv6Addr::from(u128::from(subnet.network()) + 1));
        if !subnet.contains(&gateway) {
            return Err(Ipam6Error::Outside {
                ip: gateway,
                subnet,
            });
        }
        if gateway == subnet.network() {
            return Err(Ipam6Error::Reserved(gateway));
        }
        let range = match range {
            Some(r) if !(subnet.contains(&r.network()) && subnet.contains(&r.broadcast())) => {
                return Err(Ipam6Error::RangeOutside { range: r, subnet })
            }
            Some(r) => r,
            None => subnet,
        };
        Ok(Pool6 {
            subnet,
            gateway,
            range,
            used: BTreeSet::new(),
        })
    }

    fn check(&self, ip: Ipv6Addr) -> Result<(), Ipam6Error> {
        if !self.subnet.contains(&ip) {
            return Err(Ipam6Error::Outside {
                ip,
                subnet: self.subnet,
            });
        }
        if ip == self.subnet.network() || ip == self.gateway {
            return Err(Ipam6Error::Reserved(ip));
        }
        if self.used.contains(&ip) {
            return Err(Ipam6Error::InUse(ip));
        }
        Ok(())
    }

    /// Allocates `want`, or the lowest free address of the range (the
    /// search passes at most every used address once).
    pub fn allocate(&mut self, want: Option<Ipv6Addr>) -> Result<Ipv6Addr, Ipam6Error> {
        let ip = match want {
            Some(ip) => {
                self.check(ip)?;
                ip
            }
            None => {
                let lo = u128::from(self.range.network());
                let hi = u128::from(self.range.broadcast());
                let tries = self.used.len() as u128 + 3;
                (lo..=hi)
                    .take(tries.min(hi - lo + 1) as usize)
                    .map(Ipv6Addr::from)
                    .find(|ip| self.check(*ip).is_ok())
                    .ok_or(Ipam6Error::Exhausted(self.range))?
            }
        };
        self.used.insert(ip);
        Ok(ip)
    }

    pub fn release(&mut self, ip: Ipv6Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parse() {
        assert_eq!(parse_subnet("10.88.0.0/24").unwrap(), net("10.88.0.0/24"));
        assert!(matches!(
            parse_subnet("10.88.0.0"),
            Err(IpamError::BadCidr(_))
        ));
        assert!(matches!(
            parse_subnet("10.888.0.0/24"),
            Err(IpamError::BadCidr(_))
        ));
        let e = parse_subnet("10.88.0.5/24").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid subnet 10.88.0.5/24: host bits are set, did you mean 10.88.0.0/24?"
        );
        assert!(matches!(
            parse_subnet("10.0.0.0/31"),
            Err(IpamError::TooSmall(_))
        ));
    }

    #[test]
    fn allocate_release() {
        let mut p = Pool::new(net("10.88.0.0/24"), None, None).unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(p.allocate(None).unwrap(), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(p.allocate(None).unwrap(), Ipv4Addr::new(10, 88, 0, 3));
        p.release(Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(p.allocate(None).unwrap(), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(
            p.allocate(Some(Ipv4Addr::new(10, 88, 0, 50))).unwrap(),
            Ipv4Addr::new(10, 88, 0, 50)
        );
        assert_eq!(
            p.allocate(Some(Ipv4Addr::new(10, 88, 0, 50))),
            Err(IpamError::InUse(Ipv4Addr::new(10, 88, 0, 50)))
        );
        assert!(matches!(
            p.allocate(Some(Ipv4Addr::new(10, 89, 0, 5))),
            Err(IpamError::Outside { .. })
        ));
        assert_eq!(
            p.allocate(Some(Ipv4Addr::new(10, 88, 0, 1))),
            Err(IpamError::Reserved(Ipv4Addr::new(10, 88, 0, 1)))
        );
        assert_eq!(
            p.allocate(Some(Ipv4Addr::new(10, 88, 0, 255))),
            Err(IpamError::Reserved(Ipv4Addr::new(10, 88, 0, 255)))
        );
    }

    #[test]
    fn exhaustion_and_range() {
        let mut p = Pool::new(net("10.0.0.0/30"), None, None).unwrap();
        assert_eq!(p.allocate(None).unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(
            p.allocate(None),
            Err(IpamError::Exhausted(net("10.0.0.0/30")))
        );
        let mut p = Pool::new(
            net("10.1.0.0/16"),
            Some(Ipv4Addr::new(10, 1, 0, 254)),
            Some(net("10.1.5.0/24")),
        )
        .unwrap();
        assert_eq!(p.allocate(None).unwrap(), Ipv4Addr::new(10, 1, 5, 0));
        // a static address may lie outside the range but inside the subnet
        assert_eq!(
            p.allocate(Some(Ipv4Addr::new(10, 1, 0, 9))).unwrap(),
            Ipv4Addr::new(10, 1, 0, 9)
        );
        assert!(matches!(
            Pool::new(net("10.1.0.0/16"), None, Some(net("10.2.0.0/24"))),
            Err(IpamError::RangeOutside { .. })
        ));
        assert!(matches!(
            Pool::new(net("10.1.0.0/16"), Some(Ipv4Addr::new(10, 2, 0, 1)), None),
            Err(IpamError::Outside { .. })
        ));
    }

    #[test]
    fn auto() {
        assert_eq!(
            auto_subnet(&[net("172.17.0.0/16")]).unwrap(),
            net("172.18.0.0/16")
        );
        assert_eq!(
            auto_subnet(&[
                net("172.17.0.0/16"),
                net("172.18.5.0/24"),
                net("172.16.0.0/12")
            ])
            .unwrap(),
            net("192.168.0.0/20")
        );
        let mut all: Vec<_> = (16..=31).map(|o| net(&format!("172.{o}.0.0/16"))).collect();
        all.push(net("192.168.0.0/16"));
        assert_eq!(auto_subnet(&all), Err(IpamError::NoFreeSubnet));
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.88.0.0/24")));
        assert!(!overlaps(&net("10.89.0.0/24"), &net("10.88.0.0/24")));
    }

    #[test]
    fn ipv6_pools() {
        let n6 = |s: &str| s.parse::<Ipv6Net>().unwrap();
        let a6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            parse_subnet6("fd00:1::/64", false).unwrap(),
            n6("fd00:1::/64")
        );
        assert!(matches!(
            parse_subnet6("fd00:1::/121", false),
            Err(Ipam6Error::TooSmall(_))
        ));
        assert!(matches!(
            parse_subnet6("fd00::/40", false),
            Err(Ipam6Error::TooLarge(_))
        ));
        assert!(parse_subnet6("fd00::/40", true).is_ok());
        assert!(matches!(
            parse_subnet6("fd00:1::5/64", false),
            Err(Ipam6Error::HostBits { .. })
        ));
        assert!(matches!(
            parse_subnet6("10.0.0.0/24", false),
            Err(Ipam6Error::BadCidr(_))
        ));
        let mut p = Pool6::new(n6("fd00:1::/64"), None, None).unwrap();
        assert_eq!(p.gateway, a6("fd00:1::1"));
        assert_eq!(p.allocate(None).unwrap(), a6("fd00:1::2"));
        assert_eq!(p.allocate(None).unwrap(), a6("fd00:1::3"));
        assert_eq!(
            p.allocate(Some(a6("fd00:1::3"))),
            Err(Ipam6Error::InUse(a6("fd00:1::3")))
        );
        assert!(matches!(
            p.allocate(Some(a6("fd00:2::3"))),
            Err(Ipam6Error::Outside { .. })
        ));
        assert_eq!(
            p.allocate(Some(a6("fd00:1::"))),
            Err(Ipam6Error::Reserved(a6("fd00:1::")))
        );
        p.release(a6("fd00:1::2"));
        assert_eq!(p.allocate(None).unwrap(), a6("fd00:1::2"));
        // a /120 fills up: 256 addresses minus the anycast and the gateway
        let mut p = Pool6::new(n6("fd00:2::/120"), None, None).unwrap();
        for _ in 0..254 {
            p.allocate(None).unwrap();
        }
        assert_eq!(
            p.allocate(None),
            Err(Ipam6Error::Exhausted(n6("fd00:2::/120")))
        );
        let ula = random_ula48();
        assert_eq!(ula.prefix_len(), 48);
        assert_eq!(ula.addr().segments()[0] >> 8, 0xfd);
        let first = auto_subnet6(ula, &[]).unwrap();
        assert_eq!(first.network(), ula.network());
        assert_ne!(auto_subnet6(ula, &[first]).unwrap(), first);
    }
}
