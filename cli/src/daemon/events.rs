//! Events (`GET /events`, `tapnet events`): what happens to networks,
//! containers and endpoints, in the JSON shape of Docker's events (`Type`,
//! `Action`, `Actor{ID, Attributes}`, `scope`, `time`, `timeNano`), sent
//! to every subscriber as it happens and kept in a bounded backlog for
//! `--since`.
//!
//! The control plane emits its own events (create, destroy, connect,
//! disconnect, start, die, publish, unpublish). What the datapath sees
//! (MACs moving between ports, spoofed frames dropped, the NAT out of
//! ports or table space) comes from its counters: while someone listens, a
//! watcher reads a snapshot once a second and turns increases into events
//! with a `count`. The datapath itself never waits on it.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Events kept for `--since`.
const BACKLOG: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub scope: String,
    /// Unix seconds and nanoseconds.
    pub time: u64,
    #[serde(rename = "timeNano")]
    pub time_nano: u128,
}

/// The event bus: a broadcast channel and the backlog.
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    backlog: Mutex<VecDeque<Arc<Event>>>,
    /// Told of every new subscriber: the datapath watcher takes its first
    /// reading at once, not up to a second later.
    pub subscribed: tokio::sync::Notify,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            backlog: Mutex::new(VecDeque::with_capacity(BACKLOG)),
            subscribed: tokio::sync::Notify::new(),
        }
    }
}

impl Events {
    /// Records and sends one event. `attrs`: (key, value) pairs.
    pub fn emit(&self, kind: &str, action: &str, id: &str, attrs: &[(&str, &str)]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let ev = Arc::new(Event {
            kind: kind.to_string(),
            action: action.to_string(),
            actor: Actor {
                id: id.to_string(),
                attributes: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            scope: "local".into(),
            time: now.as_secs(),
            time_nano: now.as_nanos(),
        });
        let mut b = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() == BACKLOG {
            b.pop_front();
        }
        b.push_back(ev.clone());
        // under the backlog's lock: a subscriber sees each event once,
        // either in its backlog copy or on its receiver
        let _ = self.tx.send(ev);
    }

    /// The backlog from `since` (unix seconds, inclusive; None: nothing
    /// past) and a receiver for what comes next.
    pub fn subscribe(
        &self,
        since: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let b = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let past = match since {
            Some(t) => b.iter().filter(|e| e.time >= t).cloned().collect(),
            None => Vec::new(),
        };
        let rx = self.tx.subscribe();
        self.subscribed.notify_one();
        (past, rx)
    }

    /// Whether anyone listens (the datapath watcher idles otherwise).
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }
}

/// What the datapath watcher compares between two snapshots.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DpMarks {
    /// port id -> (network, container, MACs moved in, spoofed drops)
    pub ports: BTreeMap<u64, (String, String, u64, u64)>,
    pub nat_ports_exhausted: u64,
    pub nat_table_full: u64,
    pub nat_quota: u64,
}

/// Events for what grew from `old` to `new` (a port first seen counts
/// from zero only if `old` is not the first reading: `first` skips it).
pub fn dp_events(ev: &Events, old: &DpMarks, new: &DpMarks, first: bool) {
    if first {
        return;
    }
    for (id, (net, ctr, moved, spoofed)) in &new.ports {
        let (m0, s0) = old.ports.get(id).map(|p| (p.2, p.3)).unwrap_or((0, 0));
        let id_s = id.to_string();
        if *moved > m0 {
            let n = (moved - m0).to_string();
            ev.emit(
                "datapath",
                "mac_move",
                &id_s,
                &[("network", net), ("container", ctr), ("count", &n)],
            );
        }
        if *spoofed > s0 {
            let n = (spoofed - s0).to_string();
            ev.emit(
                "datapath",
                "spoofed",
                &id_s,
                &[("network", net), ("container", ctr), ("count", &n)],
            );
        }
    }
    for (what, a, b) in [
        (
            "ports_exhausted",
            old.nat_ports_exhausted,
            new.nat_ports_exhausted,
        ),
        ("table_full", old.nat_table_full, new.nat_table_full),
        ("quota_exceeded", old.nat_quota, new.nat_quota),
    ] {
        if b > a {
            let n = (b - a).to_string();
            ev.emit(
                "nat",
                "exhausted",
                "nat",
                &[("reason", what), ("count", &n)],
            );
        }
    }
}

impl super::Core {
    /// The bus, for the API's stream.
    pub fn events(&self) -> Arc<Events> {
        self.events.clone()
    }

    /// The datapath counters events are made of (see [`dp_events`]).
    pub fn dp_marks(&self) -> super::ApiResult<DpMarks> {
        let snap = self
            .dp
            .snapshot_ports(super::DP_TIMEOUT)
            .map_err(super::ApiError::internal)?;
        let mut m = DpMarks::default();
        let mut owner = BTreeMap::new();
        for n in self.nets.values() {
            for (c, p) in &n.ports {
                owner.insert(*p, (n.rec.name.clone(), c.clone()));
            }
        }
        for p in &snap.ports {
            let (net, ctr) = owner.get(&p.id).cloned().unwrap_or_default();
            m.ports.insert(
                p.id,
                (net, ctr, p.counters.macs_moved_in, p.counters.drops.spoofed),
            );
        }
        if let Some(u) = &snap.uplink {
            m.nat_ports_exhausted = u.nat.ports_exhausted;
            m.nat_table_full = u.nat.table_full;
            m.nat_quota = u.nat.quota_exceeded;
        }
        if let Some(s) = &self.socknat {
            m.nat_quota += s
                .stats
                .quota_exceeded
                .load(std::sync::atomic::Ordering::Relaxed);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_events() {
        let bus = Events::default();
        let (_, mut rx) = bus.subscribe(None);
        let mut old = DpMarks::default();
        old.ports.insert(7, ("n".into(), "c1".into(), 0, 2));
        let mut new = old.clone();
        new.ports.insert(7, ("n".into(), "c1".into(), 1, 5));
        // a port that came since counts from zero
        new.ports.insert(8, ("n".into(), "c2".into(), 0, 1));
        new.nat_ports_exhausted = 3;
        new.nat_quota = 1;
        dp_events(&bus, &old, &new, true);
        assert!(rx.try_recv().is_err(), "a first reading makes no events");
        dp_events(&bus, &old, &new, false);
        let mut got = Vec::new();
        while let Ok(e) = rx.try_recv() {
            got.push(format!(
                "{} {} {} {}",
                e.kind,
                e.action,
                e.actor
                    .attributes
                    .get("container")
                    .or(e.actor.attributes.get("reason"))
                    .cloned()
                    .unwrap_or_default(),
                e.actor.attributes["count"]
            ));
        }
        assert_eq!(
            got,
            [
                "datapath mac_move c1 1",
                "datapath spoofed c1 3",
                "datapath spoofed c2 1",
                "nat exhausted ports_exhausted 3",
                "nat exhausted quota_exceeded 1",
            ]
        );
        // nothing grew: nothing said; the backlog keeps what was said
        dp_events(&bus, &new, &new, false);
        assert!(rx.try_recv().is_err());
        assert_eq!(bus.subscribe(Some(0)).0.len(), 5);
    }
}
