//! Test harness: a private tapnet daemon and the network namespaces a test
//! uses, all named `tn_<id>_*`, all removed when the [`Env`] is dropped
//! (also when the test panics). Processes are stopped by the PIDs the
//! harness started, never by name.
//!
//! The daemon itself runs in a namespace of the test too (`tn_<id>_host`,
//! only loopback), entered with `nsenter --net`: whatever it sends on its
//! own (DNS forwarding) stays inside; its default upstream DNS server is
//! that namespace's 127.0.0.1, where a test may run a fake resolver.
//!
//! Tests need root. Without it they are skipped, except under `CI=true`,
//! where they fail.

pub mod cluster;
pub mod dnsutil;
pub mod dockerd;

use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The server address in the "internet" namespace of [`Env::with_uplink`].
pub const INET_IP: &str = "203.0.113.1";
/// The address containers are masqueraded to there.
pub const UPLINK_IP: &str = "203.0.113.2";
/// The host namespace's own address in [`Env::with_host_link`].
pub const HOST_IP: &str = "203.0.113.254";
/// The "internet" server's IPv6 address in [`Env::with_host_link`].
pub const INET_IP6: &str = "2001:db8:113::1";
/// The address NAT66 tests give the uplink (`--uplink-ip6`).
pub const UPLINK_IP6: &str = "2001:db8:113::2";
/// The host namespace's own IPv6 address in [`Env::with_host_link`].
pub const HOST_IP6: &str = "2001:db8:113::254";

/// Path of the `tapnet` binary: `$TAPNET_BIN`, or the one cargo built next
/// to this test binary (`target/<profile>/tapnet`).
pub fn tapnet_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TAPNET_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("tapnet");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release -p tapnet) or set TAPNET_BIN",
        bin.display()
    );
    // a binary older than the sources would test yesterday's code
    static FRESH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let stale = FRESH.get_or_init(|| {
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok()?;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
        ["cli", "vswitch", "nat", "dns", "wire"]
            .iter()
            .flat_map(|c| newer_than(&root.join(c).join("src"), built))
            .next()
    });
    if let Some(src) = stale {
        panic!(
            "{} is older than {}: rebuild it (cargo build --release -p tapnet)",
            bin.display(),
            src.display()
        );
    }
    bin
}

/// Files under `dir` modified after `t`.
fn newer_than(dir: &Path, t: std::time::SystemTime) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            out.extend(newer_than(&p, t));
        } else if e.metadata().and_then(|m| m.modified()).is_ok_and(|m| m > t) {
            out.push(p);
        }
    }
    out
}

/// True when the test may run; false (after saying so) when it must be
/// skipped. Panics under CI=true when it cannot run.
pub fn can_run(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let tun = Path::new("/dev/net/tun").exists();
    if root && tun {
        return true;
    }
    let why = if !root {
        "needs root"
    } else {
        "needs /dev/net/tun"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} {why}, and CI=true: failing instead of skipping");
    }
    // straight to the terminal: the test harness hides what a passing
    // test prints, and a skip must not look like a pass
    let line = format!("\nSKIPPED {test}: {why} (it reports ok, but did not run)\n");
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    false
}

/// A container started with `tapnet run ... -- sleep`.
#[derive(Debug, Clone)]
pub struct Ctr {
    pub name: String,
    /// Namespace name under /run/netns.
    pub ns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

pub struct Env {
    pub id: String,
    /// `tn_<id>_`: every namespace of this test starts with it.
    pub prefix: String,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub bin: PathBuf,
    pub daemon_args: Vec<String>,
    /// The namespace the daemon runs in.
    pub host_ns: String,
    /// Rootless: the unprivileged user (uid, gid) the daemon and the CLI
    /// run as.
    pub user: Option<(u32, u32)>,
    daemon: Option<Child>,
    bg: Vec<Child>,
}

impl Env {
    /// A fresh daemon with its own socket, state directory and namespace
    /// prefix. `None` when the test is skipped (see [`can_run`]).
    pub fn new(test: &str, daemon_args: &[&str]) -> Option<Env> {
        Self::build(test, daemon_args, None)
    }

    /// Like [`Env::new`], with "the internet": a namespace `tn_<id>_inet`
    /// (inet0, 203.0.113.1/24) reachable only through the veth `up0` in the
    /// daemon's namespace, which the daemon uses as its uplink with
    /// 203.0.113.2/24. See [`INET_IP`], [`UPLINK_IP`].
    pub fn with_uplink(test: &str, daemon_args: &[&str]) -> Option<Env> {
        Self::build(test, daemon_args, Some(true))
    }

    /// Like [`Env::with_uplink`] but the daemon's namespace itself is on
    /// that link (`up0` = [`HOST_IP`]/24 in the kernel) and the daemon has
    /// no uplink: containers go out through the socket NAT, with the
    /// host's address.
    pub fn with_host_link(test: &str, daemon_args: &[&str]) -> Option<Env> {
        Self::build(test, daemon_args, Some(false))
    }

    /// Rootless: the daemon and every CLI call run as the unprivileged
    /// user `tn_rootless` (created if missing), with a copy of the TUN
    /// device node it may open (this machine's /dev/net/tun may be 0600);
    /// "the internet" as in [`Env::with_host_link`].
    pub fn rootless(test: &str, daemon_args: &[&str]) -> Option<Env> {
        if !can_run(test) {
            return None;
        }
        if !Command::new("id")
            .arg("tn_rootless")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            run_ok(Command::new("useradd").args([
                "-M",
                "-r",
                "-s",
                "/usr/sbin/nologin",
                "tn_rootless",
            ]));
        }
        let id = |f: &str| -> u32 {
            run_ok(Command::new("id").args([f, "tn_rootless"]))
                .trim()
                .parse()
                .unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        // the directory first (the daemon runs as the user there)
        let probe = std::env::temp_dir().join(format!(
            "tn_rl_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&probe).unwrap();
        let tun = probe.join("tun");
        run_ok(Command::new("mknod").arg(&tun).args(["c", "10", "200"]));
        run_ok(Command::new("chmod").arg("666").arg(&tun));
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&probe),
        );
        let mut args: Vec<&str> = daemon_args.to_vec();
        let tun_s = tun.to_string_lossy().into_owned();
        args.extend_from_slice(&["--tun-device", &tun_s]);
        Self::build_as(test, &args, Some(false), Some((uid, gid)), Some(probe))
    }

    /// Like [`Env::new`], with `setup(host_ns)` run once the daemon's
    /// namespace exists and before the daemon starts (links the daemon
    /// needs at start, such as an underlay for its VXLAN endpoint).
    pub fn new_with(test: &str, daemon_args: &[&str], setup: &dyn Fn(&str)) -> Option<Env> {
        Self::build_with(test, daemon_args, None, None, None, Some(setup))
    }

    /// The "internet" namespace of [`Env::with_uplink`].
    pub fn inet_ns(&self) -> String {
        format!("{}inet", self.prefix)
    }

    /// `link`: None, no "internet"; Some(true) an uplink for the daemon;
    /// Some(false) a plain link of the host namespace.
    fn build(test: &str, daemon_args: &[&str], link: Option<bool>) -> Option<Env> {
        Self::build_as(test, daemon_args, link, None, None)
    }

    fn build_as(
        test: &str,
        daemon_args: &[&str],
        link: Option<bool>,
        user: Option<(u32, u32)>,
        dir: Option<PathBuf>,
    ) -> Option<Env> {
        Self::build_with(test, daemon_args, link, user, dir, None)
    }

    fn build_with(
        test: &str,
        daemon_args: &[&str],
        link: Option<bool>,
        user: Option<(u32, u32)>,
        dir: Option<PathBuf>,
        setup: Option<&dyn Fn(&str)>,
    ) -> Option<Env> {
        if !can_run(test) {
            return None;
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!(
            "{:05x}",
            (std::process::id() ^ nanos.rotate_left(7) ^ (seq << 16)) & 0xfffff
        );
        let prefix = format!("tn_{id}_");
        let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("tn_{id}")));
        std::fs::create_dir_all(&dir).unwrap();
        // checked before anything is created: a stale binary panics here,
        // and a panic after the namespaces exist would leave them behind
        let bin = tapnet_bin();
        let host_ns = format!("{prefix}host");
        run_ok(Command::new("ip").args(["netns", "add", &host_ns]));
        run_ok(Command::new("ip").args(["-n", &host_ns, "link", "set", "lo", "up"]));
        let mut daemon_args: Vec<String> = daemon_args.iter().map(|s| s.to_string()).collect();
        if let Some(f) = setup {
            f(&host_ns);
        }
        if let Some(uplink) = link {
            let inet = format!("{prefix}inet");
            run_ok(Command::new("ip").args(["netns", "add", &inet]));
            run_ok(Command::new("ip").args(["-n", &inet, "link", "set", "lo", "up"]));
            run_ok(Command::new("ip").args([
                "-n", &host_ns, "link", "add", "up0", "type", "veth", "peer", "name", "inet0",
                "netns", &inet,
            ]));
            run_ok(Command::new("ip").args(["-n", &host_ns, "link", "set", "up0", "up"]));
            run_ok(Command::new("ip").args([
                "-n",
                &inet,
                "addr",
                "add",
                "203.0.113.1/24",
                "dev",
                "inet0",
            ]));
            run_ok(Command::new("ip").args(["-n", &inet, "link", "set", "inet0", "up"]));
            // the "internet" has IPv6 too (no DAD: usable at once)
            run_ok(Command::new("ip").args([
                "-n",
                &inet,
                "addr",
                "add",
                "2001:db8:113::1/64",
                "dev",
                "inet0",
                "nodad",
            ]));
            if uplink {
                for a in [
                    "--uplink",
                    "up0",
                    "--uplink-ip",
                    "203.0.113.2/24",
                    "--uplink-gateway",
                    INET_IP,
                ] {
                    daemon_args.push(a.to_string());
                }
            } else {
                run_ok(Command::new("ip").args([
                    "-n",
                    &host_ns,
                    "addr",
                    "add",
                    "203.0.113.254/24",
                    "dev",
                    "up0",
                ]));
                // and IPv6 on the same link (no DAD: usable at once)
                run_ok(Command::new("ip").args([
                    "-n",
                    &host_ns,
                    "addr",
                    "add",
                    "2001:db8:113::254/64",
                    "dev",
                    "up0",
                    "nodad",
                ]));
                // ICMP datagram sockets for everyone, in this namespace only
                run_ok(Command::new("ip").args([
                    "netns",
                    "exec",
                    &host_ns,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ping_group_range=0 2147483647",
                ]));
            }
        }
        let mut env = Env {
            user,
            host_ns,
            sock: dir.join("tapnet.sock"),
            id,
            prefix,
            dir,
            bin,
            daemon_args,
            daemon: None,
            bg: Vec::new(),
        };
        env.start_daemon();
        Some(env)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_ns));
        if let Some((u, g)) = self.user {
            cmd.args([
                "setpriv",
                "--reuid",
                &u.to_string(),
                "--regid",
                &g.to_string(),
            ])
            .arg("--clear-groups")
            .env("HOME", &self.dir);
        }
        let child = cmd
            .arg(&self.bin)
            .arg("--socket")
            .arg(&self.sock)
            .arg("daemon")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--netns-prefix")
            .arg(&self.prefix)
            .args(["--dns", "127.0.0.1"])
            .args(&self.daemon_args)
            // extra daemon flags for a whole run, e.g. --single-read
            .args(
                std::env::var("TAPNET_DAEMON_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tapnet daemon");
        self.daemon = Some(child);
        let ok = wait_until(Duration::from_secs(10), || {
            self.tapnet(&["network", "ls", "-q"]).status.success()
        });
        if !ok {
            panic!("daemon did not come up; log:\n{}", self.daemon_log());
        }
    }

    /// A path to container `name`'s network namespace that this (root)
    /// process can open: a rootless daemon's namespaces are bind-mounted in
    /// its own mount namespace, reached through /proc/PID/root.
    pub fn ns_path(&self, name: &str) -> String {
        let v = self.json(&["ps", "--format", "json"]);
        let p = v
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .and_then(|c| c["netns"].as_str())
            .unwrap_or_else(|| panic!("no container {name}"))
            .to_string();
        match (self.user, self.daemon_pid()) {
            (Some(_), Some(pid)) => format!("/proc/{pid}/root{p}"),
            _ => p,
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// Starts `tapnet ARGS` (as the test's user when rootless) in the
    /// background; stopped by PID when the Env is dropped. Its output goes
    /// to [`Env::bg_log`].
    pub fn spawn_tapnet(&mut self, args: &[&str]) -> usize {
        let log = File::create(self.bg_log(self.bg.len())).unwrap();
        let c = self
            .tapnet_cmd()
            .env("TAPNET_SOCKET", &self.sock)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.bg.push(c);
        self.bg.len() - 1
    }

    /// Starts `tapnet capture ARGS` in the background (see
    /// [`Env::spawn_tapnet`]) and waits until it says it listens: the
    /// daemon answers only once every datapath worker runs the capture.
    /// (`net` is the network it captures on.)
    pub fn spawn_capture(&mut self, net: &str, args: &[&str]) -> usize {
        let mut a = vec!["capture"];
        a.extend_from_slice(args);
        let idx = self.spawn_tapnet(&a);
        let log = self.bg_log(idx);
        let said = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            wait_until(Duration::from_secs(10), || said().contains("listening on ")),
            "tapnet capture {args:?} did not start: {}",
            said()
        );
        // and the daemon counts it
        assert!(self.inspect(net)["captures"].as_u64().unwrap_or(0) > 0);
        idx
    }

    /// The PID of background process `idx`.
    pub fn bg_pid(&self, idx: usize) -> u32 {
        self.bg[idx].id()
    }

    /// Where the output of background process `idx` goes.
    pub fn bg_log(&self, idx: usize) -> PathBuf {
        self.dir.join(format!("bg-{idx}.log"))
    }

    /// Stops the daemon with `sig` (SIGTERM: clean shutdown; SIGKILL: crash).
    pub fn stop_daemon(&mut self, sig: i32) {
        if let Some(mut c) = self.daemon.take() {
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    /// A command that runs `tapnet` (as the test's unprivileged user when
    /// rootless).
    fn tapnet_cmd(&self) -> Command {
        match self.user {
            None => Command::new(&self.bin),
            Some((u, g)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid",
                    &u.to_string(),
                    "--regid",
                    &g.to_string(),
                    "--clear-groups",
                ])
                .arg(&self.bin)
                .env("HOME", &self.dir);
                c
            }
        }
    }

    pub fn tapnet(&self, args: &[&str]) -> Output {
        self.tapnet_cmd()
            .env("TAPNET_SOCKET", &self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tapnet")
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.tapnet(args);
        assert!(
            o.status.success(),
            "tapnet {args:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the CLI, asserts a non-zero exit and a one-line error, returns
    /// the error line.
    pub fn fail(&self, args: &[&str]) -> String {
        let o = self.tapnet(args);
        assert!(
            !o.status.success(),
            "tapnet {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let s = self.ok(args);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{s}"))
    }

    /// tapnet's own view of a network (`Tapnet` in `network inspect`).
    pub fn inspect(&self, net: &str) -> Value {
        let v = self.json(&["network", "inspect", net]);
        v[0]["Tapnet"].clone()
    }

    /// The IPv6 address (without prefix) of container `name`'s first
    /// endpoint, as `ps` shows it.
    pub fn ip6_of(&self, name: &str) -> String {
        let v = self.json(&["ps", "--format", "json"]);
        let c = v
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no container {name} in {v}"));
        c["endpoints"][0]["ip6"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no IPv6 address: {c}"))
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// [`Env::inspect`] of a network that may not exist (yet): None then.
    pub fn inspect_ok(&self, net: &str) -> Option<Value> {
        let o = self.tapnet(&["network", "inspect", net]);
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
        Some(v[0]["Tapnet"].clone())
    }

    /// Counters of `container`'s port on `net`.
    pub fn counters(&self, net: &str, container: &str) -> Value {
        let v = self.inspect(net);
        let c = v["endpoints"][container]["counters"].clone();
        assert!(c.is_object(), "no counters for {container} in {v:#}");
        c
    }

    /// Starts `tapnet run --network NET --name NAME [extra] -- sleep 3600`
    /// in the background and waits until it is attached.
    pub fn container(&mut self, net: &str, name: &str, extra: &[&str]) -> Ctr {
        let mut args = vec!["run", "--network", net, "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sleep", "3600"]);
        let log = File::create(self.dir.join(format!("run-{name}.log"))).unwrap();
        let child = self
            .tapnet_cmd()
            .env("TAPNET_SOCKET", &self.sock)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.bg.push(child);
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self.ctr(name);
            found.is_some()
        });
        let c = found.unwrap_or_else(|| {
            panic!(
                "container {name} did not come up: {}",
                std::fs::read_to_string(self.dir.join(format!("run-{name}.log"))).unwrap()
            )
        });
        // the command runs once the namespace is configured
        c
    }

    /// A container as `ps` shows it (first endpoint).
    pub fn ctr(&self, name: &str) -> Option<Ctr> {
        let v = self.json(&["ps", "--format", "json"]);
        let c = v.as_array()?.iter().find(|c| c["name"] == name)?;
        let ep = c["endpoints"].get(0)?;
        let ip = ep["ip"].as_str()?.split('/').next()?.parse().ok()?;
        let ns = Path::new(c["netns"].as_str()?)
            .file_name()?
            .to_string_lossy()
            .into_owned();
        Some(Ctr {
            name: name.to_string(),
            ns,
            ip,
            mac: ep["mac"].as_str()?.to_string(),
        })
    }

    /// Creates a bare namespace `tn_<id>_x<short>` (not through tapnet).
    pub fn netns(&self, short: &str) -> String {
        let name = self.netns_name(short);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        name
    }

    /// The name [`Env::netns`] gives the namespace `short`.
    pub fn netns_name(&self, short: &str) -> String {
        format!("{}x{short}", self.prefix)
    }

    /// Runs `argv` inside namespace `ns`.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn exec_ok(&self, ns: &str, argv: &[&str]) -> String {
        let o = self.exec(ns, argv);
        assert!(
            o.status.success(),
            "{argv:?} in {ns} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts `argv` in namespace `ns` in the background; it is killed (by
    /// PID) when the Env is dropped if it is still running.
    pub fn spawn_in(&mut self, ns: &str, argv: &[&str], stdin: Stdio, stdout: Stdio) -> usize {
        let c = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.bg.push(c);
        self.bg.len() - 1
    }

    /// Waits for a background process started with [`Env::spawn_in`].
    pub fn wait_bg(&mut self, idx: usize, timeout: Duration) -> std::process::ExitStatus {
        let c = &mut self.bg[idx];
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                panic!("background process {idx} did not finish in {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops a background process (SIGTERM, then SIGKILL after 5 s).
    pub fn stop_bg(&mut self, idx: usize) {
        stop_child(&mut self.bg[idx]);
    }

    /// Creates a file of `len` random bytes in the test directory.
    pub fn random_file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.dir.join(name);
        let mut f = File::create(&p).unwrap();
        let mut src = File::open("/dev/urandom").unwrap().take(len);
        std::io::copy(&mut src, &mut f).unwrap();
        f.flush().unwrap();
        p
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in self.bg.iter_mut() {
            stop_child(c);
        }
        self.stop_daemon(libc::SIGTERM);
        // Namespaces left behind (by a failed test or a crashed daemon).
        if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with(&self.prefix) {
                    delete_netns(name);
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ({}):\n{}", self.prefix, self.daemon_log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the processes still inside `name` (only ever one of ours: the
/// namespace is ours) and deletes it.
pub fn delete_netns(name: &str) {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

fn stop_child(c: &mut Child) {
    if c.try_wait().ok().flatten().is_some() {
        return;
    }
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if c.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn sha256(p: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(p));
    out.split_whitespace().next().unwrap().to_string()
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it
/// opens live there): a name under /run/netns, or a path.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = if ns.starts_with('/') {
        ns.to_string()
    } else {
        format!("/run/netns/{ns}")
    };
    let file = File::open(&path).unwrap_or_else(|e| panic!("open netns {path}: {e}"));
    std::thread::spawn(move || {
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// tshark's `fields` (tab-separated) for every frame of `file`.
pub fn tshark_fields(file: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut c = Command::new("tshark");
    c.arg("-r").arg(file).args(["-T", "fields"]);
    for f in fields {
        c.args(["-e", f]);
    }
    let o = c.output().expect("tshark (scripts/deps.sh installs it)");
    assert!(
        o.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// An Ethernet frame, padded to the 60-byte minimum.
pub fn eth_frame(dst: [u8; 6], src: [u8; 6], ethertype: [u8; 2], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Sends `frames` out of `eth0` in namespace `ns`; every send must succeed.
pub fn send_frames_from(ns: &str, frames: Vec<Vec<u8>>) {
    let r = in_ns(ns, move || send_raw("eth0", &frames)).join().unwrap();
    assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
}

/// Sends raw Ethernet frames out of `ifname` with an AF_PACKET socket (call
/// inside [`in_ns`]). Returns per-frame results.
pub fn send_raw(ifname: &str, frames: &[Vec<u8>]) -> Vec<std::io::Result<usize>> {
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new(ifname).unwrap();
        let idx = libc::if_nametoindex(name.as_ptr());
        assert!(idx > 0, "no interface {ifname}");
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = idx as i32;
        sa.sll_halen = 6;
        let res = frames
            .iter()
            .map(|f| {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .collect();
        libc::close(fd);
        res
    }
}

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

/// Counter value at a JSON path like `drops.oversize`.
pub fn ctr(v: &Value, path: &str) -> u64 {
    let mut x = v;
    for k in path.split('.') {
        x = &x[k];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("no counter {path} in {v}"))
}

/// `ping -c N -W 1 -i 0.2 dst` from namespace `ns`; true when all replies came.
pub fn ping(env: &Env, ns: &str, dst: &str, n: u32) -> bool {
    env.exec(
        ns,
        &["ping", "-c", &n.to_string(), "-W", "1", "-i", "0.2", dst],
    )
    .status
    .success()
}

/// A one-shot TCP server in namespace `server` on ip:port that sends the
/// file `blob` to its first client; listening when this returns; joins to
/// the address the client came from.
pub fn serve_file(
    server: &str,
    ip: &str,
    port: u16,
    blob: &Path,
) -> std::thread::JoinHandle<std::net::SocketAddr> {
    let addr: std::net::IpAddr = ip.parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let b2 = blob.to_path_buf();
    let srv = in_ns(server, move || {
        let l = std::net::TcpListener::bind((addr, port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        std::io::copy(&mut File::open(&b2).unwrap(), &mut s).unwrap();
        peer
    });
    ready_rx.recv().unwrap();
    srv
}

/// A server in `server` on ip:port sends `blob`; `nc` in `client` (a
/// namespace of this Env) downloads it. Asserts the data arrived intact and
/// returns the address the server saw.
pub fn download(
    env: &mut Env,
    client: &str,
    server: &str,
    ip: &str,
    port: u16,
    blob: &Path,
) -> std::net::SocketAddr {
    let srv = serve_file(server, ip, port, blob);
    let recv_path = env.dir.join("recv");
    let recv = File::create(&recv_path).unwrap();
    let port_s = port.to_string();
    let dl = env.spawn_in(
        client,
        &["nc", "-d", ip, &port_s],
        Stdio::null(),
        recv.into(),
    );
    let peer = srv.join().unwrap();
    assert!(
        env.wait_bg(dl, Duration::from_secs(60)).success(),
        "nc failed"
    );
    assert_eq!(sha256(blob), sha256(&recv_path), "downloaded data differs");
    peer
}

/// `n` concurrent TCP connections from namespace `client` (a name or a
/// path) to a server this starts in `server` on `ip:port`: all are opened
/// first, then each sends its own 16 bytes and must get them back reversed.
/// Panics on any failure.
pub fn many_connections(client: &str, server: &str, ip: &str, port: u16, n: usize) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = in_ns(server, move || {
        let l = TcpListener::bind((ip, port)).unwrap();
        ready_tx.send(()).unwrap();
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let (mut s, _) = l.accept().unwrap();
                std::thread::spawn(move || {
                    let mut b = [0u8; 16];
                    s.read_exact(&mut b).unwrap();
                    b.reverse();
                    s.write_all(&b).unwrap();
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    ready_rx.recv().unwrap();
    let done = in_ns(client, move || {
        let mut socks: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect((ip, port)).expect("connect"))
            .collect();
        for (i, s) in socks.iter_mut().enumerate() {
            s.write_all(format!("{i:016}").as_bytes()).unwrap();
        }
        for (i, s) in socks.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut b = [0u8; 16];
            s.read_exact(&mut b).unwrap();
            let mut want = format!("{i:016}").into_bytes();
            want.reverse();
            assert_eq!(&b[..], &want[..], "connection {i}");
        }
        socks.len()
    })
    .join()
    .expect("client connections");
    assert_eq!(done, n);
    srv.join().expect("server");
}

/// 50 UDP request/responses from namespace `client` to an echo server this
/// starts in `server` on ip:port; the last four are 4,000 to 10,000 bytes
/// (larger than the MTU: fragmented both ways). Returns the addresses the
/// server saw the requests from.
pub fn udp_roundtrips(client: &str, server: &str, ip: &str, port: u16) -> Vec<String> {
    let sizes: Vec<usize> = (0..50)
        .map(|i| if i >= 46 { 2000 * (i - 44) } else { i * 25 })
        .collect();
    udp_echo(client, server, ip, port, &sizes)
}

/// As [`udp_roundtrips`], one request of (about) each of `sizes` bytes.
pub fn udp_echo(client: &str, server: &str, ip: &str, port: u16, sizes: &[usize]) -> Vec<String> {
    use std::net::UdpSocket;
    let sizes = sizes.to_vec();
    let count = sizes.len();
    let addr: std::net::IpAddr = ip.parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = in_ns(server, move || {
        let s = UdpSocket::bind((addr, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ready_tx.send(()).unwrap();
        let mut b = vec![0u8; 16384];
        (0..count)
            .map(|_| {
                let (n, from) = s.recv_from(&mut b).unwrap();
                let mut r = b"re:".to_vec();
                r.extend_from_slice(&b[..n]);
                s.send_to(&r, from).unwrap();
                from.ip().to_string()
            })
            .collect()
    });
    ready_rx.recv().unwrap();
    in_ns(client, move || {
        let any: std::net::SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.connect((addr, port)).unwrap();
        let mut b = vec![0u8; 16384];
        for (i, n) in sizes.into_iter().enumerate() {
            let m = format!("q{i}:{}", "y".repeat(n));
            s.send(m.as_bytes()).unwrap();
            let n = s
                .recv(&mut b)
                .unwrap_or_else(|e| panic!("datagram {i} ({} bytes): {e}", m.len()));
            assert_eq!(&b[..n], format!("re:{m}").as_bytes(), "datagram {i}");
        }
    })
    .join()
    .expect("UDP client");
    srv.join().expect("UDP server")
}

/// A TCP server in `ns` on 0.0.0.0:`port`: echoes everything back.
pub fn echo_server(ns: &str, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
        tx.send(()).unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut c);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                });
            }
        });
    });
    rx.recv().unwrap();
}

/// Sends `data` to `addr` (`IP:PORT`, `[IPv6]:PORT`) from namespace `ns`
/// over TCP; what came back.
pub fn tcp_roundtrip(ns: &str, addr: &str, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut w = s.try_clone()?;
        let t = std::thread::spawn(move || {
            w.write_all(&data)?;
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        t.join().unwrap()?;
        Ok(back)
    })
    .join()
    .unwrap()
}

/// A container image without a registry: a tar of a root filesystem with
/// Debian's static busybox and its applets, and `/www/index.html` saying
/// `hello`; for `docker import` / `podman import`. Built in `dir`.
pub fn busybox_rootfs_tar(dir: &Path, hello: &str) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), format!("{hello}\n")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let list = run_ok(Command::new("/bin/busybox").arg("--list"));
    for a in list.lines().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    let tar = dir.join("rootfs.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    tar
}

/// Panics (naming the package) unless every tool is on PATH: a test that
/// needs a runtime fails instead of skipping when it is missing.
pub fn require_tools(tools: &[&str], package: &str) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: scripts/deps.sh installs {package}"
        );
    }
}

/// `GET /` over HTTP/1.0 to 127.0.0.1:`port` from namespace `ns`; the
/// whole answer (empty when the server said nothing in 5 s).
pub fn http_get_local(ns: &str, port: u16) -> String {
    in_ns(ns, move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = String::new();
        let _ = s.read_to_string(&mut b);
        b
    })
    .join()
    .unwrap()
}
