//! Containers: network namespaces known by name.

use super::*;

/// Whether process `pid` lives in the network namespace pinned at `ns`.
fn same_netns(pid: u32, ns: &std::path::Path) -> bool {
    let (Some(a), Some(b)) = (netns_id(&format!("/proc/{pid}/ns/net")), netns_id(ns)) else {
        return false;
    };
    a == b
}

/// A namespace file's identity (device, inode): it outlives the path.
fn netns_id(p: impl AsRef<std::path::Path>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// How long a removed container's command has to exit after SIGTERM.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How a host-mode container's namespace is stored: the daemon's own.
pub(super) const SELF_NETNS: &str = "/proc/self/ns/net";

/// A namespace path as a client can open it (the daemon's own by PID).
fn show_netns(p: &std::path::Path) -> String {
    if p.as_os_str() == SELF_NETNS {
        format!("/proc/{}/ns/net", std::process::id())
    } else {
        p.display().to_string()
    }
}

impl Core {
    pub fn create_container(&mut self, req: CreateContainer) -> ApiResult<ContainerInfo> {
        let client = req
            .client_pid
            .filter(|&p| p > 1)
            .and_then(procs::ProcRef::of);
        let info = self.create_container_inner(req)?;
        if client.is_some() {
            if let Some(c) = self.containers.get_mut(&info.name) {
                c.client = client;
            }
            self.store.save_containers(&self.containers)?;
        }
        let mode = if info.network_mode.is_empty() {
            info.endpoints
                .first()
                .map(|e| e.network.clone())
                .unwrap_or_default()
        } else {
            info.network_mode.clone()
        };
        self.ctr_event("start", &info.name, &[("network_mode", &mode)]);
        Ok(info)
    }

    /// Emits a `container` event for container `name` (its id, name and
    /// `more`).
    pub(super) fn ctr_event(&self, action: &str, name: &str, more: &[(&str, &str)]) {
        let id = self
            .containers
            .get(name)
            .map(|c| c.id.clone())
            .unwrap_or_default();
        let mut attrs = vec![("name", name)];
        attrs.extend_from_slice(more);
        self.events.emit("container", action, &id, &attrs);
    }

    /// The client watching a container: (id, the `run` process).
    pub fn client_of(&self, name: &str) -> Option<(String, procs::ProcRef)> {
        self.containers
            .get(name)
            .and_then(|c| c.client.map(|p| (c.id.clone(), p)))
    }

    /// Every container with a client (to watch after a start).
    pub fn clients(&self) -> Vec<(String, procs::ProcRef)> {
        self.containers
            .values()
            .filter_map(|c| c.client.map(|p| (c.id.clone(), p)))
            .collect()
    }

    /// Records the command `run` started in container `name`: it must be a
    /// child of the container's `run` and live in its network namespace
    /// (the daemon will signal it, so it takes no PID on trust).
    pub fn set_process(&mut self, name: &str, pid: u32) -> ApiResult<()> {
        let c = self
            .containers
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no such container: {name}")))?;
        let p = procs::ProcRef::of(pid)
            .filter(|_| pid > 1)
            .ok_or_else(|| ApiError::not_found(format!("no process {pid}")))?;
        let child_of_run = c.client.is_some_and(|cl| {
            cl.alive() && procs::parent_and_group(pid).is_some_and(|(ppid, _)| ppid == cl.pid)
        });
        if !child_of_run || !same_netns(pid, &c.netns) {
            return Err(ApiError::bad_request(format!(
                "process {pid} is not container {name}'s command (a child of its run, in its network namespace)"
            )));
        }
        let c = self.containers.get_mut(name).expect("checked");
        c.process = Some(p);
        Ok(self.store.save_containers(&self.containers)?)
    }

    /// Removes the container with id `id` if its client is gone (the
    /// watcher saw it exit, or it died while the daemon was down).
    pub fn reap(&mut self, id: &str) {
        let Some((name, c)) = self.containers.iter().find(|(_, c)| c.id == id) else {
            return;
        };
        if c.client.is_some_and(|p| p.alive()) {
            return;
        }
        let name = name.clone();
        log(format!("container {name}: its run is gone; removing it"));
        if let Err(e) = self.remove_container(&name) {
            log(format!("removing container {name}: {}", e.message));
        }
    }

    fn create_container_inner(&mut self, req: CreateContainer) -> ApiResult<ContainerInfo> {
        let name = req.name.clone().unwrap_or_else(|| random_hex(12));
        check_name("container", &name)?;
        if self.containers.contains_key(&name) {
            return Err(ApiError::conflict(format!(
                "container name {name} is already in use"
            )));
        }
        if PSEUDO.contains(&req.network.as_str()) || req.network.starts_with("container:") {
            return self.create_mode_container(name, req);
        }
        self.net(&req.network)?;
        if let Some(m) = req.mtu {
            check_mtu(m)?;
        }
        parse_servers(&req.dns)?;
        for a in &req.aliases {
            check_name("alias", a)?;
        }
        if let Some(ip) = &req.ip {
            let ip = ipam::parse_addr(ip)?;
            let n = self.net(&req.network)?;
            // check before creating anything
            n.pool.clone().allocate(Some(ip))?;
        }
        if let Some(ip6) = &req.ip6 {
            let ip6 = ipam::parse_addr6(ip6)?;
            let n = self.net(&req.network)?;
            match &n.pool6 {
                Some(p) => {
                    p.clone().allocate(Some(ip6))?;
                }
                None => {
                    return Err(ApiError::bad_request(format!(
                        "network {} has no IPv6 subnet: --ip6 needs a network created with --ipv6",
                        req.network
                    )))
                }
            }
        }
        let path = self.begin_owned(&name, &req.dns, "")?;
        let r = self.connect(
            &req.network,
            Connect {
                container: name.clone(),
                netns: None,
                ip: req.ip.clone(),
                ip6: req.ip6.clone(),
                mtu: req.mtu,
                mac: req.mac.clone(),
                aliases: req.aliases.clone(),
                ports: req.ports.clone(),
                ifname: None,
            },
        );
        if let Err(e) = r.and_then(|_| self.finish_owned(&name)) {
            if !self.endpoints_of(&name).is_empty() {
                // attached, then failed: take everything back
                let _ = self.remove_container(&name);
            }
            self.containers.remove(&name);
            let _ = self.store.save_containers(&self.containers);
            let _ = netns::delete_netns(&path);
            return Err(e);
        }
        self.container_info(&name)
    }

    /// Records container `name` as being created (saved first), then makes
    /// its namespace: a crash in between leaves a record that start-up
    /// cleans, never a namespace nobody knows. Returns the namespace.
    fn begin_owned(&mut self, name: &str, dns: &[String], mode: &str) -> ApiResult<PathBuf> {
        let path = self
            .cfg
            .netns_dir
            .join(format!("{}{name}", self.cfg.netns_prefix));
        self.containers.insert(
            name.to_string(),
            ContainerRecord {
                netns: path.clone(),
                owned: true,
                created: now_secs(),
                dns: dns.to_vec(),
                mode: mode.to_string(),
                id: random_hex(16),
                creating: true,
                client: None,
                process: None,
            },
        );
        let made = self
            .store
            .save_containers(&self.containers)
            .map_err(ApiError::from)
            .and_then(|_| {
                Ok(netns::create_netns(
                    &self.cfg.netns_dir,
                    path.file_name()
                        .and_then(|f| f.to_str())
                        .unwrap_or_default(),
                )?)
            });
        if let Err(e) = made {
            self.containers.remove(name);
            let _ = self.store.save_containers(&self.containers);
            return Err(e);
        }
        Ok(path)
    }

    /// The end of [`Self::begin_owned`]: the container is whole.
    fn finish_owned(&mut self, name: &str) -> ApiResult<()> {
        if let Some(c) = self.containers.get_mut(name) {
            c.creating = false;
        }
        Ok(self.store.save_containers(&self.containers)?)
    }

    /// A container without endpoints of its own: `none` (a namespace with
    /// only `lo`), `host` (the daemon's namespace) or `container:NAME`
    /// (NAME's namespace: same interfaces, addresses, ports and DNS).
    fn create_mode_container(
        &mut self,
        name: String,
        req: CreateContainer,
    ) -> ApiResult<ContainerInfo> {
        let mode = req.network.clone();
        let mut warnings = Vec::new();
        for (set, what) in [
            (req.ip.is_some(), "--ip"),
            (req.mac.is_some(), "--mac-address"),
            (!req.aliases.is_empty(), "--alias"),
        ] {
            if set {
                return Err(ApiError::bad_request(format!(
                    "{what} applies to a container's own endpoints: not with --network {mode}"
                )));
            }
        }
        if req.mtu.is_some() {
            return Err(ApiError::bad_request(format!(
                "--mtu applies to a container's own endpoints: not with --network {mode}"
            )));
        }
        let (netns, owned) = if mode == NONE {
            if !req.ports.is_empty() {
                warnings.push("published ports are discarded when using the none network".into());
            }
            let path = self.begin_owned(&name, &req.dns, NONE)?;
            if let Err(e) = self.finish_owned(&name) {
                self.containers.remove(&name);
                let _ = self.store.save_containers(&self.containers);
                let _ = netns::delete_netns(&path);
                return Err(e);
            }
            log(format!("created container {name} (network {mode})"));
            let mut info = self.container_info(&name)?;
            info.warnings = warnings;
            return Ok(info);
        } else if mode == HOST {
            if !req.ports.is_empty() {
                warnings.push("published ports are discarded when using host network mode".into());
            }
            // the daemon's own namespace, whatever its PID after a restart
            (PathBuf::from(SELF_NETNS), false)
        } else {
            let target = &mode["container:".len()..];
            if !req.ports.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "-p cannot be used with --network {mode}: publish the ports on {target}"
                )));
            }
            let t = self.containers.get(target).ok_or_else(|| {
                ApiError::not_found(format!("no such container: {target} (in --network {mode})"))
            })?;
            if !netns::netns_alive(&t.netns) {
                return Err(ApiError::not_found(format!(
                    "container {target}'s network namespace is gone"
                )));
            }
            (t.netns.clone(), false)
        };
        self.containers.insert(
            name.clone(),
            ContainerRecord {
                netns: netns.clone(),
                owned,
                created: now_secs(),
                dns: req.dns.clone(),
                mode: mode.clone(),
                id: random_hex(16),
                creating: false,
                client: None,
                process: None,
            },
        );
        if let Err(e) = self.store.save_containers(&self.containers) {
            self.containers.remove(&name);
            if owned {
                let _ = netns::delete_netns(&netns);
            }
            return Err(e.into());
        }
        log(format!("created container {name} (network {mode})"));
        let mut info = self.container_info(&name)?;
        info.warnings = warnings;
        Ok(info)
    }

    pub(super) fn container_info(&self, name: &str) -> ApiResult<ContainerInfo> {
        let c = self
            .containers
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no such container: {name}")))?;
        if let Some(target) = c.mode.strip_prefix("container:") {
            // the namespace's DNS configuration is its owner's
            if let Some(t) = (target != name)
                .then(|| self.container_info(target).ok())
                .flatten()
            {
                return Ok(ContainerInfo {
                    name: name.to_string(),
                    id: c.id.clone(),
                    netns: show_netns(&c.netns),
                    network_mode: c.mode.clone(),
                    owned: false,
                    endpoints: vec![],
                    nameservers: t.nameservers,
                    host_netns: t.host_netns,
                    warnings: vec![],
                    created: c.created,
                });
            }
        }
        let eps = self.endpoints_of(name);
        // resolv.conf: the gateway's resolver when the first network
        // resolves names (it forwards the rest), else the upstream servers
        // themselves, minus loopback ones the container cannot reach
        let nameservers = match eps.first() {
            Some((n, e)) if n.drv.resolver(&n.rec).is_some() => {
                let mut v = vec![n.drv.resolver(&n.rec).expect("checked").to_string()];
                // a dual-stack endpoint asks over IPv6 too (the gateway's
                // IPv6 address answers the same names)
                if let (Some(g6), Some(_)) = (n.rec.gateway6, e.ip6) {
                    v.push(g6.to_string());
                }
                v
            }
            first => {
                let mut s = parse_servers(&c.dns).unwrap_or_default();
                if s.is_empty() {
                    s = first
                        .map(|(n, _)| parse_servers(&n.rec.dns).unwrap_or_default())
                        .unwrap_or_default();
                }
                if s.is_empty() {
                    s = self.dns_defaults.clone();
                }
                s.iter()
                    .filter(|a| !a.ip().is_loopback() && a.port() == 53)
                    .map(|a| a.ip().to_string())
                    .collect()
            }
        };
        Ok(ContainerInfo {
            name: name.to_string(),
            id: c.id.clone(),
            netns: show_netns(&c.netns),
            host_netns: c.netns.as_os_str() == SELF_NETNS,
            owned: c.owned,
            network_mode: c.mode.clone(),
            endpoints: eps
                .into_iter()
                .map(|(n, e)| n.endpoint_info(name, e))
                .collect(),
            // a host container keeps the host's resolv.conf
            nameservers: if c.mode == HOST { vec![] } else { nameservers },
            warnings: vec![],
            created: c.created,
        })
    }

    /// Renames a container everywhere; DNS answers the new name at once.
    pub fn rename_container(&mut self, old: &str, new: &str) -> ApiResult<()> {
        check_name("container", new)?;
        if !self.containers.contains_key(old) {
            return Err(ApiError::not_found(format!("no such container: {old}")));
        }
        if self.containers.contains_key(new)
            || self
                .nets
                .values()
                .any(|n| n.rec.endpoints.contains_key(new))
        {
            return Err(ApiError::conflict(format!(
                "container name {new} is already in use"
            )));
        }
        let nets: Vec<String> = self
            .endpoints_of(old)
            .iter()
            .map(|(n, _)| n.rec.name.clone())
            .collect();
        let before = self.containers.clone();
        let c = self.containers.remove(old).expect("checked");
        self.containers.insert(new.to_string(), c);
        // containers sharing its namespace follow the new name
        let old_mode = format!("container:{old}");
        for c in self.containers.values_mut() {
            if c.mode == old_mode {
                c.mode = format!("container:{new}");
            }
        }
        if let Err(e) = self.store.save_containers(&self.containers) {
            self.containers = before;
            return Err(e.into());
        }
        for name in &nets {
            let n = self.nets.get_mut(name).expect("listed");
            if let Some(e) = n.rec.endpoints.remove(old) {
                n.rec.endpoints.insert(new.to_string(), e);
            }
            if let Some(p) = n.ports.remove(old) {
                n.ports.insert(new.to_string(), p);
            }
            if let Some(p) = n.published.remove(old) {
                n.published.insert(new.to_string(), p);
            }
            if let Err(e) = self.store.save(&n.rec) {
                log(format!("saving network {name} after rename: {e:#}"));
            }
            self.dns_sync(name);
        }
        log(format!("renamed container {old} to {new}"));
        Ok(())
    }

    pub fn list_containers(&self) -> Vec<ContainerInfo> {
        self.containers
            .keys()
            .filter_map(|n| self.container_info(n).ok())
            .collect()
    }

    pub fn remove_container(&mut self, name: &str) -> ApiResult<()> {
        let c = self
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no such container: {name}")))?;

        // its command is stopped (SIGTERM, then SIGKILL), as docker rm -f
        // does, on a thread of its own: the grace period must not hold the
        // daemon; the namespace is known by identity, as its path goes now
        if let (Some(p), Some(ns)) = (c.process, netns_id(&c.netns)) {
            let who = name.to_string();
            std::thread::spawn(move || {
                let in_ns = |pid: u32| netns_id(format!("/proc/{pid}/ns/net")) == Some(ns);
                if procs::stop(&p, STOP_GRACE, in_ns) {
                    log(format!(
                        "container {who}: stopped its command (pid {})",
                        p.pid
                    ));
                }
            });
        }
        let nets: Vec<String> = self
            .endpoints_of(name)
            .iter()
            .map(|(n, _)| n.rec.name.clone())
            .collect();
        for n in nets {
            self.disconnect(&n, name)?;
        }
        if c.owned {
            netns::delete_netns(&c.netns)?;
        }
        if self.containers.remove(name).is_some() {
            self.orphan_sharers(name);
            self.store.save_containers(&self.containers)?;
        }
        log(format!("removed container {name}"));
        // a container with a command (a run's) saw it exit or stopped it,
        // as docker rm -f: die, then destroy
        if c.process.is_some() || c.client.is_some() {
            self.events
                .emit("container", "die", &c.id, &[("name", name)]);
        }
        self.events
            .emit("container", "destroy", &c.id, &[("name", name)]);
        Ok(())
    }

    /// Containers that shared `name`'s namespace keep running in it (with
    /// only `lo` left, as in Docker) but lose its path: a new container
    /// may be given the same one.
    pub(super) fn orphan_sharers(&mut self, name: &str) {
        let mode = format!("container:{name}");
        for (n, c) in self.containers.iter_mut().filter(|(_, c)| c.mode == mode) {
            log(format!(
                "container {n}: {name} is gone; its namespace keeps only lo"
            ));
            c.netns = PathBuf::new();
        }
    }

    /// Stops the datapath; TAP devices stay (persistent) for the next start.
    pub fn shutdown(self) {
        self.dp.shutdown();
    }
}
