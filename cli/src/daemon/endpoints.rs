//! Endpoints: a container on a network (connect, disconnect), the
//! device behind it, and its published ports.

use super::*;

impl Core {
    /// The endpoint's device and port, as its network's driver makes them.
    /// (An endpoint Docker made has the TAP tapnet handed to Docker, in
    /// whatever namespace Docker put it: found again, never created here.)
    pub(super) fn attach(&self, net: &str, container: &str, e: &EndpointRecord) -> Result<PortId> {
        let n = &self.nets[net];
        if e.docker.is_none() {
            return n.drv.join(&self.plumbing(), n, container, e);
        }
        let sandbox = NetnsRef(e.netns.clone());
        let alive = !e.netns.as_os_str().is_empty() && netns::netns_alive(&sandbox.0);
        self.docker_attach(
            net,
            container,
            e,
            netns::DockerTap::Find {
                sandbox: alive.then_some(&sandbox),
            },
        )
    }

    /// Undoes the steps of a change that failed half-way, last first.
    pub(super) fn undo(&mut self, list: UndoList) {
        for step in list.0.into_iter().rev() {
            match step {
                Undo::ReleaseIp { net, ip, container } => {
                    if let Some(n) = self.nets.get_mut(&net) {
                        n.pool.release(ip);
                        if Self::is_global(n) {
                            if let Some(cl) = &self.cluster {
                                let _ = cl.release(
                                    &net,
                                    ip.into(),
                                    &format!("{}/{container}", cl.host),
                                );
                            }
                        }
                    }
                }
                Undo::ReleaseIp6 { net, ip, container } => {
                    if let Some(n) = self.nets.get_mut(&net) {
                        if let Some(p) = n.pool6.as_mut() {
                            p.release(ip);
                        }
                        if Self::is_global(n) {
                            if let Some(cl) = &self.cluster {
                                let owner = format!("{}/{container}", cl.host);
                                let _ = cl.release(&net, ip.into(), &owner);
                            }
                        }
                    }
                }
                Undo::RemovePort(port) => {
                    if let Err(e) = self.dp.remove_port(port, true, DP_TIMEOUT) {
                        log(format!("undo: removing port {port}: {e}"));
                    }
                }
                Undo::Endpoint { net, container } => {
                    if let Some(n) = self.nets.get_mut(&net) {
                        n.rec.endpoints.remove(&container);
                        n.ports.remove(&container);
                        n.published.remove(&container);
                    }
                }
                Undo::UplinkForwards { net, e } => self.uplink_forwards(net, &e, false),
            }
        }
    }

    pub fn connect(&mut self, network: &str, req: Connect) -> ApiResult<EndpointInfo> {
        check_name("container", &req.container)?;
        for a in &req.aliases {
            check_name("alias", a)?;
        }
        if PSEUDO.contains(&network) {
            return Err(ApiError::bad_request(format!(
                "a container cannot be connected to the {network} network: use run --network {network}"
            )));
        }
        if let Some(c) = self
            .containers
            .get(&req.container)
            .filter(|c| !c.mode.is_empty())
        {
            return Err(ApiError::conflict(format!(
                "container {} uses network mode {}: it cannot be connected to other networks",
                req.container, c.mode
            )));
        }
        let n = self.net(network)?;
        if n.rec.endpoints.contains_key(&req.container) {
            return Err(ApiError::conflict(format!(
                "container {} is already connected to network {network}",
                req.container
            )));
        }
        let known = self.containers.get(&req.container).cloned();
        let new_container = match (&req.netns, &known) {
            (Some(ns), Some(c)) if NetnsRef::parse(ns).0 != c.netns => {
                return Err(ApiError::conflict(format!(
                    "container name {} is already in use by namespace {}",
                    req.container,
                    c.netns.display()
                )))
            }
            (_, Some(_)) => None,
            (Some(ns), None) => {
                let path = NetnsRef::parse(ns).0;
                if let Some((name, _)) = self.containers.iter().find(|(_, c)| c.netns == path) {
                    return Err(ApiError::conflict(format!(
                        "namespace {} is already attached as container {name}",
                        path.display()
                    )));
                }
                Some(ContainerRecord::attached(
                    path,
                    false,
                    random_hex(16),
                    now_secs(),
                ))
            }
            (None, None) => {
                return Err(ApiError::not_found(format!(
                    "no such container: {} (pass --netns to attach a network namespace)",
                    req.container
                )))
            }
        };
        let crec = new_container.clone().or(known).expect("one of them");
        if !netns::netns_alive(&crec.netns) {
            return Err(ApiError::not_found(format!(
                "network namespace {} does not exist",
                crec.netns.display()
            )));
        }
        if let Some(c) = new_container {
            self.containers.insert(req.container.clone(), c);
            self.store.save_containers(&self.containers)?;
        }
        let r = self.connect_inner(network, &req, &crec);
        if r.is_err() && self.endpoints_of(&req.container).is_empty() && !crec.owned {
            self.containers.remove(&req.container);
            let _ = self.store.save_containers(&self.containers);
        }
        r
    }

    pub(super) fn connect_inner(
        &mut self,
        network: &str,
        req: &Connect,
        crec: &ContainerRecord,
    ) -> ApiResult<EndpointInfo> {
        let others = self.endpoints_of(&req.container);
        let has_default = others.iter().any(|(_, e)| e.default_route);
        let has_default6 = others.iter().any(|(_, e)| e.has_default6());
        let used: Vec<String> = others.iter().map(|(_, e)| e.ifname.clone()).collect();
        let ifname =
            netns::pick_ifname(&NetnsRef(crec.netns.clone()), &used, req.ifname.as_deref())
                .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        let want = req.ip.as_deref().map(ipam::parse_addr).transpose()?;
        let want6 = req.ip6.as_deref().map(ipam::parse_addr6).transpose()?;
        let mut maps = Vec::new();
        for spec in &req.ports {
            maps.extend(publish::parse(spec).map_err(ApiError::bad_request)?);
        }
        let n = self.nets.get_mut(network).expect("checked");
        n.drv.check_join(
            n,
            &driver::EndpointRequest {
                container: &req.container,
            },
        )?;
        if !maps.is_empty() {
            n.drv.publishes(&n.rec).map_err(ApiError::bad_request)?;
        }
        if want6.is_some() && n.pool6.is_none() {
            return Err(ApiError::bad_request(format!(
                "network {network} has no IPv6 subnet: --ip6 needs a network created with --ipv6"
            )));
        }
        let mtu = check_mtu(req.mtu.unwrap_or(n.rec.mtu))?;
        let mac = req.mac.as_deref().map(parse_mac).transpose()?;
        if let Some(m) = mac {
            if let Some((c, _)) = n.rec.endpoints.iter().find(|(_, e)| e.mac == m) {
                return Err(ApiError::conflict(format!(
                    "MAC address {m} is already used by {c} on network {network}"
                )));
            }
        }
        let ip = if Self::is_global(n) {
            self.allocate_global(network, want, &req.container)?
        } else {
            n.pool.allocate(want)?
        };
        let mut undo = UndoList::default();
        undo.push(Undo::ReleaseIp {
            net: network.to_string(),
            ip,
            container: req.container.clone(),
        });
        let n = self.nets.get_mut(network).expect("checked");
        let ip6 = if Self::is_global(n) {
            self.allocate_global6(network, want6, &req.container)
        } else {
            n.pool6
                .as_mut()
                .map(|p| p.allocate(want6))
                .transpose()
                .map_err(ApiError::from)
        };
        let ip6 = match ip6 {
            Ok(a) => a,
            Err(e) => {
                self.undo(undo);
                return Err(e);
            }
        };
        if let Some(ip6) = ip6 {
            undo.push(Undo::ReleaseIp6 {
                net: network.to_string(),
                ip: ip6,
                container: req.container.clone(),
            });
        }
        // bind the host ports first: a busy one fails before anything exists
        let published = if maps.is_empty() {
            None
        } else {
            match publish::publish(&crec.netns, ip, &maps) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.undo(undo);
                    return Err(ApiError::conflict(e));
                }
            }
        };
        let rec = EndpointRecord {
            netns: crec.netns.clone(),
            ifname,
            ip,
            ip6,
            mac: mac.unwrap_or_else(|| Mac::from_ipv4(ip)),
            mtu,
            default_route: !has_default,
            default_route6: Some(ip6.is_some() && !has_default6),
            owned_netns: crec.owned,
            aliases: req.aliases.clone(),
            ports: maps,
            docker: None,
        };
        let port = match self.attach(network, &req.container, &rec) {
            Ok(p) => p,
            Err(e) => {
                self.undo(undo);
                return Err(e.into());
            }
        };
        undo.push(Undo::RemovePort(port));
        let n = self.nets.get_mut(network).expect("checked");
        n.rec.endpoints.insert(req.container.clone(), rec.clone());
        n.ports.insert(req.container.clone(), port);
        if let Some(p) = published {
            n.published.insert(req.container.clone(), p);
        }
        undo.push(Undo::Endpoint {
            net: network.to_string(),
            container: req.container.clone(),
        });
        let idx = n.idx;
        self.uplink_forwards(idx, &rec, true);
        undo.push(Undo::UplinkForwards {
            net: idx,
            e: rec.clone(),
        });
        let n = &self.nets[network];
        if let Err(e) = self.store.save(&n.rec) {
            self.undo(undo);
            return Err(e.into());
        }
        n.drv.endpoints_changed(&self.plumbing(), n);
        if Self::is_global(n) {
            // the other hosts learn of it (and route to it) from the store
            if let Err(e) = self.publish_global(network, &req.container) {
                let _ = self.disconnect_inner(network, &req.container);
                return Err(e);
            }
        }
        log(format!("connected {} to {network} as {ip}", req.container));
        let info = n.endpoint_info(&req.container, &rec);
        self.dns_sync(network);
        self.net_event_with("connect", network, &[("container", &req.container)]);
        for p in &info.ports {
            self.ctr_event(
                "publish",
                &req.container,
                &[("network", network), ("port", p)],
            );
        }
        Ok(info)
    }

    pub fn disconnect(&mut self, network: &str, container: &str) -> ApiResult<()> {
        let n = self.net(network)?;
        match n.rec.endpoints.get(container) {
            None => {
                return Err(ApiError::not_found(format!(
                    "container {container} is not connected to network {network}"
                )))
            }
            Some(e) if e.docker.is_some() => {
                return Err(ApiError::conflict(format!(
                    "endpoint {container} on {network} is Docker's: use docker network disconnect or docker rm"
                )))
            }
            Some(_) => {}
        }
        self.disconnect_inner(network, container)
    }

    /// Removes an endpoint (no check that it is tapnet's to remove).
    pub(super) fn disconnect_inner(&mut self, network: &str, container: &str) -> ApiResult<()> {
        let n = self.nets.get_mut(network).expect("checked");
        let e = n.rec.endpoints.remove(container).expect("checked");
        if let Err(err) = self.store.save(&n.rec) {
            n.rec.endpoints.insert(container.to_string(), e);
            return Err(err.into());
        }
        n.pool.release(e.ip);
        n.release6(&e);
        n.published.remove(container);
        let idx = n.idx;
        if Self::is_global(n) {
            self.withdraw_global(network, container, &e);
        }
        self.uplink_forwards(idx, &e, false);
        let n = self.nets.get_mut(network).expect("checked");
        if let Some(port) = n.ports.remove(container) {
            if let Err(err) = self.dp.remove_port(port, true, DP_TIMEOUT) {
                log(format!("removing port of {container}: {err}"));
            }
        }
        // after the port: nothing it sends can make a connection again
        if self.cfg.uplink.is_some() {
            let ips = std::iter::once(std::net::IpAddr::V4(e.ip)).chain(e.ip6.map(Into::into));
            let errs: Vec<_> = ips
                .filter_map(|ip| self.dp.forget_host(idx, ip).err())
                .collect();
            if let Some(err) = errs.first() {
                log(format!(
                    "forgetting the NAT connections of {container}: {err}"
                ));
            }
        }
        let n = &self.nets[network];
        n.drv.endpoints_changed(&self.plumbing(), n);
        log(format!("disconnected {container} from {network}"));
        for m in &e.ports {
            let p = m.to_string();
            self.ctr_event(
                "unpublish",
                container,
                &[("network", network), ("port", &p)],
            );
        }
        self.net_event_with("disconnect", network, &[("container", container)]);
        self.dns_sync(network);
        // an attached (not owned) namespace with no endpoint left is forgotten
        if self.endpoints_of(container).is_empty()
            && self
                .containers
                .get(container)
                .is_some_and(|c| !c.owned && c.mode.is_empty())
        {
            self.containers.remove(container);
            self.orphan_sharers(container);
            self.store.save_containers(&self.containers)?;
        }
        Ok(())
    }

    /// Publishes (or withdraws) an endpoint's ports on the uplink's
    /// addresses, as destination NAT in the datapath: clients keep their
    /// address. A port published on all addresses reaches IPv4 clients at
    /// the container's IPv4 address and IPv6 clients (with `--uplink-ip6`
    /// and a container with IPv6) at its IPv6 one, as Docker's ip6tables
    /// rules do; one published on the uplink's address of one family (or
    /// on `[::]`), only that family's clients.
    pub(super) fn uplink_forwards(&self, net: NetIdx, e: &EndpointRecord, add: bool) {
        use std::net::{IpAddr, Ipv6Addr};
        let Some(u) = &self.cfg.uplink else {
            return;
        };
        let (u4, u6) = (IpAddr::V4(u.ip.addr()), u.ip6.map(|n| IpAddr::V6(n.addr())));
        for m in &e.ports {
            let (v4, v6) = match m.host_ip {
                None => (true, true),
                Some(ip) if ip == u4 => (true, false),
                Some(ip) if Some(ip) == u6 || ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
                    (false, true)
                }
                Some(_) => continue,
            };
            let (ip, ip6) = (
                Some(e.ip).filter(|_| v4),
                e.ip6.filter(|_| v6 && u6.is_some()),
            );
            if ip.is_none() && ip6.is_none() {
                continue;
            }
            let proto = match m.proto {
                publish::Proto::Tcp => nat::PROTO_TCP,
                publish::Proto::Udp => nat::PROTO_UDP,
            };
            let r = if add {
                self.dp.add_forward(
                    proto,
                    m.host_port,
                    nat::Forward {
                        net,
                        ip,
                        ip6,
                        port: m.ctr_port,
                        mac: e.mac.0,
                    },
                )
            } else {
                self.dp.remove_forward(proto, m.host_port)
            };
            if let Err(err) = r {
                log(format!("uplink port {m}: {err}"));
            }
        }
    }

    /// The uplink, its NAT counters and connection table.
    pub fn nat_info(&self) -> ApiResult<serde_json::Value> {
        let snap = self.dp.snapshot(DP_TIMEOUT).map_err(ApiError::internal)?;
        let port = snap
            .uplink
            .as_ref()
            .and_then(|u| snap.ports.iter().find(|p| p.id == u.port))
            .map(|p| p.counters);
        let idx_name: BTreeMap<NetIdx, String> = self
            .nets
            .values()
            .map(|n| (n.idx, n.rec.name.clone()))
            .collect();
        let published: Vec<serde_json::Value> = self
            .nets
            .values()
            .flat_map(|n| {
                n.rec.endpoints.iter().flat_map(move |(c, e)| {
                    e.ports.iter().map(move |m| {
                        serde_json::json!({
                            "container": c,
                            "network": n.rec.name,
                            "proto": m.proto,
                            "host": m.to_string().split("->").next().unwrap_or_default(),
                            "container_addr": format!("{}:{}", e.ip, m.ctr_port),
                            "listening": n.published.contains_key(c),
                        })
                    })
                })
            })
            .collect();
        let sock = self.socknat.as_ref().map(|s| {
            let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({
                "tcp_opened": g(&s.stats.tcp_opened),
                "tcp_refused": g(&s.stats.tcp_refused),
                "udp_flows": g(&s.stats.udp_flows),
                "ping_flows": g(&s.stats.ping_flows),
                "ping_refused": g(&s.stats.ping_refused),
                "dropped": g(&s.stats.dropped),
                "reassembled": g(&s.stats.reassembled),
                "quota_exceeded": g(&s.stats.quota_exceeded),
            })
        });
        // the connection table comes as plain data: formatted here
        let uplink = snap.uplink.as_ref().map(|u| {
            let mut j = serde_json::to_value(u).unwrap_or_default();
            j["connections"] = serde_json::json!(u
                .connections
                .iter()
                .map(|c| c.info(u.ip, u.ip6))
                .collect::<Vec<_>>());
            j
        });
        let mut v = serde_json::json!({
            "socket_nat": sock,
            "uplink": uplink,
            "uplink_counters": port,
            "published": published,
        });
        if let Some(conns) = v
            .get_mut("uplink")
            .and_then(|u| u.get_mut("connections"))
            .and_then(|c| c.as_array_mut())
        {
            for c in conns {
                let net = c["net"].as_u64().unwrap_or(0) as NetIdx;
                c["network"] = serde_json::json!(idx_name.get(&net));
            }
        }
        Ok(v)
    }
}
