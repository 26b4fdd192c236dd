//! Persistent state: one JSON document per network under
//! `<state-dir>/networks/`, written with write + fsync + rename + fsync(dir)
//! so a crash leaves either the old or the new document, never a torn one.

use anyhow::{Context, Result};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use vswitch::Mac;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EndpointRecord {
    /// Network namespace file of the container.
    pub netns: PathBuf,
    pub ifname: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: Mac,
    pub mtu: u32,
    /// Whether this endpoint owns the container's default route.
    pub default_route: bool,
    /// Whether it owns the IPv6 default route: the container's first
    /// network with IPv6, which need not be its first network (None, in
    /// records written before: as `default_route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_route6: Option<bool>,
    /// Whether tapnet created the namespace (`tapnet run`) and deletes it.
    pub owned_netns: bool,
    /// Network-scoped DNS aliases.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Published ports (one entry per port).
    #[serde(default)]
    pub ports: Vec<super::publish::PortMap>,
    /// Docker's endpoint id, for an endpoint Docker made through the
    /// network plugin: its namespace is Docker's sandbox (empty until
    /// Join), `ifname` the TAP as tapnet named it before Docker moved and
    /// renamed it, and its lifetime is Docker's (never removed as stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<String>,
}

impl EndpointRecord {
    /// Whether the container's IPv6 default route goes through this
    /// endpoint's network.
    pub fn has_default6(&self) -> bool {
        self.ip6.is_some() && self.default_route6.unwrap_or(self.default_route)
    }
}

fn yes() -> bool {
    true
}

fn bridge() -> String {
    "bridge".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetworkRecord {
    pub name: String,
    pub id: String,
    /// The network driver (state written before drivers existed: bridge).
    #[serde(default = "bridge")]
    pub driver: String,
    /// The driver's options, as given (`-o KEY=VALUE`) and completed.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub created: u64,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Net>,
    /// The IPv6 subnet of a dual-stack network (`--ipv6`), its gateway
    /// and the range automatic addresses come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range6: Option<Ipv6Net>,
    pub mtu: u32,
    /// Pre-defined (`bridge`): cannot be removed.
    #[serde(default)]
    pub builtin: bool,
    /// Containers resolve each other's names (off on the default bridge).
    #[serde(default = "yes")]
    pub dns_names: bool,
    /// Upstream DNS servers for this network (IP or IP:PORT).
    #[serde(default)]
    pub dns: Vec<String>,
    /// No routing beyond the network (no NAT, no published ports).
    #[serde(default)]
    pub internal: bool,
    /// Container name -> endpoint.
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// `--label KEY=VALUE`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A container: a network namespace known by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub netns: PathBuf,
    /// Created by tapnet (`tapnet run`); deleted with the container.
    pub owned: bool,
    pub created: u64,
    /// Upstream DNS servers for this container (`run --dns`).
    #[serde(default)]
    pub dns: Vec<String>,
    /// `none`, `host` or `container:NAME` (no endpoints of its own); empty
    /// for a container with endpoints.
    #[serde(default)]
    pub mode: String,
    /// Unique for the daemon's life (names can change and namespaces be
    /// shared): how `run` finds the container it created.
    #[serde(default)]
    pub id: String,
    /// Written before its namespace is made and cleared once it is
    /// attached: a daemon that stopped in between finds it at start and
    /// removes it, namespace included (no debris blocks the name).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
    /// The `tapnet run` that owns it: when it is gone, so is the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<super::procs::ProcRef>,
    /// The command `run` started in it (leading its own process group):
    /// stopped when the container is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<super::procs::ProcRef>,
}

impl ContainerRecord {
    /// A namespace attached under a name (not created by tapnet unless
    /// `owned`), with nothing else known of it.
    pub fn attached(netns: PathBuf, owned: bool, id: String, created: u64) -> ContainerRecord {
        ContainerRecord {
            netns,
            owned,
            created,
            dns: vec![],
            mode: String::new(),
            id,
            creating: false,
            client: None,
            process: None,
        }
    }
}

pub struct Store {
    dir: PathBuf,
}

/// `nat.json`: the packet NAT's connections, by network name (network
/// indexes are per run).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NatTable {
    /// When it was taken (Unix ms): the time down counts as idle time.
    #[serde(default)]
    pub saved_ms: u64,
    pub connections: Vec<SavedConn>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedConn {
    pub network: String,
    #[serde(flatten)]
    pub conn: nat::ConnRaw,
}

/// A pool the Docker IPAM driver handed out, with its addresses in use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DockerPool {
    pub subnet: Ipv4Net,
    pub used: Vec<Ipv4Addr>,
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    write_replacing(dir, name, data, true)
}

/// `name` in `dir` replaced by `data` (a temp file renamed over it: a
/// reader sees the old or the new one, never a torn one); `durable` also
/// syncs the file and the directory, so it outlives a crash of the host,
/// not only of the daemon.
fn write_replacing(dir: &Path, name: &str, data: &[u8], durable: bool) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let written = f
        .write_all(data)
        .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|_| {
            fs::rename(&tmp, &path).with_context(|| format!("renaming onto {}", path.display()))
        });
    drop(f);
    if let Err(e) = written {
        // a full disk, say: no temp file left behind, the old file stands
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Renames an unreadable state file to `<name>.corrupt-<unix time>`;
/// says where it went (or why it could not be moved).
fn set_aside(p: &Path) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut to = p.as_os_str().to_owned();
    to.push(format!(".corrupt-{t}"));
    match fs::rename(p, &to) {
        Ok(()) => format!("moved to {}", Path::new(&to).display()),
        Err(e) => format!("left in place (moving it failed: {e})"),
    }
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Store> {
        let dir = state_dir.join("networks");
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        Ok(Store { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Every network document. An unreadable one is moved aside (to
    /// `NAME.json.corrupt-<unix time>`, kept for inspection, never deleted,
    /// so a new network of that name cannot overwrite it) and reported.
    pub fn load_all(&self) -> Result<(Vec<NetworkRecord>, Vec<String>)> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for e in
            fs::read_dir(&self.dir).with_context(|| format!("reading {}", self.dir.display()))?
        {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<NetworkRecord>(&b).map_err(Into::into))
            {
                Ok(r) => out.push(r),
                Err(e) => errors.push(format!("{}: {e:#}; {}", p.display(), set_aside(&p))),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((out, errors))
    }

    pub fn save(&self, rec: &NetworkRecord) -> Result<()> {
        write_atomic(
            &self.dir,
            &format!("{}.json", rec.name),
            &serde_json::to_vec_pretty(rec)?,
        )
    }

    fn containers_dir(&self) -> &Path {
        self.dir.parent().expect("networks/ has a parent")
    }

    /// The containers, and what went wrong: an unreadable file is moved
    /// aside like a network's (see [`Self::load_all`]) and the daemon
    /// starts with none (their namespaces are still where they were).
    pub fn load_containers(&self) -> Result<(BTreeMap<String, ContainerRecord>, Option<String>)> {
        let p = self.containers_dir().join("containers.json");
        match fs::read(&p) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(c) => Ok((c, None)),
                Err(e) => Ok((
                    BTreeMap::new(),
                    Some(format!("{}: {e}; {}", p.display(), set_aside(&p))),
                )),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((BTreeMap::new(), None)),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The packet NAT's connection table, as last checkpointed: what a
    /// restarted daemon puts back so NAT'd flows carry on. Written without
    /// fsync: it only has to outlive the daemon, not the host (after a
    /// reboot no container of it is left to match).
    pub fn save_nat(&self, t: &NatTable) -> Result<()> {
        write_replacing(
            self.containers_dir(),
            "nat.json",
            &serde_json::to_vec(t)?,
            false,
        )
    }

    /// The checkpointed NAT table (empty when there is none; an unreadable
    /// one is set aside like any state file).
    pub fn load_nat(&self) -> NatTable {
        self.load_or_default("nat.json")
    }

    /// This host's name in the cluster store: random, made once and kept
    /// in the state directory (`cluster-host`).
    pub fn host_id(&self) -> Result<String> {
        let p = self.containers_dir().join("cluster-host");
        if let Ok(s) = fs::read_to_string(&p) {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Ok(s.to_string());
            }
        }
        let id = format!("host-{}", &super::random_hex(12));
        write_atomic(self.containers_dir(), "cluster-host", id.as_bytes())?;
        Ok(id)
    }

    /// The daemon's unique local IPv6 prefix (a random fd??:..../48, see
    /// `ipam::random_ula48`): made once and kept (`ula-prefix`), so the
    /// default IPv6 subnets stay the same across restarts.
    pub fn ula_prefix(&self) -> Result<Ipv6Net> {
        let p = self.containers_dir().join("ula-prefix");
        if let Ok(s) = fs::read_to_string(&p) {
            if let Ok(n) = s.trim().parse::<Ipv6Net>() {
                if n.prefix_len() == 48 && n.addr() == n.network() {
                    return Ok(n);
                }
            }
        }
        let n = super::ipam::random_ula48();
        write_atomic(
            self.containers_dir(),
            "ula-prefix",
            n.to_string().as_bytes(),
        )?;
        Ok(n)
    }

    /// The bound on sealing sequence numbers kept in `seal-seq` (see
    /// `Core::keep_seal_floor`), 0 when there is none yet. A file that
    /// holds no number is an error: starting from the clock instead could
    /// repeat a nonce.
    pub fn seal_floor(&self) -> Result<u64> {
        let p = self.seal_floor_path();
        match fs::read_to_string(&p) {
            Ok(s) => s
                .trim()
                .parse()
                .with_context(|| format!("{}: not a sequence number", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn seal_floor_path(&self) -> PathBuf {
        self.containers_dir().join("seal-seq")
    }

    pub fn save_seal_floor(&self, floor: u64) -> Result<()> {
        write_atomic(
            self.containers_dir(),
            "seal-seq",
            floor.to_string().as_bytes(),
        )
    }

    /// An encrypted overlay network's keys, kept (readable by root only)
    /// so that a restart while the cluster store is away still has them.
    pub fn save_keys(&self, net: &str, ring: &super::cluster::KeyRing) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.containers_dir().join("keys");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        write_atomic(&dir, &format!("{net}.json"), &serde_json::to_vec(ring)?)
    }

    pub fn load_keys(&self, net: &str) -> Option<super::cluster::KeyRing> {
        let b = fs::read(
            self.containers_dir()
                .join("keys")
                .join(format!("{net}.json")),
        )
        .ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn remove_keys(&self, net: &str) -> Result<()> {
        let p = self
            .containers_dir()
            .join("keys")
            .join(format!("{net}.json"));
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        }
    }

    /// A global network's remote endpoints as last seen in the cluster
    /// store, so that a restart while the store is away still reaches them.
    pub fn save_peers(
        &self,
        net: &str,
        peers: &BTreeMap<String, super::cluster::RemoteEp>,
    ) -> Result<()> {
        let dir = self.containers_dir().join("peers");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // a cache, rewritten at every change: no sync
        write_replacing(
            &dir,
            &format!("{net}.json"),
            &serde_json::to_vec(peers)?,
            false,
        )
    }

    pub fn load_peers(&self, net: &str) -> BTreeMap<String, super::cluster::RemoteEp> {
        fs::read(
            self.containers_dir()
                .join("peers")
                .join(format!("{net}.json")),
        )
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
    }

    pub fn remove_peers(&self, net: &str) {
        let _ = fs::remove_file(
            self.containers_dir()
                .join("peers")
                .join(format!("{net}.json")),
        );
    }

    /// The Docker IPAM driver's pools.
    pub fn save_docker_pools(&self, p: &[DockerPool]) -> Result<()> {
        write_atomic(
            self.containers_dir(),
            "docker-ipam.json",
            &serde_json::to_vec_pretty(p)?,
        )
    }

    /// The Docker IPAM driver's pools (none when there is no file).
    pub fn load_docker_pools(&self) -> Vec<DockerPool> {
        self.load_or_default("docker-ipam.json")
    }

    /// State file `name` beside the networks (the default when there is
    /// none; an unreadable one is set aside like any state file).
    fn load_or_default<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> T {
        let path = self.containers_dir().join(name);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                super::log(format!(
                    "unreadable {} ({e}): {}",
                    path.display(),
                    set_aside(&path)
                ));
                T::default()
            }),
            Err(_) => T::default(),
        }
    }

    pub fn save_containers(&self, c: &BTreeMap<String, ContainerRecord>) -> Result<()> {
        write_atomic(
            self.containers_dir(),
            "containers.json",
            &serde_json::to_vec_pretty(c)?,
        )
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        let p = self.path(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove() {
        let d = std::env::temp_dir().join(format!("tapnet-store-test-{}", std::process::id()));
        let s = Store::open(&d).unwrap();
        let mut r = NetworkRecord {
            name: "n1".into(),
            id: "abc".into(),
            driver: "macvlan".into(),
            options: [("parent".to_string(), "eth1.10".to_string())].into(),
            created: 1,
            subnet: "10.88.0.0/24".parse().unwrap(),
            gateway: "10.88.0.1".parse().unwrap(),
            ip_range: None,
            subnet6: None,
            gateway6: None,
            ip_range6: None,
            mtu: 1500,
            builtin: false,
            dns_names: true,
            dns: vec![],
            internal: false,
            endpoints: BTreeMap::new(),
            labels: BTreeMap::new(),
        };
        r.endpoints.insert(
            "c1".into(),
            EndpointRecord {
                netns: "/run/netns/x".into(),
                ifname: "eth0".into(),
                ip: "10.88.0.2".parse().unwrap(),
                ip6: None,
                mac: Mac([2, 0x42, 10, 88, 0, 2]),
                mtu: 1500,
                default_route: true,
                default_route6: None,
                owned_netns: true,
                aliases: vec![],
                ports: vec![],
                docker: None,
            },
        );
        s.save(&r).unwrap();
        fs::write(d.join("networks/broken.json"), b"{not json").unwrap();
        let (all, errs) = s.load_all().unwrap();
        assert_eq!(all, vec![r]);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("moved to"), "{errs:?}");
        assert!(!d.join("networks/broken.json").exists(), "moved aside");
        let kept: Vec<_> = fs::read_dir(d.join("networks"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("broken.json.corrupt-")
            })
            .collect();
        assert_eq!(kept.len(), 1, "broken state is kept, aside");
        assert_eq!(s.load_all().unwrap().1.len(), 0, "and not read again");
        let mut c = BTreeMap::new();
        c.insert(
            "c1".to_string(),
            ContainerRecord {
                netns: "/run/netns/x".into(),
                owned: true,
                created: 5,
                dns: vec![],
                mode: String::new(),
                id: "c0ffee".into(),
                creating: false,
                client: None,
                process: None,
            },
        );
        s.save_containers(&c).unwrap();
        assert_eq!(s.load_containers().unwrap(), (c.clone(), None));
        // a truncated containers.json: set aside, the daemon starts with none
        let cf = d.join("containers.json");
        let full = fs::read(&cf).unwrap();
        fs::write(&cf, &full[..full.len() / 2]).unwrap();
        let (none, why) = s.load_containers().unwrap();
        assert!(none.is_empty());
        assert!(why.is_some_and(|w| w.contains("moved to")));
        assert!(!cf.exists());
        s.remove("n1").unwrap();
        assert!(s.load_all().unwrap().0.is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn old_state_loads_as_bridge() {
        // a network document written before drivers existed
        let old = r#"{"name":"n","id":"x","created":1,"subnet":"10.9.0.0/24",
            "gateway":"10.9.0.1","ip_range":null,"mtu":1500,"endpoints":{}}"#;
        let r: NetworkRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.driver, "bridge");
        assert!(r.options.is_empty());
        let c: ContainerRecord =
            serde_json::from_str(r#"{"netns":"/run/netns/x","owned":true,"created":1}"#).unwrap();
        assert_eq!(c.mode, "");
    }
}
