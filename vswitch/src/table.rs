//! The L2 learning table: (network, MAC) -> port, with aging and move
//! detection.
//!
//! The table is owned by the datapath worker that uses it, so lookups take no
//! lock and never contend. Time is passed in by the caller (one clock read
//! per batch), and an entry older than the aging time counts as absent even
//! before the periodic [`MacTable::age`] sweep removes it.

use crate::mac::Mac;
use rustc_hash::FxHashMap;

pub type NetIdx = u16;
pub type PortIdx = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub port: PortIdx,
    /// Milliseconds on the caller's monotonic clock.
    pub last_seen: u64,
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The MAC was not known (or had aged out).
    New,
    /// Known on the same port; timestamp refreshed.
    Refreshed,
    /// Known on another port: the station moved.
    Moved { from: PortIdx },
    /// Table full: not learned (frames to it will be flooded).
    Full,
    /// The port already has its share of MACs: not learned (one port
    /// cannot fill the table every network shares).
    PortFull,
    /// The network already has its share of the table: not learned (one
    /// network's ports together cannot fill it for the others).
    NetFull,
}

/// The table's key: network and MAC in one word.
#[inline]
pub fn key(net: NetIdx, mac: &Mac) -> u64 {
    (net as u64) << 48 | mac.as_u64()
}

#[derive(Debug)]
pub struct MacTable {
    map: FxHashMap<u64, Entry>,
    aging_ms: u64,
    max_entries: usize,
    /// At most this many MACs per port (0: no limit).
    port_limit: u32,
    /// MACs learned per port (indexed by port).
    per_port: Vec<u32>,
    /// At most this many MACs per network (0: no limit).
    net_limit: u32,
    /// MACs learned per network.
    per_net: FxHashMap<NetIdx, u32>,
    pub moves: u64,
    pub full_drops: u64,
    /// Bumped whenever an entry appears, moves or goes: a copy made at one
    /// version is current while the version is unchanged.
    pub version: u64,
}

impl MacTable {
    pub fn new(aging_ms: u64, max_entries: usize) -> Self {
        let mut map = FxHashMap::default();
        map.reserve(max_entries.min(4096));
        MacTable {
            map,
            aging_ms,
            max_entries,
            port_limit: 0,
            per_port: Vec::new(),
            net_limit: 0,
            per_net: FxHashMap::default(),
            moves: 0,
            full_drops: 0,
            version: 0,
        }
    }

    /// Keeps the entries `keep` says so, giving their places back to the
    /// ports of those it drops.
    fn retain_counted(&mut self, mut keep: impl FnMut(u64, &Entry) -> bool) {
        let (per_port, per_net) = (&mut self.per_port, &mut self.per_net);
        let before = self.map.len();
        self.map.retain(|k, e| {
            let kept = keep(*k, e);
            if !kept {
                if let Some(c) = per_port.get_mut(e.port as usize) {
                    *c = c.saturating_sub(1);
                }
                let net = (*k >> 48) as NetIdx;
                if let Some(c) = per_net.get_mut(&net) {
                    *c -= 1;
                    if *c == 0 {
                        per_net.remove(&net);
                    }
                }
            }
            kept
        });
        if self.map.len() != before {
            self.version += 1;
        }
    }

    /// Sets the most MACs one network may have learned (0: no limit).
    pub fn set_net_limit(&mut self, n: u32) {
        self.net_limit = n;
    }

    /// Sets the most MACs one port may have learned (0: no limit).
    pub fn set_port_limit(&mut self, n: u32) {
        self.port_limit = n;
    }

    #[inline]
    fn count(&mut self, port: PortIdx) -> &mut u32 {
        let i = port as usize;
        if self.per_port.len() <= i {
            self.per_port.resize(i + 1, 0);
        }
        &mut self.per_port[i]
    }

    #[inline]
    fn port_full(&mut self, port: PortIdx) -> bool {
        self.port_limit != 0 && *self.count(port) >= self.port_limit
    }

    pub fn aging_ms(&self) -> u64 {
        self.aging_ms
    }

    pub fn set_aging_ms(&mut self, ms: u64) {
        self.aging_ms = ms;
    }

    #[inline]
    pub fn learn(&mut self, net: NetIdx, mac: &Mac, port: PortIdx, now: u64) -> Learned {
        let k = key(net, mac);
        if let Some(e) = self.map.get_mut(&k) {
            let expired = now.saturating_sub(e.last_seen) > self.aging_ms;
            if e.port == port {
                // the common case: one hash, updated in place
                e.last_seen = now;
                return if expired {
                    self.version += 1;
                    Learned::New
                } else {
                    Learned::Refreshed
                };
            }
            let from = e.port;
            if self.port_full(port) {
                return Learned::PortFull;
            }
            self.map.insert(
                k,
                Entry {
                    port,
                    last_seen: now,
                },
            );
            *self.count(from) -= 1;
            *self.count(port) += 1;
            self.version += 1;
            if expired {
                return Learned::New;
            }
            self.moves += 1;
            return Learned::Moved { from };
        }
        if self.map.len() >= self.max_entries {
            self.full_drops += 1;
            return Learned::Full;
        }
        if self.port_full(port) {
            return Learned::PortFull;
        }
        let in_net = self.per_net.get(&net).copied().unwrap_or(0);
        if self.net_limit != 0 && in_net >= self.net_limit {
            return Learned::NetFull;
        }
        self.map.insert(
            k,
            Entry {
                port,
                last_seen: now,
            },
        );
        *self.count(port) += 1;
        *self.per_net.entry(net).or_default() += 1;
        self.version += 1;
        Learned::New
    }

    #[inline]
    pub fn lookup(&self, net: NetIdx, mac: &Mac, now: u64) -> Option<PortIdx> {
        match self.map.get(&key(net, mac)) {
            Some(e) if now.saturating_sub(e.last_seen) <= self.aging_ms => Some(e.port),
            _ => None,
        }
    }

    /// Removes entries not seen for longer than the aging time; returns how
    /// many were removed.
    pub fn age(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let aging = self.aging_ms;
        self.retain_counted(|_, e| now.saturating_sub(e.last_seen) <= aging);
        before - self.map.len()
    }

    /// Forgets every MAC learned on `port` (the port is going away).
    pub fn remove_port(&mut self, port: PortIdx) {
        self.retain_counted(|_, e| e.port != port);
    }

    /// Forgets every MAC of network `net`.
    pub fn remove_net(&mut self, net: NetIdx) {
        self.retain_counted(|k, _| (k >> 48) as NetIdx != net);
    }

    /// MACs learned on network `net`.
    pub fn net_count(&self, net: NetIdx) -> u32 {
        self.per_net.get(&net).copied().unwrap_or(0)
    }

    /// MACs learned on `port`.
    #[cfg(test)]
    pub fn port_count(&self, port: PortIdx) -> u32 {
        self.per_port.get(port as usize).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All live entries as (network, MAC, entry).
    pub fn entries(&self, now: u64) -> impl Iterator<Item = (NetIdx, Mac, Entry)> + '_ {
        let aging = self.aging_ms;
        self.map.iter().filter_map(move |(k, e)| {
            if now.saturating_sub(e.last_seen) > aging {
                return None;
            }
            let b = k.to_be_bytes();
            Some((
                (k >> 48) as NetIdx,
                Mac([b[2], b[3], b[4], b[5], b[6], b[7]]),
                *e,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_holds_only_its_share() {
        let mut t = MacTable::new(1000, 100);
        t.set_net_limit(3);
        for i in 0..3 {
            assert_eq!(t.learn(1, &m(i), i as PortIdx, 0), Learned::New);
        }
        assert_eq!(t.learn(1, &m(9), 0, 0), Learned::NetFull);
        // other networks still learn; a move inside the network is no new entry
        assert_eq!(t.learn(2, &m(9), 5, 0), Learned::New);
        assert!(matches!(t.learn(1, &m(0), 2, 1), Learned::Moved { .. }));
        assert_eq!(t.net_count(1), 3);
        // removing a port and aging give the share back
        t.remove_port(2);
        assert_eq!(t.net_count(1), 1);
        assert_eq!(t.learn(1, &m(9), 0, 2), Learned::New);
        t.age(5000);
        assert_eq!((t.net_count(1), t.net_count(2), t.len()), (0, 0, 0));
    }

    fn m(x: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, x])
    }

    #[test]
    fn learn_lookup_refresh() {
        let mut t = MacTable::new(1000, 100);
        assert_eq!(t.lookup(1, &m(1), 0), None);
        assert_eq!(t.learn(1, &m(1), 7, 0), Learned::New);
        assert_eq!(t.lookup(1, &m(1), 10), Some(7));
        assert_eq!(t.learn(1, &m(1), 7, 500), Learned::Refreshed);
        assert_eq!(t.lookup(1, &m(1), 1400), Some(7));
    }

    #[test]
    fn networks_are_separate_keys() {
        let mut t = MacTable::new(1000, 100);
        t.learn(1, &m(1), 7, 0);
        assert_eq!(t.lookup(2, &m(1), 0), None);
        t.learn(2, &m(1), 9, 0);
        assert_eq!(t.lookup(1, &m(1), 0), Some(7));
        assert_eq!(t.lookup(2, &m(1), 0), Some(9));
        t.remove_net(1);
        assert_eq!(t.lookup(1, &m(1), 0), None);
        assert_eq!(t.lookup(2, &m(1), 0), Some(9));
        let all: Vec<_> = t.entries(0).collect();
        assert_eq!(
            all,
            vec![(
                2,
                m(1),
                Entry {
                    port: 9,
                    last_seen: 0
                }
            )]
        );
    }

    #[test]
    fn aging() {
        let mut t = MacTable::new(1000, 100);
        t.learn(1, &m(1), 7, 0);
        t.learn(1, &m(2), 8, 900);
        // expired entries are invisible before the sweep ...
        assert_eq!(t.lookup(1, &m(1), 1001), None);
        assert_eq!(t.lookup(1, &m(2), 1001), Some(8));
        // ... and gone after it
        assert_eq!(t.age(1001), 1);
        assert_eq!(t.len(), 1);
        // re-learning an expired-but-not-swept entry counts as new
        t.learn(1, &m(2), 8, 900);
        assert_eq!(t.learn(1, &m(2), 9, 5000), Learned::New);
        assert_eq!(t.moves, 0);
    }

    #[test]
    fn moves() {
        let mut t = MacTable::new(1000, 100);
        t.learn(1, &m(1), 7, 0);
        assert_eq!(t.learn(1, &m(1), 8, 10), Learned::Moved { from: 7 });
        assert_eq!(t.lookup(1, &m(1), 10), Some(8));
        assert_eq!(t.moves, 1);
    }

    #[test]
    fn full_and_remove_port() {
        let mut t = MacTable::new(1000, 2);
        t.learn(1, &m(1), 7, 0);
        t.learn(1, &m(2), 8, 0);
        assert_eq!(t.learn(1, &m(3), 8, 0), Learned::Full);
        assert_eq!(t.full_drops, 1);
        // known entries still refresh and move when full
        assert_eq!(t.learn(1, &m(1), 7, 1), Learned::Refreshed);
        t.remove_port(8);
        assert_eq!(t.lookup(1, &m(2), 1), None);
        assert_eq!(t.learn(1, &m(3), 8, 1), Learned::New);
    }

    #[test]
    fn a_port_gets_its_share_only() {
        let mut t = MacTable::new(1000, 100);
        t.set_port_limit(2);
        assert_eq!(t.learn(0, &m(1), 1, 0), Learned::New);
        assert_eq!(t.learn(0, &m(2), 1, 0), Learned::New);
        assert_eq!(t.learn(0, &m(3), 1, 0), Learned::PortFull);
        assert!(t.lookup(0, &m(3), 0).is_none());
        assert_eq!(t.learn(0, &m(3), 2, 0), Learned::New, "another port");
        // a move into a full port is refused; out of it frees a place
        assert_eq!(t.learn(0, &m(3), 1, 0), Learned::PortFull);
        assert_eq!(t.learn(0, &m(2), 2, 0), Learned::Moved { from: 1 });
        assert_eq!(t.port_count(1), 1);
        assert_eq!(t.learn(0, &m(4), 1, 0), Learned::New);
        // aging and removal give places back
        t.age(5000);
        assert_eq!((t.port_count(1), t.port_count(2)), (0, 0));
        assert_eq!(t.learn(0, &m(5), 1, 6000), Learned::New);
        t.remove_port(1);
        assert_eq!(t.port_count(1), 0);
    }
}
