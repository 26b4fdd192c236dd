//! Network namespace set-up: creating and deleting named namespaces (as
//! `ip netns add/del` do, without shelling out) and configuring a
//! container's interface over rtnetlink from inside its namespace.

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use vswitch::{in_netns, open_tap, Mac, NetnsRef, TapOptions};

/// A TAP's fds, one per queue (the first always there): one per datapath
/// worker.
pub type Queues = Vec<OwnedFd>;

/// Queues each container TAP is opened with: the datapath's workers. Set
/// once, when the daemon starts its datapath.
static TAP_QUEUES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// See [`TAP_QUEUES`].
pub fn set_tap_queues(n: usize) {
    TAP_QUEUES.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Where namespaces are bind-mounted unless the daemon says otherwise
/// (rootless: a directory of its own mount namespace).
pub const NETNS_DIR: &str = "/run/netns";

/// Makes `/run/netns` a shared mount point (like iproute2) so namespace
/// bind mounts made here are visible in every mount namespace.
fn prepare_netns_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, dir, Some("none"), flags, None::<&str>).is_ok() {
        return Ok(());
    }
    mount(
        Some(dir),
        dir,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .context("bind-mounting /run/netns")?;
    mount(None::<&str>, dir, Some("none"), flags, None::<&str>)
        .with_context(|| format!("making {} a shared mount", dir.display()))?;
    Ok(())
}

/// Creates a new, empty network namespace pinned at `/run/netns/NAME`.
pub fn create_netns(dir: &Path, name: &str) -> Result<PathBuf> {
    prepare_netns_dir(dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                anyhow!("network namespace {} already exists", path.display())
            }
            _ => anyhow!("creating {}: {e}", path.display()),
        })?;
    let p2 = path.clone();
    let r = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &p2,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the new namespace on {}", p2.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?;
    if let Err(e) = r {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    // lo up, as every container expects
    if let Err(e) = in_netns(&NetnsRef(path.clone()), || {
        netlink(|h| async move { link_up(&h, "lo").await })
    }) {
        let _ = delete_netns(&path);
        bail!("{e}");
    }
    Ok(path)
}

/// Unmounts and removes a namespace created by [`create_netns`].
pub fn delete_netns(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => bail!("unmounting {}: {e}", path.display()),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("removing {}: {e}", path.display())),
    }
}

/// True if `path` still refers to a live network namespace.
pub fn netns_alive(path: &Path) -> bool {
    NetnsRef(path.to_path_buf()).open().is_ok()
}

/// The interface tapnet puts into a container namespace.
#[derive(Debug, Clone)]
pub struct IfSpec {
    pub ifname: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub mtu: u32,
    /// Install a default route via this gateway.
    pub default_gw: Option<Ipv4Addr>,
    /// Host routes on the link (no gateway): service addresses answered on
    /// this interface from outside its subnet (a macvlan network's resolver).
    pub link_routes: Vec<Ipv4Addr>,
    /// A default route through the interface itself, no gateway (ipvlan
    /// L3: everything beyond is routed by the other side).
    pub default_dev: bool,
    /// Dual stack: the IPv6 address and prefix length, and the gateway
    /// of the IPv6 default route.
    pub ip6: Option<(std::net::Ipv6Addr, u8)>,
    pub default_gw6: Option<std::net::Ipv6Addr>,
    /// An IPv6 default route through the interface itself (ipvlan L3).
    pub default_dev6: bool,
}

/// Opens (creating, or re-attaching to an existing persistent one) the TAP
/// device inside `ns` and configures it: MAC, MTU, address, up, default
/// route. Idempotent, so a restarted daemon can call it on a live endpoint.
pub fn setup_endpoint(ns: &NetnsRef, spec: &IfSpec, tun: Option<&Path>) -> Result<Queues> {
    let spec = spec.clone();
    let tun = tun.map(Path::to_path_buf);
    in_netns(ns, move || -> Result<Queues> {
        let fds = open_persistent_tap(&spec.ifname, tun)?;
        let fd = &fds[0];
        // Like Docker on an IPv4-only network: no IPv6 on the container
        // interface (no SLAAC, DAD, MLD or router solicitations to flood).
        // On a dual-stack network: IPv6 on, the static address usable at
        // once (no duplicate address detection: tapnet's IPAM made it
        // unique) and no router advertisements taken (the routes are
        // tapnet's). This is the container's namespace, the host's sysctls
        // are untouched.
        let conf = format!("/proc/sys/net/ipv6/conf/{}", spec.ifname);
        if spec.ip6.is_some() {
            for (k, v) in [
                ("accept_dad", "0"),
                ("accept_ra", "0"),
                ("autoconf", "0"),
                ("disable_ipv6", "0"),
            ] {
                if let Err(e) = std::fs::write(format!("{conf}/{k}"), v) {
                    // don't leave a half-configured device behind
                    let _ = vswitch::tap::set_persist(fd, false);
                    bail!(
                        "enabling IPv6 on {} ({k}): {e} (is IPv6 disabled on this host?)",
                        spec.ifname
                    );
                }
            }
        } else {
            let _ = std::fs::write(format!("{conf}/disable_ipv6"), "1");
        }
        let r = netlink(|h| {
            let spec = spec.clone();
            async move { configure(&h, &spec).await }
        });
        if let Err(e) = r {
            // don't leave a half-configured device behind
            let _ = vswitch::tap::set_persist(fd, false);
            return Err(e);
        }
        Ok(fds)
    })?
}

/// Opens the persistent TAP `name` of the calling thread's namespace,
/// creating it if there is none, with [`TAP_QUEUES`] queues (one if it
/// exists with one).
fn open_persistent_tap(name: &str, tun: Option<PathBuf>) -> Result<Queues> {
    let opts = TapOptions {
        name: name.to_string(),
        offload: true,
        persist: true,
        queues: TAP_QUEUES.load(std::sync::atomic::Ordering::Relaxed),
        clone_device: tun,
    };
    // EBUSY: the device's queue is still held by a previous daemon that
    // just died (its io_uring is torn down asynchronously and releases the
    // TAP file a moment after the process is gone).
    let t0 = std::time::Instant::now();
    let fds = loop {
        match open_tap(&opts) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ResourceBusy
                    && t0.elapsed() < std::time::Duration::from_secs(10) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => break r.with_context(|| format!("opening TAP {name}"))?,
        }
    };
    if t0.elapsed() > std::time::Duration::from_millis(100) {
        eprintln!(
            "tapnet: waited {} ms for the previous holder of {name} to let go",
            t0.elapsed().as_millis()
        );
    }
    Ok(fds)
}

/// The alias tapnet gives the TAP of Docker endpoint `ep_id` (kept when
/// Docker moves and renames it): how a restarted daemon tells it from the
/// container's other interfaces.
pub fn docker_tap_alias(ep_id: &str) -> String {
    format!("tapnet docker endpoint {ep_id}")
}

/// Where [`open_docker_tap`] looks for an endpoint's TAP.
pub enum DockerTap<'a> {
    /// Join: created as `tap` in the daemon's namespace (or re-opened if
    /// it is there), with MTU `mtu`, tagged with `alias`.
    Create { mtu: u32 },
    /// A restarted daemon: the TAP Docker moved into `sandbox` (found by
    /// its alias and MAC), else `tap` if it is still (or again, after
    /// Leave) in the daemon's namespace; never created.
    Find { sandbox: Option<&'a NetnsRef> },
}

/// The TAP of an endpoint Docker made: tapnet creates it as `tap` in its
/// own namespace and hands it to Docker at Join, which moves it into the
/// container and renames it `ethN`. Persistent, so a daemon restart does
/// not take it from the container. Returns the descriptor and where it
/// was found.
pub fn open_docker_tap(
    how: DockerTap,
    alias: &str,
    mac: Mac,
    tap: &str,
    tun: Option<&Path>,
) -> Result<(Queues, String)> {
    let tun = tun.map(Path::to_path_buf);
    match how {
        DockerTap::Create { mtu } => {
            let fds = open_persistent_tap(tap, tun)?;
            // Docker sets no MTU on a remote driver's interface: the
            // network's goes with the TAP into the container
            let (name, alias) = (tap.to_string(), alias.to_string());
            netlink(|h| async move {
                let idx = link_index(&h, &name).await?;
                let mut msg = rtnetlink::LinkUnspec::new_with_index(idx).mtu(mtu).build();
                msg.attributes
                    .push(rtnetlink::packet_route::link::LinkAttribute::IfAlias(alias));
                h.link()
                    .set(msg)
                    .execute()
                    .await
                    .with_context(|| format!("setting MTU {mtu} and the alias of {name}"))
            })
            .inspect_err(|_| {
                let _ = vswitch::tap::set_persist(&fds[0], false);
            })?;
            Ok((fds, tap.to_string()))
        }
        DockerTap::Find { sandbox } => {
            if let Some(ns) = sandbox {
                let (t, a) = (tun.clone(), alias.to_string());
                let found = in_netns(ns, move || open_tagged(&a, mac, t))??;
                if let Some((fd, name)) = found {
                    return Ok((fd, format!("{name} in {}", ns.0.display())));
                }
            }
            match open_tagged(alias, mac, tun)? {
                Some((fd, name)) => Ok((fd, name)),
                None => {
                    bail!("its TAP {tap} is neither in the container nor in the daemon's namespace")
                }
            }
        }
    }
}

/// Opens the calling thread's namespace's TAP tagged `alias` with `mac`,
/// if there is one. Opening is by name, which would create a device if
/// the one listed went away in between: checked after, and such a new
/// device is let go.
fn open_tagged(alias: &str, mac: Mac, tun: Option<PathBuf>) -> Result<Option<(Queues, String)>> {
    let Some(name) = link_tagged(alias, mac)? else {
        return Ok(None);
    };
    let fds = open_persistent_tap(&name, tun)?;
    if link_tagged(alias, mac)?.as_deref() != Some(name.as_str()) {
        let _ = vswitch::tap::set_persist(&fds[0], false);
        bail!("interface {name} went away while it was being opened");
    }
    Ok(Some((fds, name)))
}

/// The name of the calling thread's namespace's interface with `alias`
/// and `mac`.
fn link_tagged(alias: &str, mac: Mac) -> Result<Option<String>> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut found = None;
    netlink(|h| {
        let found = &mut found;
        async move {
            let mut links = h.link().get().execute();
            while let Some(l) = links.try_next().await.context("listing interfaces")? {
                let (mut name, mut same_mac, mut same_alias) = (None, false, false);
                for a in l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = Some(n),
                        LinkAttribute::Address(a) => same_mac = a == mac.0,
                        LinkAttribute::IfAlias(a) => same_alias = a == alias,
                        _ => {}
                    }
                }
                if same_mac && same_alias && found.is_none() {
                    *found = name;
                }
            }
            Ok(())
        }
    })?;
    Ok(found)
}

/// The lowest `ethN` that neither `used` (our other endpoints of the
/// container) nor an existing interface of the namespace has.
pub fn free_ifname(ns: &NetnsRef, used: &[String]) -> Result<String> {
    pick_ifname(ns, used, None)
}

/// `want` when neither `used` nor the namespace has it (a clear error
/// otherwise), else the lowest free `ethN` ([`free_ifname`]).
pub fn pick_ifname(ns: &NetnsRef, used: &[String], want: Option<&str>) -> Result<String> {
    if let Some(w) = want {
        let ok = !w.is_empty()
            && w.len() <= 15
            && w != "."
            && w != ".."
            && !w.contains(['/', ':'])
            && !w.chars().any(char::is_whitespace);
        if !ok {
            bail!("invalid interface name {w:?}: 1-15 characters, no '/', ':' or spaces");
        }
    }
    let existing = in_netns(ns, || -> Result<Vec<String>> {
        let mut names = Vec::new();
        netlink(|h| {
            let names = &mut names;
            async move {
                let mut links = h.link().get().execute();
                while let Some(l) = links.try_next().await.context("listing interfaces")? {
                    for a in l.attributes {
                        if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = a {
                            names.push(n);
                        }
                    }
                }
                Ok(())
            }
        })?;
        Ok(names)
    })??;
    if let Some(w) = want {
        if used.iter().any(|u| u == w) || existing.iter().any(|e| e == w) {
            bail!("interface {w} already exists in the namespace");
        }
        return Ok(w.to_string());
    }
    (0..1000)
        .map(|i| format!("eth{i}"))
        .find(|n| !used.contains(n) && !existing.contains(n))
        .context("no free interface name")
}

/// Runs an rtnetlink session on a private current-thread runtime; the
/// netlink socket is opened in the calling thread's network namespace.
fn netlink<F, Fut>(f: F) -> Result<()>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink socket")?;
        let task = tokio::spawn(conn);
        let r = f(handle).await;
        task.abort();
        r
    })
}

async fn link_index(h: &rtnetlink::Handle, name: &str) -> Result<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => bail!("interface {name} not found"),
        Err(e) => bail!("looking up interface {name}: {e}"),
    }
}

async fn link_up(h: &rtnetlink::Handle, name: &str) -> Result<()> {
    let idx = link_index(h, name).await?;
    h.link()
        .set(rtnetlink::LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {name} up"))
}

fn is_eexist(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

async fn configure(h: &rtnetlink::Handle, s: &IfSpec) -> Result<()> {
    link_up(h, "lo").await?;
    let idx = link_index(h, &s.ifname).await?;
    h.link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(idx)
                .address(s.mac.0.to_vec())
                .mtu(s.mtu)
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("setting MAC {} and MTU {} on {}", s.mac, s.mtu, s.ifname))?;
    if let Err(e) = h
        .address()
        .add(idx, IpAddr::V4(s.ip), s.prefix)
        .execute()
        .await
    {
        if !is_eexist(&e) {
            bail!("adding address {}/{} to {}: {e}", s.ip, s.prefix, s.ifname);
        }
    }
    if let Some((ip6, prefix6)) = s.ip6 {
        if let Err(e) = h
            .address()
            .add(idx, IpAddr::V6(ip6), prefix6)
            .execute()
            .await
        {
            if !is_eexist(&e) {
                bail!("adding address {ip6}/{prefix6} to {}: {e}", s.ifname);
            }
        }
    }
    h.link()
        .set(rtnetlink::LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .with_context(|| format!("setting {} up", s.ifname))?;
    if let Some(gw) = s.default_gw6 {
        let route = rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(idx)
            .build();
        if let Err(e) = h.route().add(route).execute().await {
            if !is_eexist(&e) {
                bail!("adding IPv6 default route via {gw}: {e}");
            }
        }
    }
    for dst in &s.link_routes {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(*dst, 32)
            .output_interface(idx)
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .build();
        if let Err(e) = h.route().add(route).execute().await {
            if !is_eexist(&e) {
                bail!("adding the route to {dst} on {}: {e}", s.ifname);
            }
        }
    }
    if s.default_dev6 {
        let route = rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .output_interface(idx)
            .build();
        if let Err(e) = h.route().add(route).execute().await {
            if !is_eexist(&e) {
                bail!("adding the IPv6 default route on {}: {e}", s.ifname);
            }
        }
    }
    if s.default_dev {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(idx)
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .build();
        if let Err(e) = h.route().add(route).execute().await {
            if !is_eexist(&e) {
                bail!("adding the default route on {}: {e}", s.ifname);
            }
        }
    }
    if let Some(gw) = s.default_gw {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(idx)
            .build();
        if let Err(e) = h.route().add(route).execute().await {
            if !is_eexist(&e) {
                bail!("adding default route via {gw}: {e}");
            }
        }
    }
    Ok(())
}
