//! Podman (rootful, CNI backend) with tapnet as its network plugin: the
//! real `podman` and `runc` run containers on a tapnet conflist; the test
//! starts them in its own namespaces and removes everything it made.
//! Needs Debian's podman, containernetworking-plugins, runc and
//! busybox-static (scripts/deps.sh installs them).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use tapnet_tests::*;

/// Podman with a private configuration, run in a namespace of its own
/// (with `nsenter --net`, not `ip netns exec`: that hides the cgroups).
/// Not the daemon's: Podman holds every published host port open itself
/// (a reservation) where it runs, and tapnet's relay listens on it in the
/// daemon's namespace.
struct Podman {
    dir: PathBuf,
    host_ns: String,
}

impl Podman {
    fn setup(env: &Env, network: &str) -> Podman {
        let dir = env.dir.join("podman");
        let cni_bin = dir.join("cni/bin");
        let net_d = dir.join("cni/net.d");
        std::fs::create_dir_all(&cni_bin).unwrap();
        std::fs::create_dir_all(&net_d).unwrap();
        std::fs::copy(env.bin.with_file_name("tapnet-cni"), cni_bin.join("tapnet")).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{d}/cni/bin\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{d}/cni/net.d\"\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
                 tmp_dir = \"{d}/tmp\"\n\
                 [containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/run\"\n"),
        )
        .unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": "tapnet",
                "network": network,
                "socket": env.sock,
                "capabilities": {"portMappings": true, "ips": true, "mac": true, "aliases": true}
            }]
        });
        std::fs::write(
            net_d.join(format!("{network}.conflist")),
            conflist.to_string(),
        )
        .unwrap();
        let p = Podman {
            dir,
            host_ns: env.netns("podman"),
        };
        // an image without a registry: busybox and its applets
        let tar = busybox_rootfs_tar(&p.dir, "hello from podman");
        let o = p.run(&["import", &tar.to_string_lossy(), "tn-busybox"]);
        assert!(
            o.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        p
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("podman")
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // every container, its CNI DEL, its mounts and storage
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["system", "reset", "-f"]);
    }
}

fn tapnet_ip(env: &Env, id: &str) -> String {
    let v = env.json(&["ps", "--format", "json"]);
    let c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == format!("cni-{}", &id[..60]))
        .unwrap_or_else(|| panic!("container {id} not in tapnet: {v}"));
    c["endpoints"][0]["ip"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn podman_containers_on_a_tapnet_network() {
    let Some(env) = Env::new("podman_cni", &[]) else {
        return;
    };
    require_tools(
        &["podman", "runc", "busybox"],
        "podman, runc and busybox-static",
    );
    env.ok(&["network", "create", "pn", "--subnet", "10.73.0.0/24"]);
    let p = Podman::setup(&env, "pn");
    // a server with a published port, and a client that reaches it
    let web = p.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "pn",
        "-p",
        "18081:80",
        "tn-busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let web_ip = tapnet_ip(&env, &web);
    let got = p.ok(&[
        "run",
        "--rm",
        "--network",
        "pn",
        "tn-busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{web_ip}/"),
    ]);
    assert_eq!(got, "hello from podman");
    let ping = p.ok(&[
        "run",
        "--rm",
        "--network",
        "pn",
        "tn-busybox",
        "ping",
        "-c",
        "2",
        &web_ip,
    ]);
    assert!(ping.contains("2 packets received"), "{ping}");
    // the published port, from the host side
    let body = http_get_local(&env.host_ns, 18081);
    assert!(body.contains("hello from podman"), "{body}");
    // the --rm containers are gone from tapnet (DEL), web is there
    let ps = env.ok(&["ps", "-q"]);
    assert_eq!(
        ps.lines().filter(|l| l.starts_with("cni-")).count(),
        1,
        "{ps}"
    );
    // podman rm: DEL releases the TAP, the address and the published port
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    assert!(
        !env.ok(&["ps", "-q"]).contains("cni-"),
        "web left in tapnet"
    );
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    assert_eq!(
        nat["published"].as_array().map_or(0, |a| a.len()),
        0,
        "{nat}"
    );
    // and the address is free again
    let again = p.ok(&["run", "-d", "--network", "pn", "tn-busybox", "sleep", "60"]);
    assert_eq!(
        tapnet_ip(&env, &again),
        web_ip,
        "the address was not released"
    );
    drop(p);
    assert!(
        !env.ok(&["ps", "-q"]).contains("cni-"),
        "podman rm -a left containers"
    );
}
