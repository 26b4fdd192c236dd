//! Networks: create, list, inspect, remove, prune.

use super::*;

impl Core {
    pub(super) fn add_net(&mut self, mut rec: NetworkRecord) -> Result<()> {
        if rec.builtin {
            // the default bridge resolves names only when the daemon says so
            rec.dns_names = self.cfg.bridge_dns_names;
        }
        let idx = (0..=NetIdx::MAX)
            .find(|i| self.nets.values().all(|n| n.idx != *i))
            .context("too many networks")?;
        let mut pool = Pool::new(rec.subnet, Some(rec.gateway), rec.ip_range)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut pool6 = match rec.subnet6 {
            Some(s) => Some(
                ipam::Pool6::new(s, rec.gateway6, rec.ip_range6)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            None => None,
        };
        for (c, e) in rec.endpoints.iter_mut() {
            let ok = match (&mut pool6, e.ip6) {
                (Some(p), Some(a)) => p.allocate(Some(a)).is_ok(),
                (None, Some(_)) => false,
                _ => true,
            };
            if !ok {
                log(format!(
                    "network {}: endpoint {c} loses its IPv6 address {:?} (taken or outside the subnet)",
                    rec.name, e.ip6
                ));
                e.ip6 = None;
            }
        }
        rec.endpoints
            .retain(|c, e| match pool.allocate(Some(e.ip)) {
                Ok(_) => true,
                Err(err) => {
                    log(format!(
                        "network {}: dropping endpoint {c}: {err}",
                        rec.name
                    ));
                    if let (Some(p), Some(a)) = (pool6.as_mut(), e.ip6) {
                        p.release(a);
                    }
                    false
                }
            });
        let drv = driver::lookup(&rec.driver).map_err(|e| anyhow::anyhow!(e.message))?;
        let made = drv.create(&self.plumbing(), idx, &rec)?;
        let net = Net {
            idx,
            drv,
            trunk: made.trunk,
            down: made.down.clone(),
            pool,
            pool6,
            gateway_mac: Mac::from_ipv4(rec.gateway),
            ports: BTreeMap::new(),
            published: BTreeMap::new(),
            remote: BTreeMap::new(),
            held: BTreeMap::new(),
            keys: None,
            sealing: None,
            rec,
        };
        let name = net.rec.name.clone();
        if let Some(why) = &made.down {
            log(format!(
                "network {name}: {why}; it stays without its segment until a restart finds it"
            ));
        }
        self.nets.insert(name.clone(), net);
        self.dns_sync(&name);
        Ok(())
    }

    /// Brings the resolver's view of network `name` up to date (names,
    /// aliases, addresses, upstreams): called after every change.
    pub(super) fn dns_sync(&self, name: &str) {
        let Some(n) = self.nets.get(name) else {
            return;
        };
        let endpoints = n
            .rec
            .endpoints
            .iter()
            // Docker's containers ask Docker's own resolver
            .filter(|(_, e)| e.docker.is_none())
            .map(|(c, e)| dns::Endpoint {
                container: c.clone(),
                aliases: e.aliases.clone(),
                ip: e.ip,
                ip6: e.ip6,
                dns: self
                    .containers
                    .get(c)
                    .map(|r| parse_servers(&r.dns).unwrap_or_default())
                    .unwrap_or_default(),
            })
            // an overlay network's containers on the other hosts
            .chain(n.remote.values().map(|r| dns::Endpoint {
                container: r.container.clone(),
                aliases: r.aliases.clone(),
                ip: r.ip,
                ip6: r.ip6,
                dns: vec![],
            }))
            .collect();
        let ups = parse_servers(&n.rec.dns).unwrap_or_default();
        let mut reg = self
            .resolver
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner());
        reg.replace_network(n.idx, &n.rec.name, n.rec.dns_names, ups, endpoints);
    }

    pub(super) fn net(&self, name: &str) -> ApiResult<&Net> {
        self.nets
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("network {name} not found")))
    }

    pub(super) fn endpoints_of(&self, container: &str) -> Vec<(&Net, &EndpointRecord)> {
        self.nets
            .values()
            .filter_map(|n| n.rec.endpoints.get(container).map(|e| (n, e)))
            // Docker's endpoints belong to no tapnet container
            .filter(|(_, e)| e.docker.is_none())
            .collect()
    }

    // ---- networks ----

    pub fn create_network(&mut self, req: CreateNetwork) -> ApiResult<NetworkSummary> {
        if driver::lookup(req.driver.as_deref().unwrap_or("bridge"))
            .is_ok_and(|d| d.scope() == driver::Scope::Global)
        {
            check_name("network", &req.name)?;
            if self.nets.contains_key(&req.name) || PSEUDO.contains(&req.name.as_str()) {
                return Err(ApiError::conflict(format!(
                    "network with name {} already exists",
                    req.name
                )));
            }
            let s = self.create_global(req)?;
            self.net_event("create", &s.name);
            return Ok(s);
        }
        let others: Vec<&NetworkRecord> = self.nets.values().map(|n| &n.rec).collect();
        let rec = plan_network(&req, &others, self.ula6)?;
        let (drv, subnet) = (driver::lookup(&rec.driver)?, rec.subnet);
        self.store.save(&rec)?;
        if let Err(e) = self.add_net(rec) {
            let _ = self.store.remove(&req.name);
            return Err(e.into());
        }
        // a new network must be whole: no trunk, no network
        if let Some(why) = self.nets[&req.name].down.clone() {
            let _ = self.remove_network(&req.name);
            return Err(ApiError::bad_request(why));
        }
        log(format!(
            "created {} network {} ({subnet})",
            drv.name(),
            req.name
        ));
        self.net_event("create", &req.name);
        Ok(self.nets[&req.name].summary())
    }

    pub fn list_networks(&self) -> Vec<NetworkSummary> {
        let mut v: Vec<NetworkSummary> = self.nets.values().map(|n| n.summary()).collect();
        v.extend(PSEUDO.iter().map(|p| self.pseudo_summary(p)));
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// `host` and `none`: pre-defined networks without a datapath side,
    /// whose "endpoints" are the containers in that mode.
    fn pseudo_summary(&self, name: &str) -> NetworkSummary {
        NetworkSummary {
            name: name.to_string(),
            id: format!(
                "{:0>32}",
                name.bytes().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            driver: if name == NONE { "null" } else { "host" }.to_string(),
            scope: "local".to_string(),
            options: BTreeMap::new(),
            subnet: String::new(),
            gateway: String::new(),
            ip_range: None,
            ipv6: false,
            subnet6: None,
            gateway6: None,
            ip_range6: None,
            mtu: 0,
            builtin: true,
            endpoints: self.containers.values().filter(|c| c.mode == name).count(),
            labels: BTreeMap::new(),
            created: 0,
            dns_names: false,
            internal: false,
            down: None,
        }
    }

    pub fn inspect_network(&self, name: &str) -> ApiResult<NetworkInspect> {
        if PSEUDO.contains(&name) {
            return Ok(NetworkInspect {
                summary: self.pseudo_summary(name),
                created: 0,
                gateway_mac: String::new(),
                endpoints: BTreeMap::new(),
                mac_table: vec![],
                mac_aging_secs: 0,
                counters: Default::default(),
                dns: DnsInspect {
                    names: false,
                    upstreams: vec![],
                    stats: self.resolver.stats.snapshot(),
                },
                trunk: None,
                overlay: None,
                datapath_workers: Vec::new(),
                captures: 0,
            });
        }
        let n = self.net(name)?;
        // no NAT table: inspect needs ports and MACs only
        let snap = self
            .dp
            .snapshot_ports(DP_TIMEOUT)
            .map_err(ApiError::internal)?;
        let by_id: BTreeMap<u64, &vswitch::datapath::PortSnapshot> =
            snap.ports.iter().map(|p| (p.id, p)).collect();
        let mut total = vswitch::PortCounters::default();
        let mut endpoints = BTreeMap::new();
        for (c, e) in &n.rec.endpoints {
            let port = n.ports.get(c).copied();
            let ps = port.and_then(|p| by_id.get(&p));
            if let Some(ps) = ps {
                add_counters(&mut total, &ps.counters);
            }
            endpoints.insert(
                c.clone(),
                EndpointInspect {
                    info: n.endpoint_info(c, e),
                    port_id: port,
                    state: ps.map(|p| p.state),
                    counters: ps.map(|p| p.counters),
                },
            );
        }
        let name_of: BTreeMap<PortId, &String> = n.ports.iter().map(|(c, p)| (*p, c)).collect();
        let mut macs: Vec<&vswitch::datapath::MacSnapshot> =
            snap.macs.iter().filter(|m| m.net == n.idx).collect();
        // sorted here, not on the datapath thread
        macs.sort_by_key(|m| m.mac);
        let mac_table = macs
            .into_iter()
            .map(|m| MacEntry {
                mac: m.mac.to_string(),
                endpoint: name_of
                    .get(&m.port)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                port_id: m.port,
                age_ms: m.age_ms,
            })
            .collect();
        Ok(NetworkInspect {
            captures: snap.captures,
            datapath_workers: snap.workers.clone(),
            summary: n.summary(),
            created: n.rec.created,
            gateway_mac: n.gateway_mac.to_string(),
            endpoints,
            mac_table,
            mac_aging_secs: snap.aging_ms / 1000,
            counters: total,
            dns: DnsInspect {
                names: n.rec.dns_names,
                upstreams: if n.rec.dns.is_empty() {
                    self.dns_defaults.iter().map(|s| s.to_string()).collect()
                } else {
                    n.rec.dns.clone()
                },
                stats: self.resolver.stats.snapshot(),
            },
            overlay: Self::is_global(n).then(|| {
                let mut peers: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
                for r in n.remote.values() {
                    let p = peers.entry(r.host.as_str()).or_insert_with(|| {
                        serde_json::json!({ "vtep": r.vtep.to_string(), "endpoints": [] })
                    });
                    if let Some(a) = p["endpoints"].as_array_mut() {
                        a.push(serde_json::json!({
                            "container": r.container, "ip": r.ip.to_string(), "mac": r.mac.to_string()
                        }));
                    }
                }
                let tunnel = n.trunk.and_then(|id| by_id.get(&id));
                serde_json::json!({
                    "vni": driver::overlay::vni(&n.rec),
                    "encrypted": driver::overlay::encrypted(&n.rec.options),
                    "key_id": n.keys.as_ref().map(|(r, _)| r.sealing(now_secs())),
                    "host": self.cluster.as_ref().map(|c| c.host.clone()),
                    "store": self.cluster.as_ref().map(|c| c.url.clone()),
                    "vtep": snap.vtep.as_ref().map(|v| v.local.to_string()),
                    "peers": peers,
                    "tunnel_port": tunnel.map(|p| serde_json::json!({
                        "id": p.id, "state": p.state, "counters": p.counters
                    })),
                    "vtep_counters": snap.vtep.as_ref().map(|v| v.stats),
                })
            }),
            trunk: n.trunk.filter(|_| !Self::is_global(n)).map(|id| {
                let ps = by_id.get(&id);
                let parent = driver::parse_parent(&n.rec.driver, &n.rec.options).ok();
                TrunkInspect {
                    parent: n.rec.options.get("parent").cloned().unwrap_or_default(),
                    vlan: parent.and_then(|p| p.vlan),
                    port_id: Some(id),
                    state: ps.map(|p| p.state),
                    counters: ps.map(|p| p.counters),
                }
            }),
        })
    }

    pub fn remove_network(&mut self, name: &str) -> ApiResult<()> {
        if PSEUDO.contains(&name) {
            return Err(ApiError::conflict(format!(
                "{name} is a pre-defined network and cannot be removed"
            )));
        }
        let n = self.net(name)?;
        if n.rec.builtin {
            return Err(ApiError::conflict(format!(
                "{name} is a pre-defined network and cannot be removed"
            )));
        }
        if !n.rec.endpoints.is_empty() {
            let list: Vec<&str> = n.rec.endpoints.keys().map(|s| s.as_str()).collect();
            return Err(ApiError::conflict(format!(
                "network {name} has active endpoints ({}): disconnect them first",
                list.join(", ")
            )));
        }
        if Self::is_global(n) {
            return self.remove_global(name);
        }
        self.remove_local(name)
    }

    /// Removes network `name` here (it has no endpoints).
    pub(super) fn remove_local(&mut self, name: &str) -> ApiResult<()> {
        let n = self.net(name)?;
        // its id and driver go with it: kept for the event
        let (id, driver) = (n.rec.id.clone(), n.rec.driver.clone());
        let n = self.net(name)?;
        let idx = n.idx;
        self.store.remove(name)?;
        let _ = self.store.remove_keys(name);
        self.store.remove_peers(name);
        n.drv.delete(&self.plumbing(), n);
        self.resolver
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove_network(idx);
        self.nets.remove(name);
        log(format!("removed network {name}"));
        self.events.emit(
            "network",
            "destroy",
            &id,
            &[("name", name), ("type", &driver)],
        );
        Ok(())
    }

    /// Emits a `network` event for network `name` (with its id, name and
    /// driver, as Docker's network events carry); `more`: extra attributes.
    pub(super) fn net_event_with(&self, action: &str, name: &str, more: &[(&str, &str)]) {
        let Some(n) = self.nets.get(name) else {
            return;
        };
        let mut attrs = vec![("name", name), ("type", n.rec.driver.as_str())];
        attrs.extend_from_slice(more);
        self.events.emit("network", action, &n.rec.id, &attrs);
    }

    pub(super) fn net_event(&self, action: &str, name: &str) {
        self.net_event_with(action, name, &[]);
    }

    pub fn prune_networks(&mut self) -> ApiResult<Pruned> {
        let unused: Vec<String> = self
            .nets
            .values()
            .filter(|n| !n.rec.builtin && n.rec.endpoints.is_empty())
            .map(|n| n.rec.name.clone())
            .collect();
        for n in &unused {
            self.remove_network(n)?;
        }
        Ok(Pruned { removed: unused })
    }
}

/// Checks a request for a new network against the existing ones and
/// turns it into the record to store: every error is one clear line, and
/// nothing is changed (no I/O: the fuzz targets call it with any body).
pub fn plan_network(
    req: &CreateNetwork,
    others: &[&NetworkRecord],
    ula: Ipv6Net,
) -> ApiResult<NetworkRecord> {
    check_name("network", &req.name)?;
    if let Some(k) = req
        .labels
        .keys()
        .find(|k| k.trim().is_empty() || k.contains('='))
    {
        return Err(ApiError::bad_request(format!(
            "invalid label {k:?}: a label is KEY=VALUE with a non-empty KEY"
        )));
    }
    if others.iter().any(|r| r.name == req.name) || PSEUDO.contains(&req.name.as_str()) {
        return Err(ApiError::conflict(format!(
            "network with name {} already exists",
            req.name
        )));
    }
    let taken: Vec<Ipv4Net> = others.iter().map(|r| r.subnet).collect();
    let subnet = match &req.subnet {
        Some(s) => {
            let s = ipam::parse_subnet(s)?;
            if let Some(o) = others.iter().find(|r| ipam::overlaps(&r.subnet, &s)) {
                return Err(IpamError::Overlap {
                    subnet: s,
                    network: o.name.clone(),
                    other: o.subnet,
                }
                .into());
            }
            s
        }
        None => {
            if req.gateway.is_some() || req.ip_range.is_some() {
                return Err(ApiError::bad_request(
                    "--gateway and --ip-range need --subnet",
                ));
            }
            ipam::auto_subnet(&taken)?
        }
    };
    let gateway = req.gateway.as_deref().map(ipam::parse_addr).transpose()?;
    let range = req
        .ip_range
        .as_deref()
        .map(|r| {
            r.parse::<Ipv4Net>()
                .map_err(|_| IpamError::BadCidr(r.to_string()))
        })
        .transpose()?;
    let pool = Pool::new(subnet, gateway, range)?;
    let (subnet6, gateway6, ip_range6) = plan_ipv6(req, others, ula)?;
    let mtu = check_mtu(req.mtu.unwrap_or(1500))?;
    parse_servers(&req.dns)?;
    let drv = driver::lookup(req.driver.as_deref().unwrap_or("bridge"))?;
    if subnet6.is_some() && !matches!(drv.name(), "bridge" | "overlay" | "macvlan" | "ipvlan") {
        return Err(ApiError::bad_request(format!(
            "--ipv6 is not supported on {} networks yet (bridge, overlay, macvlan and ipvlan networks have it)",
            drv.name()
        )));
    }
    let id = match &req.id {
        Some(id) => {
            let ok = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "invalid network id {id:?}: 1-64 hex digits"
                )));
            }
            let id = id.to_ascii_lowercase();
            if others.iter().any(|r| r.id.eq_ignore_ascii_case(&id)) {
                return Err(ApiError::conflict(format!(
                    "network id {id} already exists"
                )));
            }
            id
        }
        None => random_hex(32),
    };
    let mut rec = NetworkRecord {
        name: req.name.clone(),
        id,
        driver: drv.name().to_string(),
        options: req.options.clone(),
        created: now_secs(),
        subnet,
        gateway: pool.gateway,
        ip_range: range,
        subnet6,
        gateway6,
        ip_range6,
        mtu,
        builtin: false,
        dns_names: req.dns_names.unwrap_or(true),
        dns: req.dns.clone(),
        internal: req.internal,
        endpoints: BTreeMap::new(),
        labels: req.labels.clone(),
    };
    drv.check(&mut rec, others)?;
    Ok(rec)
}

/// The IPv6 side of a new network: none without `--ipv6` (or an IPv6
/// subnet); else its subnet (given, or the first free /64 of the daemon's
/// unique local prefix `ula`), gateway and range, checked like IPv4's.
fn plan_ipv6(
    req: &CreateNetwork,
    others: &[&NetworkRecord],
    ula: Ipv6Net,
) -> ApiResult<(Option<Ipv6Net>, Option<std::net::Ipv6Addr>, Option<Ipv6Net>)> {
    if !req.ipv6 && req.subnet6.is_none() {
        if req.gateway6.is_some() || req.ip_range6.is_some() {
            return Err(ApiError::bad_request(
                "an IPv6 --gateway or --ip-range needs --ipv6 and an IPv6 --subnet",
            ));
        }
        return Ok((None, None, None));
    }
    let range = req
        .ip_range6
        .as_deref()
        .map(|r| {
            let n = ipam::parse_subnet6(r, false)?;
            Ok::<_, ipam::Ipam6Error>(n)
        })
        .transpose()?;
    let subnet = match &req.subnet6 {
        Some(s) => {
            let s = ipam::parse_subnet6(s, range.is_some())?;
            if let Some((o, other)) = others
                .iter()
                .find_map(|r| r.subnet6.filter(|t| ipam::overlaps6(t, &s)).map(|t| (r, t)))
            {
                return Err(ipam::Ipam6Error::Overlap {
                    subnet: s,
                    network: o.name.clone(),
                    other,
                }
                .into());
            }
            s
        }
        None => {
            if req.gateway6.is_some() || range.is_some() {
                return Err(ApiError::bad_request(
                    "an IPv6 --gateway or --ip-range needs an IPv6 --subnet",
                ));
            }
            let taken: Vec<Ipv6Net> = others.iter().filter_map(|r| r.subnet6).collect();
            ipam::auto_subnet6(ula, &taken)?
        }
    };
    let gateway = req.gateway6.as_deref().map(ipam::parse_addr6).transpose()?;
    let pool = ipam::Pool6::new(subnet, gateway, range)?;
    Ok((Some(subnet), Some(pool.gateway), range))
}
