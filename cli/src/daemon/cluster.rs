//! The cluster store: what overlay networks share between hosts, kept in
//! etcd (v3 API) so that a cluster grows on an existing distributed store.
//!
//! Keys (all under `/tapnet/v1/`):
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `hosts/HOST` | `{"vtep": "IP:PORT"}` | the host's lease |
//! | `networks/NAME` | the network's record (driver `overlay`, VNI in its options) | until removed |
//! | `vni/VNI` | the network's name | with the network |
//! | `ipam/NAME/IP` | `HOST/CONTAINER`, the address's holder | the holder's lease |
//! | `endpoints/NAME/HOST/CONTAINER` | [`RemoteEp`] | the host's lease |
//! | `keys/NAME` | an encrypted network's [`KeyRing`] | with the network |
//!
//! A network and its VNI are created in one transaction that fails if
//! either exists; an address is taken with a transaction that fails if
//! its key exists (so two hosts never hand out the same one). Each daemon
//! holds a lease (10 s TTL, kept alive every 3 s) for its host key, its
//! endpoints and its addresses: a host that dies disappears from its
//! peers' tables when the lease expires. A session ([`run`]) grants the
//! lease, publishes this host's endpoints, reads everything under the
//! prefix and then watches it from the revision it read; when the store
//! goes away the session ends and a new one starts (and resyncs) when it
//! is back. Meanwhile the datapath keeps forwarding with what it has.

use super::server::{with_core, Shared};
use super::{log, ApiError, ApiResult};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const PREFIX: &str = "/tapnet/v1/";
/// The lease's time to live: how long a dead host stays in its peers'
/// tables.
pub const TTL_SECS: i64 = 10;
/// The most one store operation may take before the API says so.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How far ahead of the clock (or of the highest number sealed) the
/// stored bound on sealing sequence numbers is kept: a minute of ns. A
/// restart starts above it, so it is also how far ahead of the clock a
/// restarted sender's numbers may be.
pub const SEAL_FLOOR_AHEAD_NS: u64 = 60_000_000_000;
/// How often the bound is moved along (the datapath stops sealing at the
/// bound if it is not, dropping and counting).
pub const SEAL_FLOOR_REFRESH: Duration = Duration::from_secs(5);
/// A stored bound further ahead of the clock than this stops the start
/// (a broken file, or a clock far behind).
pub const SEAL_FLOOR_MAX_AHEAD_NS: u64 = 366 * 86_400 * 1_000_000_000;

/// `--cluster-store`, `--cluster-advertise`, `--data-path-port`.
#[derive(Debug, Clone)]
pub struct ClusterArgs {
    /// As given (`etcd://HOST:PORT[,HOST:PORT...]`), for messages.
    pub url: String,
    /// The etcd endpoints (`http://HOST:PORT`).
    pub endpoints: Vec<String>,
    /// This host's address on the underlay: the VTEP's.
    pub advertise: Ipv4Addr,
    /// The VXLAN UDP port (4789).
    pub port: u16,
    /// How old an encrypted network's key may get before it is rotated.
    pub key_rotation: Duration,
}

/// `etcd://HOST:PORT[,HOST:PORT...]` as etcd endpoints; one clear line
/// when it is not that.
pub fn parse_store(url: &str) -> Result<Vec<String>, String> {
    let Some(rest) = url.strip_prefix("etcd://") else {
        return Err(format!(
            "invalid cluster store {url:?}: expected etcd://HOST:PORT[,HOST:PORT...]"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let mut out = Vec::new();
    for hp in rest.split(',') {
        let ok = hp.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            return Err(format!(
                "invalid cluster store {url:?}: {hp:?} is not HOST:PORT"
            ));
        }
        out.push(format!("http://{hp}"));
    }
    Ok(out)
}

/// An endpoint as the cluster store holds it: where another host's
/// container is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteEp {
    pub host: String,
    pub container: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<std::net::Ipv6Addr>,
    pub mac: vswitch::Mac,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub vtep: SocketAddrV4,
}

/// A change under the prefix: the key (without the prefix), its new
/// value (None: deleted) and the revision it was made at.
pub type Change = (String, Option<Vec<u8>>, i64);

/// An encrypted overlay network's keys (AES-256-GCM): every host seals
/// with the primary and opens with any. Rotated by whichever host finds
/// the primary older than the rotation interval first (a transaction on
/// the key's revision), in two steps: the new key is published as `next`
/// with a switch time a little later, so every host holds it (and opens
/// with it) before any host seals with it; from that time on it is the
/// primary everywhere. The previous key stays valid until the next
/// rotation, so datagrams in flight still open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRing {
    pub keys: Vec<NetKey>,
    pub primary: u32,
    /// The key that becomes the primary at `.1` (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<(u32, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetKey {
    pub id: u32,
    /// 32 bytes, hex.
    pub key: String,
    /// Unix seconds.
    pub created: u64,
}

impl KeyRing {
    /// A ring with one fresh key `id`.
    pub fn fresh(id: u32) -> Result<NetKey, String> {
        use ring::rand::SecureRandom;
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| "no randomness for a network key".to_string())?;
        Ok(NetKey {
            id,
            key: k.iter().map(|b| format!("{b:02x}")).collect(),
            created: super::now_secs(),
        })
    }

    /// The keys as the datapath takes them (malformed ones left out).
    pub fn raw(&self) -> Vec<(u32, [u8; 32])> {
        self.keys
            .iter()
            .filter_map(|k| {
                if k.key.len() != 64 {
                    return None;
                }
                let mut out = [0u8; 32];
                for (i, o) in out.iter_mut().enumerate() {
                    *o = u8::from_str_radix(k.key.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some((k.id, out))
            })
            .collect()
    }

    /// The key hosts seal with at time `now` (unix seconds).
    pub fn sealing(&self, now: u64) -> u32 {
        match self.next {
            Some((id, at)) if now >= at => id,
            _ => self.primary,
        }
    }

    pub fn primary_key(&self, now: u64) -> Option<&NetKey> {
        let id = self.sealing(now);
        self.keys.iter().find(|k| k.id == id)
    }
}

pub struct Cluster {
    pub url: String,
    pub host: String,
    pub vtep: SocketAddrV4,
    endpoints: Vec<String>,
    /// The client, once a session has connected (connecting can wait
    /// for an unreachable store: it happens in the sessions, never at
    /// start).
    client: std::sync::Mutex<Option<Client>>,
    /// The current session's lease (0: no session).
    lease: AtomicI64,
    pub key_rotation: Duration,
}

fn key(parts: &[&str]) -> String {
    let mut k = PREFIX.to_string();
    k.push_str(&parts.join("/"));
    k
}

impl Cluster {
    /// The store's client-to-be (sessions connect, see [`run`]).
    pub fn new(args: &ClusterArgs, host: String) -> Cluster {
        Cluster {
            url: args.url.clone(),
            host,
            vtep: SocketAddrV4::new(args.advertise, args.port),
            endpoints: args.endpoints.clone(),
            client: std::sync::Mutex::new(None),
            lease: AtomicI64::new(0),
            key_rotation: args.key_rotation,
        }
    }

    /// The client, connected if it was not yet.
    async fn connect(&self) -> anyhow::Result<Client> {
        if let Some(c) = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(OP_TIMEOUT)
            .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3))
            // a member cut off from the majority answers no more
            .with_require_leader(true);
        let c = tokio::time::timeout(OP_TIMEOUT, Client::connect(&self.endpoints, Some(opts)))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 3 s"))??;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// The connected client, for the core's (blocking) operations.
    fn cached(&self) -> ApiResult<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.unavailable("not connected (retrying)"))
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: 503,
            message: format!("cluster store {}: {e}", self.url),
        }
    }

    /// Runs a store operation from the daemon's (blocking) core, bounded.
    fn block<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> ApiResult<T> {
        if self.lease.load(Ordering::Relaxed) == 0 {
            return Err(self.unavailable("not connected (retrying)"));
        }
        match tokio::runtime::Handle::current().block_on(tokio::time::timeout(OP_TIMEOUT, f)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable("no answer within 3 s")),
        }
    }

    fn leased(&self) -> PutOptions {
        PutOptions::new().with_lease(self.lease.load(Ordering::Relaxed))
    }

    /// Every overlay network the store has.
    pub fn networks(&self) -> ApiResult<Vec<super::NetworkRecord>> {
        let mut c = self.cached()?;
        let r = self.block(c.get(key(&["networks/"]), Some(GetOptions::new().with_prefix())))?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// Creates network `rec` (its VNI in its options, and the keys of an
    /// encrypted one) unless its name or its VNI exists in the store.
    pub fn create_network(
        &self,
        rec: &super::NetworkRecord,
        vni: u32,
        keys: Option<&KeyRing>,
    ) -> ApiResult<()> {
        let (nk, vk) = (
            key(&["networks", &rec.name]),
            key(&["vni", &vni.to_string()]),
        );
        let body = serde_json::to_vec(rec).map_err(|e| ApiError::internal(e.to_string()))?;
        let txn = Txn::new()
            .when([
                Compare::create_revision(nk.clone(), CompareOp::Equal, 0),
                Compare::create_revision(vk.clone(), CompareOp::Equal, 0),
            ])
            .and_then({
                let mut ops = vec![
                    TxnOp::put(nk, body, None),
                    TxnOp::put(vk, rec.name.clone(), None),
                ];
                if let Some(k) = keys {
                    let v = serde_json::to_vec(k).unwrap_or_default();
                    ops.push(TxnOp::put(key(&["keys", &rec.name]), v, None));
                }
                ops
            });
        let mut c = self.cached()?;
        if self.block(c.txn(txn))?.succeeded() {
            return Ok(());
        }
        Err(ApiError::conflict(format!(
            "network {} or VNI {vni} already exists in the cluster",
            rec.name
        )))
    }

    /// Removes network `name` (and its VNI and addresses) from the store,
    /// unless some host has an endpoint on it (one this host may not have
    /// heard of yet).
    pub fn delete_network(&self, name: &str, vni: Option<u32>) -> ApiResult<()> {
        let mut ops = vec![
            TxnOp::delete(key(&["networks", name]), None),
            TxnOp::delete(key(&["keys", name]), None),
            TxnOp::delete(
                key(&["ipam", name, ""]),
                Some(DeleteOptions::new().with_prefix()),
            ),
        ];
        if let Some(v) = vni {
            ops.push(TxnOp::delete(key(&["vni", &v.to_string()]), None));
        }
        let eps = key(&["endpoints", name, ""]);
        let txn = Txn::new()
            .when([Compare::create_revision(eps, CompareOp::Equal, 0).with_prefix()])
            .and_then(ops);
        let mut c = self.cached()?;
        if self.block(c.txn(txn))?.succeeded() {
            return Ok(());
        }
        Err(ApiError::conflict(format!(
            "network {name} has active endpoints in the cluster: disconnect them first"
        )))
    }

    /// Takes address `ip` of network `net` for `owner` (`HOST/CONTAINER`):
    /// true if it is now ours (it was free, or already ours: the lease is
    /// renewed), false if someone else holds it.
    pub fn claim(&self, net: &str, ip: std::net::IpAddr, owner: &str) -> ApiResult<bool> {
        let k = key(&["ipam", net, &ip.to_string()]);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), owner, Some(self.leased()))])
            .or_else([TxnOp::txn(
                Txn::new()
                    .when([Compare::value(k.clone(), CompareOp::Equal, owner)])
                    .and_then([TxnOp::put(k, owner, Some(self.leased()))]),
            )]);
        let mut c = self.cached()?;
        let r = self.block(c.txn(txn))?;
        if r.succeeded() {
            return Ok(true);
        }
        // the inner transaction's outcome
        Ok(r.op_responses().into_iter().any(|o| match o {
            etcd_client::TxnOpResponse::Txn(t) => t.succeeded(),
            _ => false,
        }))
    }

    /// Who holds address `ip` of network `net` (`HOST/CONTAINER`), if
    /// anyone.
    pub fn holder(&self, net: &str, ip: std::net::IpAddr) -> ApiResult<Option<String>> {
        let k = key(&["ipam", net, &ip.to_string()]);
        let mut c = self.cached()?;
        let r = self.block(c.get(k, None))?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Gives address `ip` of network `net` back, if `owner` holds it.
    pub fn release(&self, net: &str, ip: std::net::IpAddr, owner: &str) -> ApiResult<()> {
        let k = key(&["ipam", net, &ip.to_string()]);
        let txn = Txn::new()
            .when([Compare::value(k.clone(), CompareOp::Equal, owner)])
            .and_then([TxnOp::delete(k, None)]);
        let mut c = self.cached()?;
        self.block(c.txn(txn))?;
        Ok(())
    }

    /// Replaces network `net`'s keys with `ring` if they are still as
    /// read at revision `rev` (false: another host rotated first).
    pub fn rotate_keys(&self, net: &str, ring: &KeyRing, rev: i64) -> ApiResult<bool> {
        let k = key(&["keys", net]);
        let v = serde_json::to_vec(ring).map_err(|e| ApiError::internal(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(k.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(k, v, None)]);
        let mut c = self.cached()?;
        Ok(self.block(c.txn(txn))?.succeeded())
    }

    /// Publishes this host's endpoint on network `net`.
    pub fn put_endpoint(&self, net: &str, ep: &RemoteEp) -> ApiResult<()> {
        let k = key(&["endpoints", net, &self.host, &ep.container]);
        let v = serde_json::to_vec(ep).map_err(|e| ApiError::internal(e.to_string()))?;
        let mut c = self.cached()?;
        self.block(c.put(k, v, Some(self.leased())))?;
        Ok(())
    }

    pub fn delete_endpoint(&self, net: &str, container: &str) -> ApiResult<()> {
        let mut c = self.cached()?;
        self.block(c.delete(key(&["endpoints", net, &self.host, container]), None))?;
        Ok(())
    }
}

/// The cluster's sessions, one after the other, for the daemon's life.
pub async fn run(shared: Shared, cl: Arc<Cluster>) {
    let mut said = String::new();
    loop {
        let e = session(&shared, &cl).await.unwrap_err();
        cl.lease.store(0, Ordering::Relaxed);
        let msg = format!("{e:#}");
        if msg != said {
            log(format!(
                "cluster store {}: {msg}; overlay traffic keeps flowing, retrying every second",
                cl.url
            ));
            said = msg;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(shared: &Shared, cl: &Arc<Cluster>) -> anyhow::Result<()> {
    let mut c = cl.connect().await?;
    let lease = tokio::time::timeout(OP_TIMEOUT, c.lease_grant(TTL_SECS, None))
        .await??
        .id();
    let host = serde_json::json!({ "vtep": cl.vtep.to_string() }).to_string();
    tokio::time::timeout(
        OP_TIMEOUT,
        c.put(
            key(&["hosts", &cl.host]),
            host,
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await??;
    cl.lease.store(lease, Ordering::Relaxed);
    let (mut keeper, mut kept) =
        tokio::time::timeout(OP_TIMEOUT, c.lease_keep_alive(lease)).await??;
    // everything there is, then every change after it
    let snap = tokio::time::timeout(
        OP_TIMEOUT,
        c.get(PREFIX, Some(GetOptions::new().with_prefix())),
    )
    .await??;
    let rev = snap.header().map(|h| h.revision()).unwrap_or(0);
    let all: Vec<Change> = snap
        .kvs()
        .iter()
        .filter_map(|kv| {
            let k = kv.key_str().ok()?.strip_prefix(PREFIX)?.to_string();
            Some((k, Some(kv.value().to_vec()), kv.mod_revision()))
        })
        .collect();
    let mut ws = tokio::time::timeout(
        OP_TIMEOUT,
        c.watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        ),
    )
    .await??;
    let _ = with_core(shared.clone(), move |core| {
        core.cluster_resync(all);
        Ok(())
    })
    .await
    .map_err(|e| anyhow::anyhow!(e.message))?;
    log(format!(
        "cluster store {}: connected as host {} (VTEP {}, lease {lease:x})",
        cl.url, cl.host, cl.vtep
    ));
    let mut tick = tokio::time::interval(Duration::from_secs((TTL_SECS / 3) as u64));
    // encrypted networks' keys: looked at a few times per rotation period
    let mut rotate = tokio::time::interval(
        (cl.key_rotation / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
    );
    let every = cl.key_rotation;
    // the store must answer the keep-alives: a silent one ends the
    // session (the lease would expire meanwhile)
    let mut answered = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if answered.elapsed() > Duration::from_secs((TTL_SECS / 2) as u64) {
                    anyhow::bail!("the store stopped answering");
                }
                tokio::time::timeout(OP_TIMEOUT, keeper.keep_alive()).await??;
            }
            _ = rotate.tick() => {
                let _ = with_core(shared.clone(), move |core| {
                    core.rotate_keys(every);
                    Ok(())
                })
                .await;
            }
            m = kept.message() => match m? {
                Some(r) if r.ttl() > 0 => answered = tokio::time::Instant::now(),
                _ => anyhow::bail!("the lease expired"),
            },
            m = ws.message() => {
                let Some(r) = m? else {
                    anyhow::bail!("the watch ended");
                };
                if r.canceled() {
                    anyhow::bail!("the watch was cancelled ({})", r.cancel_reason());
                }
                let changes: Vec<Change> = r
                    .events()
                    .iter()
                    .filter_map(|ev| {
                        let kv = ev.kv()?;
                        let k = kv.key_str().ok()?.strip_prefix(PREFIX)?.to_string();
                        let v = match ev.event_type() {
                            EventType::Put => Some(kv.value().to_vec()),
                            EventType::Delete => None,
                        };
                        Some((k, v, kv.mod_revision()))
                    })
                    .collect();
                if !changes.is_empty() {
                    let _ = with_core(shared.clone(), move |core| {
                        core.cluster_changes(changes);
                        Ok(())
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                }
            }
        }
    }
}

/// The MTU of the interface that has `ip` in the calling thread's
/// network namespace.
pub fn underlay_mtu(ip: Ipv4Addr) -> Option<u32> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut name = None;
    let mut p = ifap;
    while !p.is_null() {
        let a = unsafe { &*p };
        if !a.ifa_addr.is_null() && unsafe { (*a.ifa_addr).sa_family } as i32 == libc::AF_INET {
            let sin = unsafe { &*(a.ifa_addr as *const libc::sockaddr_in) };
            if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == ip {
                name = Some(unsafe { std::ffi::CStr::from_ptr(a.ifa_name) }.to_owned());
                break;
            }
        }
        p = a.ifa_next;
    }
    unsafe { libc::freeifaddrs(ifap) };
    let name = name?;
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return None;
    }
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().take(libc::IFNAMSIZ - 1).enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    let r = unsafe { libc::ioctl(s, libc::SIOCGIFMTU, &mut req) };
    unsafe { libc::close(s) };
    (r == 0).then(|| unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(
            parse_store("etcd://10.0.0.5:2379").unwrap(),
            vec!["http://10.0.0.5:2379"]
        );
        assert_eq!(
            parse_store("etcd://a:1,b:2/").unwrap(),
            vec!["http://a:1", "http://b:2"]
        );
        for bad in [
            "10.0.0.5:2379",
            "etcd://",
            "etcd://host",
            "etcd://h:0",
            "etcd://h:99999",
            "consul://h:1",
        ] {
            let e = parse_store(bad).unwrap_err();
            assert!(e.starts_with("invalid cluster store"), "{bad}: {e}");
        }
    }
}
