//! Ethernet MAC addresses.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Reads a MAC from the first six bytes of `b` (caller guarantees length).
    #[inline]
    pub fn from_slice(b: &[u8]) -> Mac {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        Mac(m)
    }

    /// Group (multicast or broadcast) address: I/G bit set.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    #[inline]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Docker-style MAC for an IPv4 address: 02:42 followed by the four
    /// address bytes (locally administered, unicast).
    pub fn from_ipv4(ip: std::net::Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// The 48 bits as an integer (used as part of the table key).
    #[inline]
    pub fn as_u64(&self) -> u64 {
        let b = self.0;
        (b[0] as u64) << 40
            | (b[1] as u64) << 32
            | (b[2] as u64) << 24
            | (b[3] as u64) << 16
            | (b[4] as u64) << 8
            | b[5] as u64
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex bytes like 02:42:0a:58:00:02")]
pub struct ParseMacError(String);

impl FromStr for Mac {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.len() != 2 {
                return Err(ParseMacError(s.to_string()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(ParseMacError(s.to_string()));
        }
        Ok(Mac(out))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let m: Mac = "02:42:0A:58:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:58:00:02");
        assert!(!m.is_multicast());
        assert!(Mac::BROADCAST.is_multicast());
        assert!("02:42:0a:58:00".parse::<Mac>().is_err());
        assert!("02:42:0a:58:00:02:03".parse::<Mac>().is_err());
        assert!("zz:42:0a:58:00:02".parse::<Mac>().is_err());
        assert_eq!(
            Mac::from_ipv4("10.88.0.2".parse().unwrap()).to_string(),
            "02:42:0a:58:00:02"
        );
    }
}
