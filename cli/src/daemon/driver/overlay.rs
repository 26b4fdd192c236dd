//! The overlay driver: one network across every host of a cluster. Each
//! host has the network in its switch, with the gateway (and the resolver
//! and NAT behind it) answered locally, and a VXLAN tunnel port that
//! carries its frames to the hosts where the other endpoints are
//! (`vswitch::datapath::tunnel`). The network's record, its VNI, the
//! addresses handed out and every host's endpoints live in the cluster
//! store (`super::super::cluster`); this driver programs one host's share.
//!
//! Options: `vni` (4096-16777215; chosen from 4096 up when absent),
//! `mtu` via `--mtu` (default: the underlay's MTU less 50, the VXLAN
//! overhead, and less 32 more when encrypted), `encrypted` (every
//! datagram sealed with AES-256-GCM, `vswitch::seal`; keys in the store,
//! rotated).

use super::*;
use vswitch::TrunkMode;

pub struct Overlay;

/// The first VNI handed out (as Docker's overlay driver does).
pub const FIRST_VNI: u32 = 4096;

/// Whether `-o encrypted` (Docker's option: no value, or `true`) asks for
/// sealed datagrams.
pub fn encrypted(opts: &std::collections::BTreeMap<String, String>) -> bool {
    opts.get("encrypted")
        .is_some_and(|v| v.is_empty() || v == "true")
}

/// The network's VNI (set by the core before the record is stored).
pub fn vni(rec: &NetworkRecord) -> Option<u32> {
    rec.options.get("vni").and_then(|v| v.parse().ok())
}

impl NetworkDriver for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn scope(&self) -> Scope {
        Scope::Global
    }

    fn check(&self, rec: &mut NetworkRecord, _others: &[&NetworkRecord]) -> ApiResult<()> {
        known_options("overlay", &rec.options, &["vni", "encrypted"])?;
        if let Some(v) = rec.options.get("encrypted") {
            if !matches!(v.as_str(), "" | "true" | "false") {
                return Err(ApiError::bad_request(format!(
                    "invalid encrypted {v:?}: use -o encrypted, or encrypted=true|false"
                )));
            }
        }
        if let Some(v) = rec.options.get("vni") {
            match v.parse::<u32>() {
                Ok(n) if (1..=wire::vxlan::MAX_VNI).contains(&n) => {}
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid vni {v:?}: 1-{}",
                        wire::vxlan::MAX_VNI
                    )))
                }
            }
        }
        Ok(())
    }

    fn create(&self, p: &Plumbing, idx: NetIdx, rec: &NetworkRecord) -> Result<Made> {
        // a bridge network on this host (gateway, resolver, NAT), and a
        // tunnel to the others
        Bridge.create(p, idx, rec)?;
        p.dp.set_trunk_policy(idx, TrunkMode::Bridge, super::trunk_hosts(rec))?;
        if !p.vtep {
            return Ok(Made {
                trunk: None,
                down: Some(
                    "this daemon has no cluster store (--cluster-store): the overlay network reaches no other host"
                        .into(),
                ),
            });
        }
        let Some(vni) = vni(rec) else {
            return Ok(Made {
                trunk: None,
                down: Some("the network has no VNI".into()),
            });
        };
        let tunnel =
            p.dp.add_tunnel(idx, vni, rec.mtu, encrypted(&rec.options))?;
        Ok(Made {
            trunk: Some(tunnel),
            down: None,
        })
    }

    fn delete(&self, p: &Plumbing, net: &Net) {
        if let Some(t) = net.trunk {
            if let Err(e) = p.dp.remove_port(t, false, super::super::DP_TIMEOUT) {
                super::super::log(format!(
                    "network {}: removing its tunnel: {e}",
                    net.rec.name
                ));
            }
        }
        Bridge.delete(p, net);
    }

    fn publishes(&self, rec: &NetworkRecord) -> std::result::Result<(), String> {
        Bridge.publishes(rec)
    }

    /// The local endpoints (the only unicast the tunnel brings in, and
    /// the MACs never sent into it) and the remote ones (where the tunnel
    /// sends their frames; broadcasts go to every host that has one).
    fn endpoints_changed(&self, p: &Plumbing, net: &Net) {
        let hosts = super::trunk_hosts(&net.rec);
        if let Err(e) = p.dp.set_trunk_policy(net.idx, TrunkMode::Bridge, hosts) {
            super::super::log(format!("network {}: {e}", net.rec.name));
        }
        let peers: Vec<_> = net
            .remote
            .values()
            .map(|r| vswitch::TunnelPeer {
                ip: r.ip,
                ip6: r.ip6,
                mac: r.mac,
                vtep: r.vtep,
            })
            .collect();
        let mut flood: Vec<_> = net.remote.values().map(|r| r.vtep).collect();
        flood.sort();
        flood.dedup();
        if let Err(e) = p.dp.set_tunnel_peers(net.idx, peers, flood) {
            super::super::log(format!("network {}: {e}", net.rec.name));
        }
    }
}
