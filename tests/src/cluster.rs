//! Several "hosts" on one machine: an underlay namespace with a kernel
//! bridge, host namespaces on it (each with its own tapnet daemon, state
//! and socket, an [`Env`]) and a real etcd (Debian's etcd-server) in a
//! namespace of its own on the underlay, started and stopped here.

use crate::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The underlay: `tn_<tag>_ul` with bridge br0, 10.93.0.0/24; etcd at
/// 10.93.0.100 in `tn_<tag>_etcd`. Deleted (etcd stopped) when dropped.
pub struct Underlay {
    pub ul: String,
    pub etcd_ns: String,
    etcd: Option<Child>,
    pub dir: PathBuf,
}

pub const ETCD: &str = "10.93.0.100";

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl Underlay {
    pub fn new(tag: &str) -> Underlay {
        require_tools(&["etcd", "etcdctl"], "etcd-server etcd-client");
        let ul = format!("tn_{tag}_ul");
        let etcd_ns = format!("tn_{tag}_etcd");
        for ns in [&ul, &etcd_ns] {
            delete_netns(ns);
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ul, "link", "set", "br0", "up"]);
        let dir = std::env::temp_dir().join(format!("tn_{tag}_etcd"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut u = Underlay {
            ul,
            etcd_ns,
            etcd: None,
            dir,
        };
        u.plug(&u.etcd_ns.clone(), "e", ETCD);
        u.start_etcd();
        u
    }

    /// A veth from namespace `ns` (`ul0`, address `addr`/24) to the bridge.
    pub fn plug(&self, ns: &str, tag: &str, addr: &str) {
        let port = format!("p{tag}");
        ip(&[
            "-n", &self.ul, "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns",
            ns,
        ]);
        ip(&["-n", &self.ul, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "ul0"]);
        ip(&["-n", ns, "link", "set", "ul0", "up"]);
    }

    pub fn start_etcd(&mut self) {
        let d = self.dir.display().to_string();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.etcd_ns, "etcd", "--name", "n1"])
            .args(["--data-dir", &format!("{d}/data")])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:2379,http://{ETCD}:2379"),
                "--advertise-client-urls",
                &format!("http://{ETCD}:2379"),
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "n1=http://127.0.0.1:2380",
                // dockerd's --cluster-store speaks etcd's v2 API
                "--enable-v2=true",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.etcd = Some(child);
        let ns = self.etcd_ns.clone();
        let up = wait_until(Duration::from_secs(20), || {
            Command::new("ip")
                .args(["netns", "exec", &ns, "etcdctl", "--endpoints"])
                .arg(format!("http://{ETCD}:2379"))
                .args(["endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            up,
            "etcd did not come up: {}",
            std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
        );
    }

    /// Keys and values under `prefix` in the store (etcdctl's lines).
    pub fn etcd_get_prefix(&self, prefix: &str) -> String {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.etcd_ns, "etcdctl", "--endpoints"])
                .arg(format!("http://{ETCD}:2379"))
                .args(["get", "--prefix", prefix]),
        )
    }

    /// Puts `value` at `key` in the store (no lease).
    pub fn etcd_put(&self, key: &str, value: &str) {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.etcd_ns, "etcdctl", "--endpoints"])
                .arg(format!("http://{ETCD}:2379"))
                .args(["put", key, value]),
        );
    }

    pub fn stop_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// The daemon flags of host `i` (10.93.0.i on the underlay).
    pub fn host(&self, test: &str, i: u8) -> Env {
        self.host_with(test, i, &[])
    }

    /// [`Self::host`] with more daemon flags.
    pub fn host_with(&self, test: &str, i: u8, extra: &[&str]) -> Env {
        let addr = format!("10.93.0.{i}");
        let store = format!("etcd://{ETCD}:2379");
        let mut args = vec!["--cluster-store", &store, "--cluster-advertise", &addr];
        args.extend_from_slice(extra);
        let env = Env::new_with(test, &args, &|host_ns| {
            self.plug(host_ns, &format!("h{i}"), &addr)
        })
        .expect("runs as root (checked)");
        let ok = wait_until(Duration::from_secs(15), || {
            env.daemon_log().contains("cluster store etcd://")
                && env.daemon_log().contains("connected as host")
        });
        assert!(
            ok,
            "host {i} did not join the cluster: {}",
            env.daemon_log()
        );
        env
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        self.stop_etcd();
        delete_netns(&self.etcd_ns);
        delete_netns(&self.ul);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
