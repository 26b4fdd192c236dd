//! Global-scope (overlay) networks: the core's side of the cluster store
//! ([`cluster`]). Each daemon keeps a copy of every overlay network in
//! its local state (so its own endpoints come back after a restart even
//! while the store is away) and learns the other hosts' endpoints from
//! the store's watch: they become the tunnel's peers, used addresses in
//! the local pool, and names in the resolver.

use super::cluster::{Change, RemoteEp};
use super::*;

impl Core {
    /// The cluster store's client, if the daemon has one.
    pub fn cluster_handle(&self) -> Option<Arc<cluster::Cluster>> {
        self.cluster.clone()
    }

    /// Moves the stored bound on sealing sequence numbers along (called
    /// every [`cluster::SEAL_FLOOR_REFRESH`]): a minute ahead of the clock
    /// or of the highest number sealed, whichever is higher; stored first,
    /// then handed to the datapath, which never seals past it. So every
    /// number a run used is below what it stored, and the next run starts
    /// above that. It never goes down. When it cannot be stored, the
    /// datapath stops sealing at the old bound (counted) rather than risk
    /// a repeated nonce.
    pub fn keep_seal_floor(&mut self) {
        let Some(bounds) = self.seal.as_ref() else {
            return;
        };
        let kept = bounds.ceiling();
        let want = vswitch::seal::now_ns()
            .max(bounds.used())
            .saturating_add(cluster::SEAL_FLOOR_AHEAD_NS);
        // (stored again once it has moved a refresh further)
        if want < kept.saturating_add(cluster::SEAL_FLOOR_REFRESH.as_nanos() as u64) {
            return;
        }
        match self.store.save_seal_floor(want) {
            Ok(()) => bounds.raise_ceiling(want),
            Err(e) => log(format!("keeping the sealing sequence bound: {e:#}")),
        }
    }

    /// Hands network `net`'s keys (as the store has them) to its tunnel.
    pub(super) fn program_keys(&mut self, net: &str) {
        let Some(n) = self.nets.get_mut(net) else {
            return;
        };
        if let Some((ring, _)) = &n.keys {
            let sealing = ring.sealing(now_secs());
            n.sealing = Some(sealing);
            if let Err(e) = self.dp.set_tunnel_keys(n.idx, ring.raw(), sealing) {
                log(format!("network {net}: {e}"));
            }
        }
    }

    /// Rotates the keys of every encrypted network whose primary key is
    /// older than `every`: a new primary, the previous one kept (so what is
    /// in flight still opens), older ones dropped. Another host may win
    /// the race: the store's transaction lets one through.
    pub fn rotate_keys(&mut self, every: std::time::Duration) {
        let Some(cl) = self.cluster.clone() else {
            return;
        };
        let now = now_secs();
        // a published next key whose time has come: sealed with from now
        let due: Vec<String> = self
            .nets
            .iter()
            .filter(|(_, n)| {
                n.keys
                    .as_ref()
                    .is_some_and(|(r, _)| Some(r.sealing(now)) != n.sealing)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for net in due {
            self.program_keys(&net);
        }
        // the grace before a new key is sealed with: every host must have
        // it by then
        let grace = (every.as_secs() / 2).clamp(1, 30);
        for n in self.nets.values() {
            let Some((ring, rev)) = &n.keys else {
                continue;
            };
            if ring.next.is_some_and(|(_, at)| now < at) {
                continue; // a rotation under way
            }
            let Some(p) = ring.primary_key(now) else {
                continue;
            };
            if now.saturating_sub(p.created) < every.as_secs() {
                continue;
            }
            let id = ring
                .keys
                .iter()
                .map(|k| k.id)
                .max()
                .unwrap_or(0)
                .wrapping_add(1);
            let Ok(k) = cluster::KeyRing::fresh(id) else {
                continue;
            };
            let next = cluster::KeyRing {
                keys: vec![p.clone(), k],
                primary: p.id,
                next: Some((id, now + grace)),
            };
            match cl.rotate_keys(&n.rec.name, &next, *rev) {
                Ok(true) => log(format!(
                    "network {}: rotated its key (now key {id})",
                    n.rec.name
                )),
                Ok(false) => {} // another host did
                Err(e) => log(format!(
                    "network {}: rotating its key: {}",
                    n.rec.name, e.message
                )),
            }
        }
    }

    /// Whether network `n` is shared through the cluster store.
    pub(super) fn is_global(n: &Net) -> bool {
        n.drv.scope() == driver::Scope::Global
    }

    fn cluster(&self) -> ApiResult<&Arc<cluster::Cluster>> {
        self.cluster.as_ref().ok_or_else(|| {
            ApiError::bad_request(
                "overlay networks need a cluster store: start the daemon with --cluster-store etcd://HOST:PORT --cluster-advertise IP",
            )
        })
    }

    /// `network create -d overlay`: a VNI and (unless given) a subnet
    /// free in the whole cluster, the MTU of the underlay less VXLAN's 50
    /// bytes; created in the store first (one transaction, so two hosts
    /// never create the same name or VNI), then here.
    pub(super) fn create_global(&mut self, mut req: CreateNetwork) -> ApiResult<NetworkSummary> {
        let cl = self.cluster()?.clone();
        let global = cl.networks()?;
        if global.iter().any(|r| r.name == req.name) {
            return Err(ApiError::conflict(format!(
                "network {} already exists in the cluster",
                req.name
            )));
        }
        let mut others: Vec<&NetworkRecord> = self.nets.values().map(|n| &n.rec).collect();
        others.extend(global.iter().filter(|g| !self.nets.contains_key(&g.name)));
        if req.subnet.is_none() && req.gateway.is_none() && req.ip_range.is_none() {
            // Docker's overlay pool: 10.0.0.0/8 in /24s
            let taken: Vec<ipnet::Ipv4Net> = others.iter().map(|r| r.subnet).collect();
            let s = (0..65536u32)
                .map(|i| {
                    ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("valid")
                })
                .find(|c| taken.iter().all(|t| !ipam::overlaps(c, t)))
                .ok_or_else(|| {
                    ApiError::conflict("no free /24 left in 10.0.0.0/8: pass --subnet")
                })?;
            req.subnet = Some(s.to_string());
        }
        let encrypted = driver::overlay::encrypted(&req.options);
        if req.mtu.is_none() {
            // VXLAN's 50 bytes, and sealing's when encrypted
            let under = cluster::underlay_mtu(*cl.vtep.ip()).unwrap_or(1500);
            let over = 50
                + if encrypted {
                    vswitch::seal::OVERHEAD as u32
                } else {
                    0
                };
            req.mtu = Some(under.saturating_sub(over).max(MIN_MTU));
        }
        let keys = if encrypted {
            let k = cluster::KeyRing::fresh(1).map_err(ApiError::internal)?;
            Some(cluster::KeyRing {
                keys: vec![k],
                primary: 1,
                next: None,
            })
        } else {
            None
        };
        let vni = match req.options.get("vni") {
            Some(v) => v.parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("invalid vni {v:?}: 1-{}", wire::vxlan::MAX_VNI))
            })?,
            None => {
                let used: Vec<u32> = others
                    .iter()
                    .filter_map(|r| driver::overlay::vni(r))
                    .collect();
                (driver::overlay::FIRST_VNI..=wire::vxlan::MAX_VNI)
                    .find(|v| !used.contains(v))
                    .ok_or_else(|| ApiError::conflict("no free VNI left"))?
            }
        };
        req.options.insert("vni".into(), vni.to_string());
        let rec = networks::plan_network(&req, &others, self.ula6)?;
        cl.create_network(&rec, vni, keys.as_ref())?;
        self.store.save(&rec)?;
        let name = rec.name.clone();
        if let Err(e) = self.add_net(rec) {
            let _ = self.store.remove(&name);
            let _ = cl.delete_network(&name, Some(vni));
            return Err(e.into());
        }
        log(format!(
            "created overlay network {name} ({}, VNI {vni}) in the cluster",
            self.nets[&name].rec.subnet
        ));
        Ok(self.nets[&name].summary())
    }

    /// `network rm` of an overlay network: not while any host has an
    /// endpoint on it; from the store first (the other hosts follow its
    /// watch), then here.
    pub(super) fn remove_global(&mut self, name: &str) -> ApiResult<()> {
        let n = self.net(name)?;
        if !n.remote.is_empty() {
            let list: Vec<&str> = n.remote.keys().map(|s| s.as_str()).collect();
            return Err(ApiError::conflict(format!(
                "network {name} has active endpoints on other hosts ({}): disconnect them first",
                list.join(", ")
            )));
        }
        if n.rec.endpoints.is_empty() {
            let vni = driver::overlay::vni(&n.rec);
            self.cluster()?.delete_network(name, vni)?;
        }
        self.remove_local(name)
    }

    /// An address for `container` on global network `net`: the lowest the
    /// local pool has free (it marks every address the cluster uses that
    /// this host knows of) that the store also lets it take.
    pub(super) fn allocate_global(
        &mut self,
        net: &str,
        want: Option<Ipv4Addr>,
        container: &str,
    ) -> ApiResult<Ipv4Addr> {
        let cl = self.cluster()?.clone();
        let owner = format!("{}/{container}", cl.host);
        let cl = cl.clone();
        for _ in 0..64 {
            let n = self.nets.get_mut(net).expect("checked");
            let ip = n.pool.allocate(want)?;
            match cl.claim(net, ip.into(), &owner) {
                Ok(true) => return Ok(ip),
                Ok(false) if want.is_some() => {
                    n.pool.release(ip);
                    return Err(ApiError::conflict(format!(
                        "address {ip} is already in use in the cluster"
                    )));
                }
                // another host's, not seen here yet: stays marked, next
                Ok(false) => {}
                Err(e) => {
                    n.pool.release(ip);
                    return Err(e);
                }
            }
        }
        Err(ApiError::conflict(format!(
            "no free address found on {net} after 64 tries"
        )))
    }

    /// An address Docker's IPAM chose for the whole cluster (`ip`, for
    /// `container` on global network `net`): claimed in the store, which
    /// decides (the local pool may still mark an address another host is
    /// releasing), and marked used here.
    pub(super) fn claim_given(
        &mut self,
        net: &str,
        ip: Ipv4Addr,
        container: &str,
    ) -> ApiResult<()> {
        let cl = self.cluster()?.clone();
        let owner = format!("{}/{container}", cl.host);
        if !cl.claim(net, ip.into(), &owner)? {
            // this host's own claim for an endpoint it no longer has (its
            // release failed while the lease lived on): Docker's IPAM,
            // which decides, has freed the address, so it is taken over
            let stale = cl.holder(net, ip.into())?.filter(|h| {
                h.strip_prefix(&format!("{}/", cl.host))
                    .is_some_and(|c| !self.nets[net].rec.endpoints.contains_key(c))
            });
            let taken = match stale {
                Some(h) => {
                    log(format!(
                        "{net}: {ip} was still claimed by {h} (gone): taken over"
                    ));
                    cl.release(net, ip.into(), &h)?;
                    cl.claim(net, ip.into(), &owner)?
                }
                None => false,
            };
            if !taken {
                return Err(ApiError::conflict(format!(
                    "address {ip} is already in use in the cluster"
                )));
            }
        }
        let n = self.nets.get_mut(net).expect("checked");
        // (already marked: another host's, on its way out)
        let _ = n.pool.allocate(Some(ip));
        Ok(())
    }

    /// Network `name` from the store when this host's watch has not
    /// brought it yet (Docker's CreateEndpoint may come first): joined as
    /// the watch would join it; nothing when the store has no such network.
    pub(super) fn fetch_global(&mut self, name: &str) {
        if self.nets.contains_key(name) {
            return;
        }
        let Some(cl) = self.cluster.clone() else {
            return;
        };
        let Ok(all) = cl.networks() else {
            return;
        };
        if let Some(v) = all
            .into_iter()
            .find(|r| r.name == name)
            .and_then(|r| serde_json::to_vec(&r).ok())
        {
            self.global_network(name, &v);
        }
    }

    /// An IPv6 address for `container` on dual-stack global network `net`
    /// (None: the network has no IPv6), claimed in the store as IPv4
    /// addresses are (see [`Self::allocate_global`]).
    pub(super) fn allocate_global6(
        &mut self,
        net: &str,
        want: Option<std::net::Ipv6Addr>,
        container: &str,
    ) -> ApiResult<Option<std::net::Ipv6Addr>> {
        if self.nets[net].pool6.is_none() {
            return Ok(None);
        }
        let cl = self.cluster()?.clone();
        let owner = format!("{}/{container}", cl.host);
        for _ in 0..64 {
            let p = self
                .nets
                .get_mut(net)
                .and_then(|n| n.pool6.as_mut())
                .expect("checked");
            let ip = p.allocate(want)?;
            match cl.claim(net, ip.into(), &owner) {
                Ok(true) => return Ok(Some(ip)),
                Ok(false) if want.is_some() => {
                    p.release(ip);
                    return Err(ApiError::conflict(format!(
                        "address {ip} is already in use in the cluster"
                    )));
                }
                // another host's: stays marked here, next
                Ok(false) => {}
                Err(e) => {
                    p.release(ip);
                    return Err(e);
                }
            }
        }
        Err(ApiError::conflict(format!(
            "no free IPv6 address found on {net} after 64 tries"
        )))
    }

    /// This host's endpoint on a global network, as the store holds it.
    fn remote_ep(&self, container: &str, e: &EndpointRecord) -> Option<RemoteEp> {
        let cl = self.cluster.as_ref()?;
        Some(RemoteEp {
            host: cl.host.clone(),
            container: container.to_string(),
            ip: e.ip,
            ip6: e.ip6,
            mac: e.mac,
            aliases: e.aliases.clone(),
            vtep: cl.vtep,
        })
    }

    /// Publishes a new endpoint of global network `net`.
    pub(super) fn publish_global(&self, net: &str, container: &str) -> ApiResult<()> {
        let n = self.net(net)?;
        let (Some(e), Ok(cl)) = (n.rec.endpoints.get(container), self.cluster()) else {
            return Ok(());
        };
        let ep = self.remote_ep(container, e).expect("a cluster");
        cl.put_endpoint(net, &ep)
    }

    /// Withdraws an endpoint of global network `net` and its address (a
    /// store that is away forgets them when this host's lease expires).
    pub(super) fn withdraw_global(&self, net: &str, container: &str, e: &EndpointRecord) {
        let Some(cl) = self.cluster.as_ref() else {
            return;
        };
        let owner = format!("{}/{container}", cl.host);
        if let Err(e) = cl
            .delete_endpoint(net, container)
            .and_then(|_| cl.release(net, e.ip.into(), &owner))
            .and_then(|_| match e.ip6 {
                Some(a) => cl.release(net, a.into(), &owner),
                None => Ok(()),
            })
        {
            log(format!("{container} on {net}: {}", e.message));
        }
    }

    /// A new session with the store: this host's endpoints published
    /// again (their addresses claimed again), then the store's whole
    /// content applied (networks created or removed here, the other hosts'
    /// endpoints).
    pub fn cluster_resync(&mut self, all: Vec<Change>) {
        for name in self.global_names() {
            let eps: Vec<(String, EndpointRecord)> = self.nets[&name]
                .rec
                .endpoints
                .iter()
                .map(|(c, e)| (c.clone(), e.clone()))
                .collect();
            let Some(cl) = self.cluster.clone() else {
                return;
            };
            for (c, e) in eps {
                let owner = format!("{}/{c}", cl.host);
                let ips = std::iter::once(std::net::IpAddr::V4(e.ip)).chain(e.ip6.map(Into::into));
                for ip in ips {
                    match cl.claim(&name, ip, &owner) {
                        Ok(true) => {}
                        Ok(false) => log(format!(
                            "{c} on {name}: address {ip} is held by another host in the cluster"
                        )),
                        Err(err) => log(format!("{c} on {name}: {}", err.message)),
                    }
                }
                if let Err(err) = self.publish_global(&name, &c) {
                    log(format!("{c} on {name}: {}", err.message));
                }
            }
        }
        // networks: the store's, and ours that it no longer has
        let in_store: BTreeSet<String> = all
            .iter()
            .filter_map(|(k, _, _)| k.strip_prefix("networks/").map(String::from))
            .collect();
        for name in self.global_names() {
            if !in_store.contains(&name) {
                self.global_gone(&name);
            }
        }
        for n in self.nets.values_mut() {
            n.remote.clear();
            // what other hosts held: as the store says now
            let held: Vec<Ipv4Addr> = std::mem::take(&mut n.held).into_keys().collect();
            for ip in held {
                if !n.rec.endpoints.values().any(|e| e.ip == ip) {
                    n.pool.release(ip);
                }
            }
        }
        self.apply_changes(all, true);
    }

    /// Changes the watch saw.
    pub fn cluster_changes(&mut self, changes: Vec<Change>) {
        self.apply_changes(changes, false);
    }

    fn global_names(&self) -> Vec<String> {
        self.nets
            .values()
            .filter(|n| Self::is_global(n))
            .map(|n| n.rec.name.clone())
            .collect()
    }

    /// Applies changes: new networks first (their endpoints and
    /// addresses may come before them: keys are sorted, and `endpoints/`
    /// sorts before `networks/`), removed networks last.
    fn apply_changes(&mut self, mut changes: Vec<Change>, resync: bool) {
        let rank = |(k, v, _): &Change| match (k.starts_with("networks/"), v.is_some()) {
            (true, true) => 0,
            (false, _) => 1,
            (true, false) => 2,
        };
        changes.sort_by_key(rank);
        let me = self
            .cluster
            .as_ref()
            .map(|c| c.host.clone())
            .unwrap_or_default();
        let mut touched = BTreeSet::new();
        for (k, v, rev) in changes {
            let parts: Vec<&str> = k.split('/').collect();
            match (parts.as_slice(), v) {
                (["keys", net], v) => {
                    let ring = v.and_then(|v| serde_json::from_slice::<cluster::KeyRing>(&v).ok());
                    let Some(n) = self.nets.get_mut(*net).filter(|n| Self::is_global(n)) else {
                        continue;
                    };
                    n.keys = ring.map(|r| (r, rev));
                    // kept here too: a restart while the store is away
                    // still has them
                    let saved = match &n.keys {
                        Some((r, _)) => self.store.save_keys(net, r),
                        None => self.store.remove_keys(net),
                    };
                    if let Err(e) = saved {
                        log(format!("network {net}: keeping its keys: {e:#}"));
                    }
                    self.program_keys(net);
                }
                (["networks", name], Some(v)) => self.global_network(name, &v),
                (["networks", name], None) => self.global_gone(name),
                (["endpoints", net, host, ctr], v) => {
                    if *host == me {
                        continue; // ours
                    }
                    let Some(n) = self.nets.get_mut(*net).filter(|n| Self::is_global(n)) else {
                        continue;
                    };
                    let key = format!("{host}/{ctr}");
                    n.remote.remove(&key);
                    if let Some(ep) = v.and_then(|v| serde_json::from_slice::<RemoteEp>(&v).ok()) {
                        if ep.host == *host {
                            n.remote.insert(key, ep);
                        }
                    }
                    touched.insert(net.to_string());
                }
                // the addresses other hosts hold: used here too
                (["ipam", net, ip], v) => {
                    // (IPv6 claims are not mirrored: allocate_global6
                    // learns of other hosts' addresses by trying them)
                    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    let Some(n) = self.nets.get_mut(*net).filter(|n| Self::is_global(n)) else {
                        continue;
                    };
                    let ours = n.rec.endpoints.values().any(|e| e.ip == ip);
                    match v.map(|v| String::from_utf8_lossy(&v).into_owned()) {
                        Some(owner) if !owner.starts_with(&format!("{me}/")) => {
                            if !ours {
                                let _ = n.pool.allocate(Some(ip));
                            }
                            n.held.insert(ip, owner);
                        }
                        Some(_) => {}
                        None => {
                            n.held.remove(&ip);
                            if !ours {
                                n.pool.release(ip);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if resync {
            touched.extend(self.global_names());
        }
        for net in touched {
            if let Some(n) = self.nets.get(&net) {
                n.drv.endpoints_changed(&self.plumbing(), n);
                self.dns_sync(&net);
                if let Err(e) = self.store.save_peers(&net, &n.remote) {
                    log(format!("network {net}: keeping its peers: {e:#}"));
                }
            }
        }
    }

    /// A network the store has: created here if this host lacks it.
    fn global_network(&mut self, name: &str, v: &[u8]) {
        if self.nets.contains_key(name) {
            return;
        }
        let rec: NetworkRecord = match serde_json::from_slice(v) {
            Ok(r) => r,
            Err(e) => {
                log(format!("cluster store: unreadable network {name}: {e}"));
                return;
            }
        };
        if rec.name != name
            || !driver::lookup(&rec.driver).is_ok_and(|d| d.scope() == driver::Scope::Global)
        {
            log(format!(
                "cluster store: ignoring network {name}: not an overlay network record"
            ));
            return;
        }
        if let Some(o) = self
            .nets
            .values()
            .find(|n| ipam::overlaps(&n.rec.subnet, &rec.subnet))
        {
            log(format!(
                "cluster store: overlay network {name} ({}) overlaps local network {} ({}): not joined",
                rec.subnet, o.rec.name, o.rec.subnet
            ));
            return;
        }
        let rec = NetworkRecord {
            endpoints: BTreeMap::new(),
            ..rec
        };
        if let Err(e) = self.store.save(&rec) {
            log(format!("overlay network {name}: {e:#}"));
            return;
        }
        match self.add_net(rec) {
            Ok(()) => log(format!(
                "joined overlay network {name} (from the cluster store)"
            )),
            Err(e) => {
                let _ = self.store.remove(name);
                log(format!("overlay network {name}: {e:#}"));
            }
        }
    }

    /// A network the store no longer has: removed here unless this host
    /// still has endpoints on it.
    fn global_gone(&mut self, name: &str) {
        let Some(n) = self.nets.get(name) else {
            return;
        };
        if !Self::is_global(n) {
            return;
        }
        if !n.rec.endpoints.is_empty() {
            log(format!(
                "overlay network {name} was removed from the cluster store, but this host still has endpoints on it: kept"
            ));
            return;
        }
        match self.remove_local(name) {
            Ok(()) => log(format!(
                "left overlay network {name} (removed from the cluster)"
            )),
            Err(e) => log(format!("overlay network {name}: {}", e.message)),
        }
    }
}
