//! Start-up: the datapath, the gateway services, and what the state
//! directory holds, re-attached.

use super::*;

impl Core {
    /// Gives the default bridge the IPv6 side the daemon's `--ipv6` and
    /// `--fixed-cidr-v6` ask for (or takes it away without `--ipv6`, as
    /// dockerd does); true when the record changed. Its containers keep
    /// their IPv6 address only while the subnet stays the same.
    fn bridge_ipv6(&self, rec: &mut NetworkRecord, others: &[NetworkRecord]) -> Result<bool> {
        if !self.cfg.bridge_ipv6 {
            if rec.subnet6.is_none() {
                return Ok(false);
            }
            log("bridge: IPv6 off (the daemon runs without --ipv6)");
            rec.subnet6 = None;
            rec.gateway6 = None;
            rec.ip_range6 = None;
            rec.endpoints.values_mut().for_each(|e| e.ip6 = None);
            return Ok(true);
        }
        let want = match (self.cfg.bridge_subnet6, rec.subnet6) {
            (Some(w), Some(cur)) if w == cur => return Ok(false),
            (None, Some(_)) => return Ok(false),
            (Some(w), _) => w,
            (None, None) => {
                let taken: Vec<Ipv6Net> = others.iter().filter_map(|r| r.subnet6).collect();
                ipam::auto_subnet6(self.ula6, &taken).map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        if let Some(o) = others
            .iter()
            .find(|r| r.subnet6.is_some_and(|t| ipam::overlaps6(&t, &want)))
        {
            anyhow::bail!(
                "--fixed-cidr-v6 {want} overlaps with network {} ({})",
                o.name,
                o.subnet6.expect("found by it")
            );
        }
        let pool = ipam::Pool6::new(want, None, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        log(format!("bridge: IPv6 {want} (gateway {})", pool.gateway));
        rec.subnet6 = Some(want);
        rec.gateway6 = Some(pool.gateway);
        rec.ip_range6 = None;
        rec.endpoints.values_mut().for_each(|e| e.ip6 = None);
        Ok(true)
    }

    /// Loads the state, starts the datapath, and re-attaches every endpoint
    /// whose namespace still exists (stale ones are removed).
    pub fn start(cfg: DaemonConfig) -> Result<Core> {
        let store = Store::open(&cfg.state_dir)?;
        let dns_defaults = if cfg.dns.is_empty() {
            dns::upstream::from_resolv_conf(std::path::Path::new("/etc/resolv.conf"))
        } else {
            parse_servers(&cfg.dns).map_err(|e| anyhow::anyhow!(e.message))?
        };
        let (dns_svc, dns_rx) = dnsd::channel();
        let sock = cfg.uplink.is_none().then(socknat::channel);
        let dp = Datapath::start(DatapathConfig {
            aging: cfg.mac_aging,
            rx_buffers: cfg.rx_buffers,
            max_macs_per_port: cfg.max_macs_per_port,
            multishot: cfg.multishot,
            busy_poll_us: cfg.busy_poll_us,
            workers: cfg.datapath_workers,
            // the socket NAT writes its answers into the TAPs itself (the
            // DNS service gained nothing from it: with an uplink the
            // datapath is busy polling when answers come)
            direct_writes: sock.is_some(),
            punt: Some(dns_svc.hook()),
            route: sock.as_ref().map(|(s, _)| s.hook()),
            on_error: Some(vswitch::datapath::ErrorHook(Arc::new(|m: &str| {
                log(format!("datapath: {m}"))
            }))),
            ..Default::default()
        })
        .context("starting the datapath")?;
        netns::set_tap_queues(dp.workers());
        let socknat = match sock {
            Some((s, rx)) => {
                socknat::start(
                    rx,
                    s.clone(),
                    dp.injector(),
                    dp.direct_writer(),
                    cfg.nat_quota,
                    std::time::Duration::from_micros(cfg.socknat_busy_poll_us as u64),
                )
                .context("starting the socket NAT")?;
                log("outbound: socket NAT through the host's own sockets (no --uplink)");
                Some(s)
            }
            None => None,
        };
        if let Some(u) = &cfg.uplink {
            let (fd, mac, mtu) = vswitch::uplink::open_packet_socket(&u.iface)
                .with_context(|| format!("opening the uplink {}", u.iface))?;
            if let Some(ip6) = u.ip6 {
                // neighbour solicitations for the uplink's IPv6 address
                let group = wire::ipv6::multicast_mac(wire::ipv6::solicited_node(ip6.addr()));
                vswitch::uplink::join_multicast(&fd, &u.iface, group).with_context(|| {
                    format!(
                        "joining the solicited-node group of {} on {}",
                        ip6.addr(),
                        u.iface
                    )
                })?;
            }
            let mut nat = nat::NatConfig::new(u.ip.addr());
            nat.external6 = u.ip6.map(|n| n.addr());
            nat.ports = u.ports;
            nat.timeouts = u.timeouts;
            nat.per_container = u.quota;
            dp.set_uplink(vswitch::UplinkConfig {
                name: u.iface.clone(),
                fd,
                mac,
                ip: u.ip.addr(),
                prefix: u.ip.prefix_len(),
                gateway: u.gateway,
                ip6: u.ip6.map(|n| (n.addr(), n.prefix_len())),
                gateway6: u.gateway6,
                mtu,
                nat,
            })?;
            log(format!(
                "uplink: {} ({mac}), masquerading to {} via {}, ports {}-{}",
                u.iface, u.ip, u.gateway, u.ports.0, u.ports.1
            ));
            if let (Some(ip6), Some(gw6)) = (u.ip6, u.gateway6) {
                log(format!(
                    "uplink: IPv6 masquerading (NAT66) to {ip6} via {gw6}"
                ));
            }
        }
        // the VXLAN endpoint and the store's client, before any overlay
        // network is restored (its driver needs the VTEP)
        let mut seal = None;
        let cluster = match &cfg.cluster {
            None => None,
            Some(a) => {
                let local = std::net::SocketAddrV4::new(a.advertise, a.port);
                let fd = vswitch::open_vtep(local).with_context(|| {
                    format!("opening the VXLAN endpoint on {local} (--cluster-advertise, --data-path-port)")
                })?;
                // sealed datagrams start above every sequence number an
                // earlier run may have used (the bound it stored), even if
                // the clock was set back since
                let now = vswitch::seal::now_ns();
                let floor = store.seal_floor()?;
                if floor > now.saturating_add(cluster::SEAL_FLOOR_MAX_AHEAD_NS) {
                    anyhow::bail!(
                        "the sealing sequence bound in {} is more than a year ahead of the clock: fix the clock, or (if the clock is right) remove the file",
                        store.seal_floor_path().display()
                    );
                }
                let floor = floor.max(now);
                let kept = floor.saturating_add(cluster::SEAL_FLOOR_AHEAD_NS);
                store
                    .save_seal_floor(kept)
                    .context("keeping the sealing sequence bound")?;
                let bounds = Arc::new(vswitch::seal::SeqBounds::new(floor, kept));
                seal = Some(bounds.clone());
                dp.set_vtep(fd, local, bounds)?;
                let host = store.host_id()?;
                let cl = cluster::Cluster::new(a, host.clone());
                log(format!(
                    "cluster: store {}, this host {host}, VXLAN endpoint {local}",
                    a.url
                ));
                Some(Arc::new(cl))
            }
        };
        let resolver = Arc::new(dns::Resolver::with_cache(cfg.dns_cache));
        tokio::runtime::Handle::current().spawn(dnsd::run(
            dns_rx,
            dns_svc.tx.clone(),
            dp.injector(),
            resolver.clone(),
            dns_defaults.clone(),
        ));
        log(format!(
            "dns: upstream servers {}",
            if dns_defaults.is_empty() {
                "none (non-local names get SERVFAIL)".to_string()
            } else {
                dns_defaults
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        if let Ok(snap) = dp.snapshot_ports(DP_TIMEOUT) {
            log(format!(
                "datapath: io_uring, {} worker(s), {} reads, {} receive buffers ({} MiB) per worker shared by all ports",
                dp.workers(),
                snap.read_mode,
                snap.rx_buffers,
                snap.rx_buffer_bytes >> 20
            ));
        }
        let (records, errors) = store.load_all()?;
        for e in errors {
            log(format!("skipping unreadable network state {e}"));
        }
        let (mut containers, unreadable) = store.load_containers()?;
        let lost_containers = unreadable.is_some();
        if let Some(why) = unreadable {
            log(format!("unreadable container state {why}"));
        }
        // containers a previous daemon stopped creating: gone, namespace too
        let half: Vec<String> = containers
            .iter()
            .filter(|(_, c)| c.creating)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &half {
            if let Some(c) = containers.remove(n) {
                if c.owned && c.netns.exists() {
                    if let Err(e) = netns::delete_netns(&c.netns) {
                        log(format!("container {n}: removing its namespace: {e:#}"));
                    }
                }
                log(format!(
                    "removed container {n}: the daemon stopped while creating it"
                ));
            }
        }
        if !half.is_empty() {
            store.save_containers(&containers)?;
        }
        let ula6 = store.ula_prefix()?;
        let mut core = Core {
            events: Default::default(),
            ula6,
            cfg,
            store,
            dp,
            resolver,
            dns_svc,
            socknat,
            dns_defaults,
            nets: BTreeMap::new(),
            containers,
            nat_mark: None,
            docker_pools: BTreeMap::new(),
            cluster,
            seal,
        };
        let mut records = records;
        if !records.iter().any(|r| r.name == BRIDGE) {
            let subnet: Ipv4Net = "172.17.0.0/16".parse().expect("valid");
            let mut rec = NetworkRecord {
                name: BRIDGE.into(),
                id: random_hex(32),
                driver: "bridge".into(),
                options: BTreeMap::new(),
                created: now_secs(),
                subnet,
                gateway: ipam::first_host(&subnet),
                ip_range: None,
                subnet6: None,
                gateway6: None,
                ip_range6: None,
                mtu: 1500,
                builtin: true,
                dns_names: false,
                dns: vec![],
                internal: false,
                endpoints: BTreeMap::new(),
                labels: BTreeMap::new(),
            };
            core.bridge_ipv6(&mut rec, &records)?;
            core.store.save(&rec)?;
            core.add_net(rec)?;
        } else if let Some(i) = records.iter().position(|r| r.name == BRIDGE) {
            let mut rec = records.remove(i);
            if core.bridge_ipv6(&mut rec, &records)? {
                core.store.save(&rec)?;
            }
            records.insert(i, rec);
        }
        for rec in records {
            let name = rec.name.clone();
            if let Err(e) = core.add_net(rec) {
                log(format!("network {name}: {e:#}"));
            }
        }
        core.load_docker_pools();
        // encrypted overlay networks' keys as last seen: the store may be
        // away (revision 0: a rotation waits for the store's own)
        let global: Vec<String> = core
            .nets
            .values()
            .filter(|n| Self::is_global(n))
            .map(|n| n.rec.name.clone())
            .collect();
        for name in global {
            // and the other hosts' endpoints as last seen (replaced at the
            // first session with the store)
            let peers = core.store.load_peers(&name);
            if let Some(n) = core.nets.get_mut(&name) {
                for r in peers.values() {
                    if n.pool.allocate(Some(r.ip)).is_ok() {
                        n.held.insert(r.ip, format!("{}/{}", r.host, r.container));
                    }
                }
                n.remote = peers;
                let n = &core.nets[&name];
                n.drv.endpoints_changed(&core.plumbing(), n);
                core.dns_sync(&name);
            }
            if let Some(ring) = core.store.load_keys(&name) {
                if let Some(n) = core.nets.get_mut(&name) {
                    n.keys = Some((ring, 0));
                }
                core.program_keys(&name);
            }
        }
        if lost_containers {
            core.rebuild_containers()?;
        }
        // NAT connections back before any container can send (a new
        // mapping would take a restored one's place), the published ports'
        // after their forwards exist (restore_endpoints)
        let saved = core.saved_nat();
        core.restore_nat(&saved, false);
        core.restore_endpoints()?;
        core.restore_nat(&saved, true);
        if core.cfg.uplink.is_some() {
            if let Err(e) = core.dp.enable_resets() {
                log(format!("NAT: {e}"));
            }
        }
        let names: Vec<String> = core.nets.keys().cloned().collect();
        for n in names {
            core.dns_sync(&n);
        }
        Ok(core)
    }

    /// The last checkpoint's NAT connections of endpoints that are still
    /// stored (same network, address and MAC), with the time since the
    /// checkpoint added to their idle time.
    fn saved_nat(&self) -> Vec<nat::ConnRaw> {
        if self.cfg.uplink.is_none() {
            return Vec::new();
        }
        let t = self.store.load_nat();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let down = now.saturating_sub(t.saved_ms);
        t.connections
            .into_iter()
            .filter_map(|s| {
                let n = self.nets.get(&s.network)?;
                n.rec
                    .endpoints
                    .values()
                    .any(|e| {
                        let own = std::net::IpAddr::V4(e.ip) == s.conn.src
                            || e.ip6.map(std::net::IpAddr::V6) == Some(s.conn.src);
                        own && e.mac.0 == s.conn.mac
                    })
                    .then_some(nat::ConnRaw {
                        net: n.idx,
                        idle_ms: s.conn.idle_ms.saturating_add(down),
                        ..s.conn
                    })
            })
            .collect()
    }

    /// Puts back the saved connections made through published ports
    /// (`forwarded`) or the others, so that NAT'd flows carry on across a
    /// restart or a crash; one that idled past its timeout meanwhile stays
    /// gone.
    fn restore_nat(&mut self, saved: &[nat::ConnRaw], forwarded: bool) {
        let conns: Vec<nat::ConnRaw> = saved
            .iter()
            .filter(|c| c.forwarded == forwarded)
            .copied()
            .collect();
        if conns.is_empty() {
            return;
        }
        let offered = conns.len();
        let kind = if forwarded { "published-port " } else { "" };
        match self.dp.restore_nat(conns, DP_TIMEOUT) {
            Ok(k) => log(format!(
                "NAT: restored {k} of {offered} {kind}connections of live endpoints"
            )),
            Err(e) => log(format!("NAT: restoring connections: {e}")),
        }
    }

    /// Writes the packet NAT's connection table to the state directory
    /// when it changed since the last time (the daemon calls this once a
    /// second): what a daemon killed now would put back when it starts.
    pub fn nat_checkpoint(&mut self) {
        if self.cfg.uplink.is_none() {
            return;
        }
        // the counters first (no connection table copied); the table only
        // when they moved
        let Some(st) = self
            .dp
            .snapshot_ports(DP_TIMEOUT)
            .ok()
            .and_then(|s| s.uplink)
            .map(|u| u.nat)
        else {
            return;
        };
        let mark = [
            st.created,
            st.expired + st.forgotten,
            st.restored,
            st.state_changes,
        ];
        if self.nat_mark == Some(mark) {
            return;
        }
        let Some(u) = self.dp.snapshot(DP_TIMEOUT).ok().and_then(|s| s.uplink) else {
            return;
        };
        let names: BTreeMap<NetIdx, &str> = self
            .nets
            .values()
            .map(|n| (n.idx, n.rec.name.as_str()))
            .collect();
        let t = store::NatTable {
            saved_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            connections: u
                .connections
                .into_iter()
                .filter_map(|c| {
                    Some(store::SavedConn {
                        network: names.get(&c.net)?.to_string(),
                        conn: c,
                    })
                })
                .collect(),
        };
        match self.store.save_nat(&t) {
            Ok(()) => self.nat_mark = Some(mark),
            Err(e) => log(format!("NAT checkpoint: {e:#}")),
        }
    }

    pub(super) fn restore_endpoints(&mut self) -> Result<()> {
        let names: Vec<String> = self.nets.keys().cloned().collect();
        for n in names {
            let eps: Vec<(String, EndpointRecord)> = self.nets[&n]
                .rec
                .endpoints
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut changed = false;
            for (c, e) in eps {
                if e.docker.is_some() && e.netns.as_os_str().is_empty() {
                    continue; // Docker has not joined it yet: no device
                }
                let alive = (e.docker.is_some() || self.containers.contains_key(&c))
                    && netns::netns_alive(&e.netns);
                let r = if alive {
                    self.attach(&n, &c, &e)
                } else {
                    Err(anyhow::anyhow!("namespace {} is gone", e.netns.display()))
                };
                match r {
                    Ok(port) => {
                        log(format!("re-attached {c} to {n} ({})", e.ip));
                        let net = self.nets.get_mut(&n).expect("exists");
                        if !e.ports.is_empty() {
                            match publish::publish(&e.netns, e.ip, &e.ports) {
                                Ok(p) => {
                                    net.published.insert(c.clone(), p);
                                }
                                Err(err) => log(format!("{c}: {err}")),
                            }
                        }
                        net.ports.insert(c, port);
                        let idx = net.idx;
                        self.uplink_forwards(idx, &e, true);
                    }
                    Err(err) if alive => {
                        // keep what is stored: the namespace is still there
                        log(format!(
                            "could not re-attach {c} to {n}: {err:#} (endpoint kept; {})",
                            if e.docker.is_some() {
                                "docker network disconnect removes it"
                            } else {
                                "disconnect it or restart the daemon to retry"
                            }
                        ));
                    }
                    Err(err) => {
                        log(format!("removing stale endpoint {c} on {n}: {err:#}"));
                        if e.docker.is_some() {
                            // Docker moved its TAP back out before its
                            // DeleteEndpoint failed (tapnet was down)
                            self.docker_let_go(&e);
                        }
                        let net = self.nets.get_mut(&n).expect("exists");
                        net.rec.endpoints.remove(&c);
                        net.pool.release(e.ip);
                        net.release6(&e);
                        let idx = net.idx;
                        if self.cfg.uplink.is_some() {
                            let _ = self.dp.forget_host(idx, e.ip.into());
                            if let Some(a) = e.ip6 {
                                let _ = self.dp.forget_host(idx, a.into());
                            }
                        }
                        changed = true;
                    }
                }
            }
            if changed {
                self.store.save(&self.nets[&n].rec)?;
            }
            let net = &self.nets[&n];
            net.drv.endpoints_changed(&self.plumbing(), net);
        }
        // containers whose namespace is gone, or attachments with no endpoint left
        let stale: Vec<String> = self
            .containers
            .iter()
            .filter(|(name, c)| {
                !netns::netns_alive(&c.netns)
                    || (!c.owned && c.mode.is_empty() && self.endpoints_of(name).is_empty())
            })
            .map(|(n, _)| n.clone())
            .collect();
        if !stale.is_empty() {
            for s in stale {
                log(format!("removing stale container {s}"));
                if let Some(c) = self.containers.remove(&s) {
                    if c.owned {
                        let _ = netns::delete_netns(&c.netns);
                    }
                    self.orphan_sharers(&s);
                }
            }
            self.store.save_containers(&self.containers)?;
        }
        Ok(())
    }

    /// After an unreadable containers.json: a container for every endpoint
    /// that names one (its namespace is in the endpoint), so live
    /// endpoints keep their addresses instead of being released as stale
    /// (which would hand them out twice).
    pub(super) fn rebuild_containers(&mut self) -> Result<()> {
        for n in self.nets.values() {
            for (name, e) in n.rec.endpoints.iter().filter(|(_, e)| e.docker.is_none()) {
                self.containers.entry(name.clone()).or_insert_with(|| {
                    ContainerRecord::attached(
                        e.netns.clone(),
                        e.owned_netns,
                        random_hex(16),
                        now_secs(),
                    )
                });
            }
        }
        log(format!(
            "rebuilt {} container(s) from the networks' endpoints",
            self.containers.len()
        ));
        self.store.save_containers(&self.containers)
    }
}
