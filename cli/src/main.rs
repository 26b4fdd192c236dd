//! `tapnet`: daemon, control API and CLI.

use tapnet::{api, client, daemon, dockerfmt, run};

use anyhow::Result;
use api::*;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use client::Client;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tapnet",
    version,
    about = "Userspace virtual switch and NAT router for containers"
)]
struct Cli {
    /// The daemon's API socket [default: /run/tapnet/tapnet.sock as root,
    /// $XDG_RUNTIME_DIR/tapnet/tapnet.sock (or /tmp/tapnet-UID/tapnet.sock)
    /// otherwise].
    #[arg(long, global = true, env = "TAPNET_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: the switch, IPAM, state and the control API.
    Daemon(DaemonArgs),
    /// Manage networks.
    #[command(subcommand)]
    Network(NetCmd),
    /// Run a command in a new container namespace attached to a network.
    Run(RunCli),
    /// List containers and their endpoints.
    Ps {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove containers (detach them; delete namespaces tapnet created).
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Rename a container (its DNS name changes at once).
    Rename { old: String, new: String },
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `tapnet completion bash >
    /// /etc/bash_completion.d/tapnet`.
    Completion { shell: clap_complete::Shell },
    /// Write the man pages (tapnet.1, tapnet-network.1, ...) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Capture frames as the switch sees them, as pcapng (tshark,
    /// Wireshark and tcpdump -r read it) or a line per frame.
    Capture {
        /// A network (all its ports) or a container (all its ports).
        target: String,
        /// With a network: only this container's port; with a container:
        /// only its port on this network.
        #[arg(long)]
        port: Option<String>,
        /// Write pcapng to FILE (-: standard output, e.g. `| tshark -r -`)
        /// instead of printing a line per frame.
        #[arg(short = 'w', value_name = "FILE")]
        write: Option<String>,
        /// Stop after N frames.
        #[arg(short = 'c', value_name = "N")]
        count: Option<u64>,
        /// Bytes kept of each frame (default 262144).
        #[arg(short = 's', value_name = "SNAPLEN")]
        snaplen: Option<u32>,
        /// Cut GSO super-frames (a container's TCP/UDP segmentation
        /// offload, up to 64 KiB) into the MTU-sized frames they stand
        /// for, with complete checksums, as the wire would carry them.
        #[arg(long)]
        segment: bool,
        /// A tcpdump filter expression (icmp, tcp port 80, host 10.0.0.2).
        filter: Vec<String>,
    },
    /// Stream what happens (networks created and removed, containers
    /// started and gone, endpoints connected, ports published, MACs moving,
    /// spoofed frames, NAT exhaustion) as it happens, like `docker events`.
    Events {
        /// Also what happened since: unix seconds, or a duration ago
        /// (30s, 10m, 2h).
        #[arg(long)]
        since: Option<String>,
        /// End then (same forms; 0s: now, so only what is past is shown).
        #[arg(long)]
        until: Option<String>,
        /// table (a line per event, as Docker prints them) or json (one
        /// object per line).
        #[arg(long, default_value = "table")]
        format: String,
        /// type=network|container|datapath|nat, action=..., or any actor
        /// attribute, e.g. container=web (repeatable: all must match).
        #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
    },
    /// Containers or networks as JSON in Docker's shape (a container:
    /// NetworkSettings.Networks.{net}, Ports; a network: as `network
    /// inspect`), tapnet's own view under `Tapnet`.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        /// A Go template run on each object.
        #[arg(short, long)]
        format: Option<String>,
        /// Look only among containers or only among networks (a name may
        /// be both: a container is taken first).
        #[arg(long = "type", value_parser = ["container", "network"])]
        kind: Option<String>,
    },
    /// Show the NAT: uplink, counters, connection table.
    #[command(subcommand)]
    Nat(NatCmd),
}

#[derive(Subcommand)]
enum NatCmd {
    /// The uplink, the NAT counters and every connection.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Args)]
struct DaemonArgs {
    /// Directory for the persistent state [default: /var/lib/tapnet as
    /// root, $XDG_DATA_HOME/tapnet (or ~/.local/share/tapnet) otherwise].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The TUN/TAP clone device (default /dev/net/tun).
    #[arg(long)]
    tun_device: Option<PathBuf>,
    /// Seconds a learned MAC stays in the table without traffic.
    #[arg(long, default_value_t = 300)]
    mac_aging: u64,
    /// The most MACs one port may have in the table (0: no limit); more are
    /// counted as mac_limit and not learned.
    #[arg(long, default_value_t = 64)]
    max_macs_per_port: u32,
    /// Prefix of the namespaces `tapnet run` creates under /run/netns.
    #[arg(long, default_value = "tapnet-")]
    netns_prefix: String,
    /// Receive buffers (64 KiB each) shared by all ports; a quiet port
    /// holds none.
    #[arg(long, default_value_t = 256, alias = "bufs-per-port")]
    rx_buffers: usize,
    /// Use one plain read per port instead of multishot reads with a
    /// buffer ring (automatic on kernels older than 6.7).
    #[arg(long)]
    single_read: bool,
    /// After a batch of traffic, poll for the next frame this many
    /// microseconds before sleeping: lower request/response latency for
    /// some CPU while traffic flows; an idle datapath never spins (0: off).
    /// Default: 50 with --uplink; 0 without (the socket NAT, the rootless
    /// back-end: there the spinning thread takes CPU from the socket
    /// relay, and a rootless daemon shares its user's machine). Set, it
    /// applies to the socket NAT's thread too (its request/response
    /// latency for its rate of small datagrams).
    #[arg(long, value_name = "MICROSECONDS")]
    busy_poll_us: Option<u32>,
    /// The socket NAT's thread only (no --uplink): after handling events,
    /// poll for the next one this long before sleeping (0: off); never
    /// while idle. Default: --busy-poll-us if given, else 50 (its
    /// request/response latency 1.12x slirp4netns's instead of 1.57x, at
    /// the same throughput).
    #[arg(long, value_name = "MICROSECONDS")]
    socknat_busy_poll_us: Option<u32>,
    /// Datapath worker threads (1-64): with more than one, container TAPs
    /// get one queue per worker (IFF_MULTI_QUEUE), the kernel spreads
    /// their flows over the queues, and helper workers switch known
    /// container-to-container unicast on their queues themselves (the
    /// rest goes through the main worker). Default: one per CPU, at most
    /// 4. TAPs made with another count keep theirs until re-created. The
    /// last one given counts.
    #[arg(long, value_name = "N", overrides_with = "datapath_workers",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    datapath_workers: Option<u16>,
    /// Upstream DNS server (IP or IP:PORT) for names that are not local;
    /// repeatable. Default: the nameservers of the host's /etc/resolv.conf.
    #[arg(long = "dns", value_name = "SERVER")]
    dns: Vec<String>,
    /// Resolve container names on the default `bridge` network too (off,
    /// as in Docker).
    #[arg(long)]
    bridge_dns_names: bool,
    /// IPv6 on the default `bridge` network too (as `dockerd --ipv6`): its
    /// containers get an IPv6 address from --fixed-cidr-v6.
    #[arg(long)]
    ipv6: bool,
    /// The default bridge's IPv6 subnet (default: a /64 of the daemon's
    /// unique local prefix).
    #[arg(long, requires = "ipv6", value_name = "CIDR")]
    fixed_cidr_v6: Option<String>,
    /// Host interface for outbound NAT (root mode): tapnet sends and
    /// receives on it with a packet socket, as --uplink-ip.
    #[arg(long, requires_all = ["uplink_ip", "uplink_gateway"])]
    uplink: Option<String>,
    /// The address (CIDR) tapnet owns on the uplink; containers are
    /// masqueraded to it. Not configured on the interface in the kernel.
    #[arg(long, requires = "uplink")]
    uplink_ip: Option<String>,
    /// The next hop for everything outside the uplink's subnet.
    #[arg(long, requires = "uplink")]
    uplink_gateway: Option<std::net::Ipv4Addr>,
    /// NAT66: the IPv6 address (CIDR) tapnet owns on the uplink; dual-stack
    /// networks' IPv6 traffic is masqueraded to it (like Docker's
    /// ip6tables NAT).
    #[arg(long, requires_all = ["uplink", "uplink_gateway6"])]
    uplink_ip6: Option<String>,
    /// The IPv6 next hop on the uplink.
    #[arg(long, requires = "uplink_ip6")]
    uplink_gateway6: Option<std::net::Ipv6Addr>,
    /// Ports (and ICMP identifiers) the NAT hands out.
    #[arg(long, default_value = "32768-60999")]
    nat_ports: String,
    /// An idle timeout of NAT connections, KIND=SECONDS (repeatable); kinds:
    /// tcp_syn (120), tcp_established (7440), tcp_closing (120), tcp_rst
    /// (10), udp (30), udp_stream (120), icmp (30).
    #[arg(long, value_name = "KIND=SECS")]
    nat_timeout: Vec<String>,
    /// Serve Docker's remote network driver protocol (`docker network
    /// create -d tapnet`) on this socket; with --cluster-store also the
    /// global-scope `tapnet-overlay` plugin, on tapnet-overlay.sock next
    /// to it.
    #[arg(long, value_name = "PATH", num_args = 0..=1,
          default_missing_value = "/run/docker/plugins/tapnet.sock")]
    docker_plugin: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics, OpenMetrics text) on this
    /// address, e.g. 127.0.0.1:9323 (Docker's metrics port).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The most NAT connections (or socket-NAT flows, each a host socket)
    /// one container may hold at once (0: no limit); more are refused and
    /// counted as quota_exceeded.
    #[arg(long, default_value_t = 1024)]
    nat_quota: u32,
    /// Forwarded DNS answers the resolver keeps for their TTL (at most an
    /// hour; negative answers 5 minutes); 0 turns the cache off.
    #[arg(long, value_name = "ENTRIES", default_value_t = dns::cache::DEFAULT_CAPACITY)]
    dns_cache: usize,
    /// The cluster store that overlay networks share (Docker's flag):
    /// etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, value_name = "URL", requires = "cluster_advertise")]
    cluster_store: Option<String>,
    /// This host's address on the underlay: its VXLAN endpoint, and how
    /// the other hosts reach its containers (Docker's flag).
    #[arg(
        long,
        visible_alias = "advertise-addr",
        value_name = "IP",
        requires = "cluster_store"
    )]
    cluster_advertise: Option<std::net::Ipv4Addr>,
    /// The UDP port of the VXLAN endpoint.
    #[arg(long, default_value_t = 4789)]
    data_path_port: u16,
    /// Seconds an encrypted overlay network's key is used before a new
    /// one replaces it (Docker rotates every 12 hours).
    #[arg(long, default_value_t = 43200, value_name = "SECS")]
    overlay_key_rotation: u64,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum NetCmd {
    /// Create a network.
    Create {
        name: String,
        /// The network driver: bridge (default), macvlan, ipvlan.
        #[arg(short = 'd', long, default_value = "bridge")]
        driver: String,
        /// A driver option KEY=VALUE (repeatable), e.g. parent=eth1.10,
        /// macvlan_mode=private.
        #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
        opt: Vec<String>,
        /// Subnet in CIDR form, IPv4 and (with --ipv6) IPv6: give it once
        /// per family; picked automatically when omitted.
        #[arg(long)]
        subnet: Vec<String>,
        /// Gateway address, once per family (default: the subnet's first
        /// host address).
        #[arg(long)]
        gateway: Vec<String>,
        /// Allocate container addresses from this sub-range (once per family).
        #[arg(long)]
        ip_range: Vec<String>,
        /// Dual stack: an IPv6 subnet too (without an IPv6 --subnet, a /64
        /// of the daemon's unique local prefix).
        #[arg(long)]
        ipv6: bool,
        #[arg(long)]
        mtu: Option<u32>,
        /// Upstream DNS server for names that are not local (IP or IP:PORT,
        /// repeatable); default: the daemon's.
        #[arg(long, value_name = "SERVER")]
        dns: Vec<String>,
        /// Do not resolve container names on this network.
        #[arg(long)]
        no_dns_names: bool,
        /// No routing beyond the network: no outbound NAT, no published ports.
        #[arg(long)]
        internal: bool,
        /// Metadata KEY=VALUE (repeatable), shown by inspect, matched by
        /// `ls --filter label=...`.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        label: Vec<String>,
    },
    /// List networks (Docker's columns: NETWORK ID, NAME, DRIVER, SCOPE).
    #[command(alias = "list")]
    Ls {
        /// table (default), json (tapnet's own fields), a Go template
        /// (`{{.Name}}`; keys: ID Name Driver Scope IPv6 Internal Labels
        /// CreatedAt Subnet Gateway MTU Endpoints) or `table TEMPLATE`.
        #[arg(long, default_value = "table")]
        format: String,
        /// Only network ids.
        #[arg(short, long)]
        quiet: bool,
        /// driver=, id=, label=KEY[=VALUE], name=, scope=, type=custom|builtin
        /// (repeatable: one key's values are alternatives, all keys must
        /// match).
        #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Whole ids.
        #[arg(long)]
        no_trunc: bool,
        /// Also SUBNET, GATEWAY, MTU and ENDPOINTS.
        #[arg(short, long)]
        long: bool,
    },
    /// Show networks as JSON with Docker's field names (Name, Id, IPAM,
    /// Containers, ...) and tapnet's own view (endpoints with per-port
    /// counters, the MAC table, DNS) under `Tapnet`.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        /// A Go template run on each network (`{{json .}}`,
        /// `{{range .IPAM.Config}}{{.Subnet}}{{end}}`).
        #[arg(short, long)]
        format: Option<String>,
    },
    /// Remove networks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container (or, with --netns, any network namespace) to a network.
    Connect {
        network: String,
        container: String,
        /// Namespace to attach under the container name: a name in /run/netns, a path, or a PID.
        #[arg(long)]
        netns: Option<String>,
        #[command(flatten)]
        ep: EndpointOpts,
    },
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
    /// Remove every network without endpoints.
    Prune,
}

/// What `run` and `network connect` both set on the endpoint.
#[derive(Args)]
struct EndpointOpts {
    /// A static address (default: the next free one).
    #[arg(long)]
    ip: Option<String>,
    /// A static IPv6 address on a dual-stack network.
    #[arg(long)]
    ip6: Option<String>,
    /// The interface's MTU (default: the network's).
    #[arg(long)]
    mtu: Option<u32>,
    /// The interface's MAC (default: 02:42 and the IPv4 address).
    #[arg(long = "mac-address", value_name = "MAC")]
    mac_address: Option<String>,
    /// A network-scoped DNS alias (repeatable).
    #[arg(long)]
    alias: Vec<String>,
    /// Publish a port: [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp],
    /// ranges like 8000-8010:8000-8010 (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    publish: Vec<String>,
}

#[derive(Args)]
struct RunCli {
    /// The network to attach to (default: bridge), or `none` (only lo),
    /// `host` (the daemon's network namespace), `container:NAME` (NAME's).
    #[arg(long)]
    network: Option<String>,
    /// The container's name (default: random); its DNS name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    ep: EndpointOpts,
    /// Upstream DNS server for this container (IP or IP:PORT, repeatable).
    #[arg(long, value_name = "SERVER")]
    dns: Vec<String>,
    /// A search domain for the container's resolv.conf (repeatable).
    #[arg(long)]
    dns_search: Vec<String>,
    /// An `options` entry for the container's resolv.conf (repeatable).
    #[arg(long)]
    dns_option: Vec<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    cmd: Vec<String>,
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/tapnet");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("tapnet");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/tapnet"),
        None => PathBuf::from(format!("/tmp/tapnet-{}/state", unsafe { libc::getuid() })),
    }
}

fn uplink_args(a: &DaemonArgs) -> Result<Option<daemon::UplinkArgs>> {
    let Some(iface) = &a.uplink else {
        return Ok(None);
    };
    let ip_s = a.uplink_ip.as_deref().unwrap_or_default();
    let ip: ipnet::Ipv4Net = ip_s.parse().map_err(|_| {
        anyhow::anyhow!("invalid --uplink-ip {ip_s:?}: expected an IPv4 CIDR like 192.0.2.2/24")
    })?;
    let ip6 = match a.uplink_ip6.as_deref() {
        None => None,
        Some(s) => {
            let n: ipnet::Ipv6Net = s.parse().map_err(|_| {
                anyhow::anyhow!(
                    "invalid --uplink-ip6 {s:?}: expected an IPv6 CIDR like 2001:db8::2/64"
                )
            })?;
            Some(n)
        }
    };
    let (lo, hi) = a
        .nat_ports
        .split_once('-')
        .and_then(|(l, h)| Some((l.parse::<u16>().ok()?, h.parse::<u16>().ok()?)))
        .filter(|(l, h)| l <= h && *l > 0)
        .ok_or_else(|| {
            anyhow::anyhow!("invalid --nat-ports {:?}: expected LOW-HIGH", a.nat_ports)
        })?;
    let mut t = nat::Timeouts::default();
    for kv in &a.nat_timeout {
        let bad = || anyhow::anyhow!("invalid --nat-timeout {kv:?}: expected KIND=SECONDS");
        let (k, v) = kv.split_once('=').ok_or_else(bad)?;
        let ms = v.parse::<u64>().map_err(|_| bad())? * 1000;
        let slot = match k {
            "tcp_syn" => &mut t.tcp_syn,
            "tcp_established" => &mut t.tcp_established,
            "tcp_closing" => &mut t.tcp_closing,
            "tcp_rst" => &mut t.tcp_rst,
            "udp" => &mut t.udp,
            "udp_stream" => &mut t.udp_stream,
            "icmp" => &mut t.icmp,
            _ => anyhow::bail!("unknown NAT timeout kind {k:?}"),
        };
        *slot = ms;
    }
    Ok(Some(daemon::UplinkArgs {
        iface: iface.clone(),
        ip,
        gateway: a.uplink_gateway.expect("clap requires it"),
        ip6,
        gateway6: a.uplink_gateway6,
        ports: (lo, hi),
        timeouts: t,
        quota: a.nat_quota,
    }))
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = w[i]))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `-o KEY=VALUE` options; a key given twice keeps the last value.
fn parse_opts(opts: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    parse_kv("option", opts)
}

/// KEY=VALUE pairs (`what`: option, label); a bare KEY has an empty value.
fn parse_kv(what: &str, opts: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    opts.iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            // a bare key (Docker's `-o encrypted`): an empty value
            None if !o.is_empty() => Ok((o.to_string(), String::new())),
            _ => anyhow::bail!("invalid {what} {o:?}: use KEY=VALUE"),
        })
        .collect()
}

/// `inspect` and `network inspect`: each name as a container (unless
/// `kind` is network) or a network (unless it is container), in Docker's
/// shape, as JSON or through the template `format`. `strict` (`network
/// inspect`): a missing one is the daemon's error at once; else what
/// exists is printed, then the names that are nothing, in one error.
fn inspect(
    c: &Client,
    names: &[String],
    format: Option<&str>,
    kind: Option<&str>,
    strict: bool,
) -> Result<()> {
    let tmpl = format
        .map(dockerfmt::template)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let nets: Vec<NetworkSummary> = c.get("/networks")?;
    let net_ids = nets.into_iter().map(|n| (n.name, n.id)).collect();
    let ctrs: Vec<ContainerInfo> = c.get("/containers")?;
    let ctr_ids = ctrs.into_iter().map(|c| (c.name, c.id)).collect();
    let (mut out, mut missing) = (Vec::new(), Vec::new());
    for n in names {
        if kind != Some("network") {
            if let Some(ci) = c.get_opt::<ContainerInfo>(&format!("/containers/{n}"))? {
                out.push(dockerfmt::ctr_inspect(&ci, &net_ids));
                continue;
            }
        }
        if kind != Some("container") {
            // as JSON: the summary's endpoint count and the endpoint map
            // share a key (the map comes last and wins)
            let path = format!("/networks/{n}");
            let ni = if strict {
                Some(c.get::<serde_json::Value>(&path)?)
            } else {
                c.get_opt::<serde_json::Value>(&path)?
            };
            if let Some(ni) = ni {
                out.push(dockerfmt::net_inspect(&ni, &ctr_ids));
                continue;
            }
        }
        missing.push(n.as_str());
    }
    // what exists is printed; then the error, as Docker does
    match tmpl {
        Some(t) => {
            for o in &out {
                println!("{}", dockerfmt::render(&t, o).map_err(anyhow::Error::msg)?);
            }
        }
        None => json_out(&out)?,
    }
    if !missing.is_empty() {
        anyhow::bail!("no such object: {}", missing.join(", "));
    }
    Ok(())
}

/// `--since`, `--until`: unix seconds, or a duration ago (30s, 10m, 2h).
fn since_secs(s: &str) -> Result<u64> {
    if let Ok(t) = s.parse::<u64>() {
        return Ok(t);
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        anyhow::anyhow!("invalid --since {s:?}: unix seconds or a duration (10m): {e}")
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(now.saturating_sub(d).as_secs())
}

/// An event as `docker events` prints it: time, type, action, id and the
/// attributes in parentheses.
fn event_line(e: &serde_json::Value) -> String {
    let nanos = e["timeNano"].as_u64().unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos);
    let attrs: Vec<String> = e["Actor"]["Attributes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} {} {} {} ({})",
        humantime::format_rfc3339_nanos(t),
        e["Type"].as_str().unwrap_or_default(),
        e["Action"].as_str().unwrap_or_default(),
        e["Actor"]["ID"].as_str().unwrap_or_default(),
        attrs.join(", ")
    )
}

fn json_out<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Daemon(_)) {
        // `tapnet ps | head`: a closed pipe ends the CLI quietly, as it
        // does any Unix tool (the daemon keeps ignoring SIGPIPE: a client
        // going away is an error on its socket, not the daemon's end)
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main(cli: Cli) -> Result<i32> {
    let socket = cli.socket.clone().unwrap_or_else(client::default_socket);
    let c = Client::new(&socket);
    match cli.cmd {
        Cmd::Daemon(a) => {
            let uplink = uplink_args(&a)?;
            let cluster = match (&a.cluster_store, a.cluster_advertise) {
                (Some(url), Some(ip)) => Some(daemon::cluster::ClusterArgs {
                    url: url.clone(),
                    endpoints: daemon::cluster::parse_store(url).map_err(anyhow::Error::msg)?,
                    advertise: ip,
                    port: a.data_path_port,
                    key_rotation: Duration::from_secs(a.overlay_key_rotation.max(1)),
                }),
                _ => None,
            };
            daemon::server::run(daemon::DaemonConfig {
                socket,
                state_dir: a.state_dir.clone().unwrap_or_else(default_state_dir),
                tun_device: a.tun_device.clone(),
                netns_dir: daemon::netns::NETNS_DIR.into(),
                mac_aging: Duration::from_secs(a.mac_aging),
                netns_prefix: a.netns_prefix,
                rx_buffers: a.rx_buffers,
                max_macs_per_port: a.max_macs_per_port,
                nat_quota: a.nat_quota,
                dns_cache: a.dns_cache,
                docker_plugin: a.docker_plugin.clone(),
                metrics_addr: a.metrics_addr,
                multishot: !a.single_read,
                datapath_workers: a.datapath_workers.map(usize::from).unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
                }),
                socknat_busy_poll_us: a
                    .socknat_busy_poll_us
                    .or(a.busy_poll_us)
                    .unwrap_or(daemon::DEFAULT_BUSY_POLL_US),
                busy_poll_us: a.busy_poll_us.unwrap_or(if a.uplink.is_some() {
                    daemon::DEFAULT_BUSY_POLL_US
                } else {
                    0
                }),
                dns: a.dns,
                bridge_dns_names: a.bridge_dns_names,
                bridge_ipv6: a.ipv6,
                bridge_subnet6: match a.fixed_cidr_v6.as_deref() {
                    None => None,
                    Some(s) => Some(
                        daemon::ipam::parse_subnet6(s, false)
                            .map_err(|e| anyhow::anyhow!("--fixed-cidr-v6: {e}"))?,
                    ),
                },
                uplink,
                cluster,
            })?;
        }
        Cmd::Network(n) => network(&c, n)?,
        Cmd::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tapnet", &mut std::io::stdout());
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()))?;
        }
        Cmd::Run(a) => {
            return run::run(
                &c,
                run::RunArgs {
                    network: a.network.unwrap_or_else(|| daemon::BRIDGE.to_string()),
                    name: a.name,
                    ip: a.ep.ip,
                    ip6: a.ep.ip6,
                    mtu: a.ep.mtu,
                    mac: a.ep.mac_address,
                    aliases: a.ep.alias,
                    ports: a.ep.publish,
                    dns: a.dns,
                    dns_search: a.dns_search,
                    dns_option: a.dns_option,
                    cmd: a.cmd,
                },
            )
        }
        Cmd::Ps { format, quiet } => {
            let cs: Vec<ContainerInfo> = c.get("/containers")?;
            if quiet {
                cs.iter().for_each(|c| println!("{}", c.name));
            } else if format == Format::Json {
                json_out(&cs)?;
            } else {
                let mut rows = Vec::new();
                for ct in cs {
                    if ct.endpoints.is_empty() {
                        rows.push(vec![
                            ct.name.clone(),
                            if ct.network_mode.is_empty() {
                                "-".into()
                            } else {
                                ct.network_mode.clone()
                            },
                            "-".into(),
                            "-".into(),
                            "-".into(),
                            ct.netns.clone(),
                            "".into(),
                        ]);
                    }
                    for e in ct.endpoints {
                        rows.push(vec![
                            ct.name.clone(),
                            e.network,
                            e.ifname,
                            e.ip,
                            e.mac,
                            ct.netns.clone(),
                            e.ports.join(","),
                        ]);
                    }
                }
                print_table(
                    &["NAME", "NETWORK", "IFACE", "IP", "MAC", "NETNS", "PORTS"],
                    rows,
                );
            }
        }
        Cmd::Rm { names } => {
            for n in names {
                c.call::<serde_json::Value>("DELETE", &format!("/containers/{n}"), None::<&()>)?;
                println!("{n}");
            }
        }
        Cmd::Capture {
            target,
            port,
            write,
            count,
            snaplen,
            segment,
            filter,
        } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("target", &target);
            if let Some(p) = &port {
                q.append_pair("port", p);
            }
            if !filter.is_empty() {
                q.append_pair("filter", &filter.join(" "));
            }
            if let Some(n) = snaplen {
                q.append_pair("snaplen", &n.to_string());
            }
            if let Some(n) = count {
                q.append_pair("count", &n.to_string());
            }
            if segment {
                q.append_pair("segment", "true");
            }
            let path = format!("/capture?{}", q.finish());
            let mut sink: Option<Box<dyn std::io::Write>> = match write.as_deref() {
                Some("-") => Some(Box::new(std::io::stdout())),
                Some(f) => Some(Box::new(anyhow::Context::with_context(
                    std::fs::File::create(f),
                    || format!("creating {f}"),
                )?)),
                None => None,
            };
            let mut reader = tapnet::capture::Reader::default();
            let (mut frames, mut drops, mut failed) = (0u64, 0u64, None);
            // the stream's head comes once every worker runs the capture:
            // from then on no frame is missed (said on stderr, as tcpdump
            // does, so that a script can wait for it)
            let mut listening = false;
            let on = match &port {
                Some(p) => format!("{target} (port {p})"),
                None => target.clone(),
            };
            // Ctrl-C (or SIGTERM) ends the capture with its summary, as
            // tcpdump's does
            static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            extern "C" fn on_signal(_: libc::c_int) {
                STOP.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
            c.stream_bytes(&path, |b| {
                if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                    return false;
                }
                if !std::mem::replace(&mut listening, true) {
                    eprintln!("tapnet: listening on {on}, link-type EN10MB (Ethernet)");
                }
                if let Some(w) = sink.as_mut() {
                    // a reader that went away (a closed pipe) ends it
                    if w.write_all(b).and_then(|_| w.flush()).is_err() {
                        return false;
                    }
                }
                match reader.feed(b) {
                    Ok(items) => {
                        for i in items {
                            match i {
                                tapnet::capture::Item::Frame {
                                    iface,
                                    out,
                                    time,
                                    len,
                                    data,
                                } => {
                                    frames += 1;
                                    if sink.is_none() {
                                        println!(
                                            "{}",
                                            tapnet::capture::line(&iface, out, time, len, &data)
                                        );
                                    }
                                }
                                tapnet::capture::Item::Drops(n) => drops = n,
                            }
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
                !count.is_some_and(|n| frames >= n)
            })?;
            if let Some(e) = failed {
                anyhow::bail!("{e}");
            }
            eprintln!(
                "{frames} frames captured; {drops} dropped by the capture (its reader was too slow; the network lost none)"
            );
        }
        Cmd::Events {
            since,
            until,
            format,
            filter,
        } => {
            let json = match format.as_str() {
                "json" => true,
                "table" => false,
                f => anyhow::bail!("invalid --format {f:?}: table or json"),
            };
            let since = since.as_deref().map(since_secs).transpose()?;
            let until = until.as_deref().map(since_secs).transpose()?;
            let filter = filter
                .iter()
                .map(|f| {
                    f.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("invalid filter {f:?}: use KEY=VALUE"))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut q: Vec<String> = Vec::new();
            if let Some(t) = since {
                q.push(format!("since={t}"));
            }
            if let Some(t) = until {
                q.push(format!("until={t}"));
            }
            let path = format!("/events?{}", q.join("&"));
            c.stream(&path, |l| {
                let Ok(e) = serde_json::from_str::<serde_json::Value>(l) else {
                    return true;
                };
                let field = |k: &str| match k {
                    "type" => e["Type"].as_str().map(str::to_string),
                    "action" => e["Action"].as_str().map(str::to_string),
                    "id" => e["Actor"]["ID"].as_str().map(str::to_string),
                    k => e["Actor"]["Attributes"][k].as_str().map(str::to_string),
                };
                if !filter.iter().all(|(k, v)| field(k).as_deref() == Some(v)) {
                    return true;
                }
                let out = if json { l.to_string() } else { event_line(&e) };
                // a closed pipe ends the stream
                use std::io::Write;
                writeln!(std::io::stdout(), "{out}").is_ok() && std::io::stdout().flush().is_ok()
            })?;
        }
        Cmd::Inspect {
            names,
            format,
            kind,
        } => inspect(&c, &names, format.as_deref(), kind.as_deref(), false)?,
        Cmd::Nat(NatCmd::Ls { format }) => {
            let v: serde_json::Value = c.get("/nat")?;
            let str_of = |x: &serde_json::Value| match x {
                serde_json::Value::String(s) => s.clone(),
                x => x.to_string(),
            };
            if format != Format::Json {
                let rows: Vec<Vec<String>> = v["published"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| {
                                ["proto", "host", "container", "network", "container_addr"]
                                    .iter()
                                    .map(|k| str_of(&p[*k]))
                                    .collect()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!("published ports:");
                print_table(&["PROTO", "HOST", "CONTAINER", "NETWORK", "TARGET"], rows);
                println!();
            }
            if format == Format::Json {
                json_out(&v)?;
            } else if v["uplink"].is_null() {
                println!("no uplink (start the daemon with --uplink IFACE --uplink-ip CIDR --uplink-gateway IP)");
            } else {
                let u = &v["uplink"];
                println!(
                    "uplink {} {} ({}) via {} ({})",
                    u["name"].as_str().unwrap_or(""),
                    u["ip"].as_str().unwrap_or(""),
                    u["mac"].as_str().unwrap_or(""),
                    u["gateway"].as_str().unwrap_or(""),
                    u["gateway_mac"].as_str().unwrap_or("unresolved")
                );
                println!("counters {}", u["nat"]);
                let rows = u["connections"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|c| {
                                [
                                    "proto",
                                    "network",
                                    "inside",
                                    "outside",
                                    "remote",
                                    "state",
                                    "expires_in_ms",
                                ]
                                .iter()
                                .map(|k| match &c[*k] {
                                    serde_json::Value::String(s) => s.clone(),
                                    x => x.to_string(),
                                })
                                .collect()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                print_table(
                    &[
                        "PROTO",
                        "NETWORK",
                        "INSIDE",
                        "OUTSIDE",
                        "REMOTE",
                        "STATE",
                        "EXPIRES_MS",
                    ],
                    rows,
                );
            }
        }
        Cmd::Rename { old, new } => {
            c.call::<serde_json::Value>(
                "POST",
                &format!("/containers/{old}/rename"),
                Some(&Rename { name: new }),
            )?;
        }
    }
    Ok(0)
}

/// Splits the values of a per-family option (`--subnet` given for IPv4
/// and IPv6) into its IPv4 and its IPv6 value: at most one of each.
fn by_family(opt: &str, vals: Vec<String>) -> Result<(Option<String>, Option<String>)> {
    let (mut v4, mut v6) = (None, None);
    for v in vals {
        let slot = if v.contains(':') { &mut v6 } else { &mut v4 };
        if slot.is_some() {
            let fam = if v.contains(':') { "IPv6" } else { "IPv4" };
            anyhow::bail!("{opt} is given twice for {fam}: a network has one {fam} subnet");
        }
        *slot = Some(v);
    }
    Ok((v4, v6))
}

fn network(c: &Client, cmd: NetCmd) -> Result<()> {
    match cmd {
        NetCmd::Create {
            name,
            driver,
            opt,
            subnet,
            gateway,
            ip_range,
            ipv6,
            mtu,
            dns,
            no_dns_names,
            internal,
            label,
        } => {
            let (subnet, subnet6) = by_family("--subnet", subnet)?;
            let (gateway, gateway6) = by_family("--gateway", gateway)?;
            let (ip_range, ip_range6) = by_family("--ip-range", ip_range)?;
            let s: NetworkSummary = c.call(
                "POST",
                "/networks",
                Some(&CreateNetwork {
                    name,
                    driver: Some(driver),
                    options: parse_opts(&opt)?,
                    subnet,
                    gateway,
                    ip_range,
                    ipv6,
                    subnet6,
                    gateway6,
                    ip_range6,
                    mtu,
                    dns,
                    dns_names: Some(!no_dns_names),
                    internal,
                    id: None,
                    labels: parse_kv("label", &label)?,
                }),
            )?;
            println!("{}", s.id);
        }
        NetCmd::Ls {
            format,
            quiet,
            filter,
            no_trunc,
            long,
        } => {
            let out = dockerfmt::Output::parse(&format).map_err(anyhow::Error::msg)?;
            let filter = dockerfmt::NetFilter::parse(&filter).map_err(anyhow::Error::msg)?;
            let ns: Vec<NetworkSummary> = c.get("/networks")?;
            let ns: Vec<NetworkSummary> = ns.into_iter().filter(|n| filter.matches(n)).collect();
            if quiet {
                for n in &ns {
                    println!(
                        "{}",
                        if no_trunc {
                            &n.id[..]
                        } else {
                            &n.id[..12.min(n.id.len())]
                        }
                    );
                }
            } else if matches!(out, dockerfmt::Output::Json) {
                json_out(&ns)?;
            } else {
                let rows: Vec<serde_json::Value> = ns
                    .iter()
                    .map(|n| dockerfmt::net_ls_row(n, no_trunc))
                    .collect();
                let cols = if long {
                    dockerfmt::NET_LS_LONG
                } else {
                    dockerfmt::NET_LS_DEFAULT
                };
                let text = dockerfmt::print_rows(&out, &rows, cols, dockerfmt::NET_LS_KEYS)
                    .map_err(anyhow::Error::msg)?;
                print!("{text}");
            }
        }
        NetCmd::Inspect { names, format } => {
            inspect(c, &names, format.as_deref(), Some("network"), true)?
        }
        NetCmd::Rm { names } => {
            for n in names {
                c.call::<serde_json::Value>("DELETE", &format!("/networks/{n}"), None::<&()>)?;
                println!("{n}");
            }
        }
        NetCmd::Connect {
            network,
            container,
            netns,
            ep,
        } => {
            let e: EndpointInfo = c.call(
                "POST",
                &format!("/networks/{network}/connect"),
                Some(&Connect {
                    container,
                    netns,
                    ip: ep.ip,
                    ip6: ep.ip6,
                    mtu: ep.mtu,
                    mac: ep.mac_address,
                    aliases: ep.alias,
                    ports: ep.publish,
                    ifname: None,
                }),
            )?;
            println!("{} {} {}", e.ifname, e.ip, e.mac);
        }
        NetCmd::Disconnect { network, container } => {
            c.call::<serde_json::Value>(
                "POST",
                &format!("/networks/{network}/disconnect"),
                Some(&Disconnect { container }),
            )?;
        }
        NetCmd::Prune => {
            let p: Pruned = c.call("POST", "/networks/prune", None::<&()>)?;
            for n in p.removed {
                println!("{n}");
            }
        }
    }
    Ok(())
}
