//! The bridge driver (Docker's default): a network of TAP ports in the
//! switch with a gateway answered inside it, the embedded DNS and the
//! socket NAT behind that gateway, masquerade out of the uplink, and
//! published ports.

use super::*;
use vswitch::{Mac, NetConfig};

pub struct Bridge;

/// The datapath's view of a bridge network.
pub fn net_config(rec: &NetworkRecord) -> NetConfig {
    NetConfig {
        gateway_ip: rec.gateway,
        gateway_mac: Mac::from_ipv4(rec.gateway),
        prefix: rec.subnet.prefix_len(),
        routed: !rec.internal,
        gateway: true,
        v6: rec
            .subnet6
            .zip(rec.gateway6)
            .map(|(s, gateway)| vswitch::Net6 {
                gateway,
                prefix: s.prefix_len(),
            }),
    }
}

impl NetworkDriver for Bridge {
    fn name(&self) -> &'static str {
        "bridge"
    }

    fn check(&self, rec: &mut NetworkRecord, _others: &[&NetworkRecord]) -> ApiResult<()> {
        known_options("bridge", &rec.options, &[])
    }

    fn create(&self, p: &Plumbing, idx: NetIdx, rec: &NetworkRecord) -> Result<Made> {
        let cfg = net_config(rec);
        p.dp.add_network(idx, cfg)?;
        let gw = dnsd::GatewayAddrs {
            ip: rec.gateway,
            prefix: rec.subnet.prefix_len(),
            ip6: rec
                .subnet6
                .zip(rec.gateway6)
                .map(|(s, g)| (g, s.prefix_len())),
            mac: cfg.gateway_mac,
            mtu: rec.mtu,
        };
        p.dns_svc.send(dnsd::Event::AddNet(idx, gw));
        if let Some(s) = p.socknat {
            s.send(socknat::Event::AddNet(idx, gw));
        }
        Ok(Made::default())
    }

    fn delete(&self, p: &Plumbing, net: &Net) {
        if let Err(e) = p.dp.remove_network(net.idx) {
            super::super::log(format!("network {}: {e}", net.rec.name));
        }
        p.dns_svc.send(dnsd::Event::RemoveNet(net.idx));
        if let Some(s) = p.socknat {
            s.send(socknat::Event::RemoveNet(net.idx));
        }
    }

    fn publishes(&self, rec: &NetworkRecord) -> std::result::Result<(), String> {
        if rec.internal {
            Err(format!(
                "network {} is internal: ports cannot be published",
                rec.name
            ))
        } else {
            Ok(())
        }
    }
}
