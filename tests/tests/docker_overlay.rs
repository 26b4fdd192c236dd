//! Docker on several hosts: the `tapnet-overlay` plugin (global scope)
//! with dockerd's own cluster store (Docker 20.10's `--cluster-store`),
//! two hosts on an underlay, one etcd for both Docker and tapnet. A
//! network made with `docker network create` on host 1 is Docker's and
//! tapnet's on host 2 as well; containers on the two hosts reach each
//! other by name (Docker's embedded DNS) over tapnet's VXLAN.

use std::time::Duration;
use tapnet_tests::cluster::*;
use tapnet_tests::dockerd::*;
use tapnet_tests::*;

#[test]
fn docker_overlay_across_two_hosts() {
    if !can_run("docker_overlay_across_two_hosts") {
        return;
    }
    let tag = format!("k{:05x}", std::process::id() & 0xfffff);
    // (dropped in reverse: dockerd before tapnet, the underlay last)
    let mut dirs = Vec::new();
    let u = Underlay::new(&tag);
    let store = format!("etcd://{ETCD}:2379");
    let mut hosts = Vec::new();
    let mut dockers = Vec::new();
    for i in 1..=2u8 {
        let plugins = std::env::temp_dir().join(format!("tn_{tag}_plug{i}"));
        std::fs::create_dir_all(&plugins).unwrap();
        dirs.push(RmDir(plugins.clone()));
        let sock = plugins.join("tapnet.sock");
        let env = u.host_with(
            &format!("docker_ov{i}"),
            i,
            &["--docker-plugin", &sock.to_string_lossy()],
        );
        assert!(
            plugins.join("tapnet-overlay.sock").exists(),
            "no global plugin socket: {}",
            env.daemon_log()
        );
        let dk = Dockerd::start_with(
            &env,
            &plugins,
            &["--cluster-store", &store, "--cluster-advertise", "ul0:2376"],
        );
        let tar = busybox_rootfs_tar(&dk.dir, &format!("hello from host {i}"));
        dk.ok(&["import", &tar.to_string_lossy(), "tn-busybox"]);
        hosts.push(env);
        dockers.push(dk);
    }
    // the local plugin stays local (one Docker host's)
    dockers[0].ok(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--subnet",
        "10.97.0.0/24",
        "dloc",
    ]);
    let ls = dockers[0].ok(&["network", "ls", "--format", "{{.Name}} {{.Scope}}"]);
    assert!(ls.lines().any(|l| l == "dloc local"), "{ls}");
    let ls = dockers[1].ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.lines().any(|l| l == "dloc"), "{ls}");
    dockers[0].ok(&["network", "rm", "dloc"]);
    // the global one refuses other drivers
    let e = dockers[0].fail(&[
        "network",
        "create",
        "-d",
        "tapnet-overlay",
        "-o",
        "tapnet.driver=macvlan",
        "bad",
    ]);
    assert!(e.contains("overlay networks only"), "{e}");
    let id = dockers[0].ok(&[
        "network",
        "create",
        "-d",
        "tapnet-overlay",
        "--subnet",
        "10.95.0.0/24",
        "dov",
    ]);
    let name = format!("docker-{}", &id[..12]);
    // Docker's view on both hosts: the same network, scope global
    for dk in &dockers {
        let ok = wait_until(Duration::from_secs(15), || {
            dk.docker(&[
                "network",
                "ls",
                "--format",
                "{{.Name}} {{.Driver}} {{.Scope}}",
            ])
            .stdout
            .split(|b| *b == b'\n')
            .any(|l| l == b"dov tapnet-overlay global")
        });
        assert!(ok, "{}", dk.ok(&["network", "ls"]));
    }
    // tapnet's view on both: one overlay network with Docker's id
    for h in &hosts {
        let ok = wait_until(Duration::from_secs(15), || {
            h.json(&["network", "ls", "--format", "json"])
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == id.as_str() && n["name"] == name.as_str())
        });
        assert!(ok, "{}", h.ok(&["network", "ls"]));
        let n = &h.json(&["network", "inspect", &name])[0];
        assert_eq!(n["Scope"], "global", "{n}");
        assert_eq!(n["Tapnet"]["subnet"], "10.95.0.0/24", "{n}");
    }
    // a web server on host 2, asked by name from host 1
    dockers[1].run_d("web", "dov", &[], HTTPD);
    let web_ip = dockers[1].ip_on("web", "dov");
    // host 1's tapnet has host 2's endpoint as a peer (from the store)
    let ok = wait_until(Duration::from_secs(15), || {
        hosts[0].inspect(&name)["overlay"]
            .to_string()
            .contains(&web_ip)
    });
    assert!(ok, "{}", hosts[0].inspect(&name));
    // by address (tapnet's tunnel), then by name (Docker's DNS as well)
    let out = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();
    let ping = out(dockers[0].run_rm("dov", &["ping", "-c", "3", "-W", "5", &web_ip]));
    assert!(
        ping.contains("3 packets received"),
        "{ping}\nhost 1: {}\nhost 2: {}",
        hosts[0].inspect(&name),
        hosts[1].inspect(&name)
    );
    let ns = out(dockers[0].run_rm("dov", &["nslookup", "web"]));
    assert!(ns.contains(&web_ip), "{ns}");
    // (busybox 1.35's wget -T crashes here)
    let got = out(dockers[0].run_rm("dov", &["wget", "-q", "-O", "-", "http://web/"]));
    assert_eq!(got.trim(), "hello from host 2");
    let ping = out(dockers[0].run_rm("dov", &["ping", "-c", "3", "-W", "5", "web"]));
    assert!(ping.contains("3 packets received"), "{ping}");
    // two addresses Docker handed out on two hosts: both claimed in
    // tapnet's store, and distinct
    dockers[0].run_d("c1", "dov", &[], &["sleep", "1000"]);
    let c1_ip = dockers[0].ip_on("c1", "dov");
    assert_ne!(c1_ip, web_ip);
    // both claimed in tapnet's store, each by its host's endpoint
    let ipam = u.etcd_get_prefix(&format!("/tapnet/v1/ipam/{name}/"));
    for ip in [&web_ip, &c1_ip] {
        let held = ipam
            .lines()
            .skip_while(|l| !l.ends_with(&format!("/{ip}")))
            .nth(1)
            .unwrap_or_default();
        assert!(
            held.starts_with("host-") && held.contains("/docker-"),
            "{ip}: {ipam}"
        );
    }
    let got = out(dockers[1].run_rm("dov", &["ping", "-c", "2", "-W", "5", "c1"]));
    assert!(got.contains("2 packets received"), "{got}");
    // in use on host 2: Docker refuses the removal on host 1
    // a claim host 1 still holds for an endpoint it no longer has (its
    // release failed while its lease lived on): when Docker's IPAM hands
    // that address out again, host 1 takes it over
    let host1 = std::fs::read_to_string(hosts[0].state_dir().join("cluster-host")).unwrap();
    u.etcd_put(
        &format!("/tapnet/v1/ipam/{name}/10.95.0.50"),
        &format!("{}/docker-000000000000", host1.trim()),
    );
    dockers[0].run_d("c2", "dov", &["--ip", "10.95.0.50"], &["sleep", "1000"]);
    let ipam = u.etcd_get_prefix(&format!("/tapnet/v1/ipam/{name}/10.95.0.50"));
    assert!(
        !ipam.contains("docker-000000000000") && ipam.contains(host1.trim()),
        "{ipam}"
    );
    dockers[0].ok(&["rm", "-f", "c2"]);
    // tapnet on host 2 killed and restarted while web runs: it finds
    // web's TAP again in its container and publishes the endpoint anew;
    // host 1 reaches web again
    hosts[1].stop_daemon(libc::SIGKILL);
    hosts[1].start_daemon();
    let ok = wait_until(Duration::from_secs(20), || {
        hosts[1].daemon_log().matches("connected as host").count() >= 2
    });
    assert!(ok, "{}", hosts[1].daemon_log());
    assert!(
        hosts[1].daemon_log().contains("Docker's TAP is eth0 in"),
        "{}",
        hosts[1].daemon_log()
    );
    // (host 1 asks until host 2's server answers)
    let answers = |dk: &Dockerd, url: &str| {
        wait_until(Duration::from_secs(20), || {
            out(dk.run_rm("dov", &["wget", "-q", "-O", "-", url])).trim() == "hello from host 2"
        })
    };
    assert!(
        answers(&dockers[0], "http://web/"),
        "web after host 2's tapnet restarted: {}",
        hosts[0].inspect(&name)
    );
    dockers[0].ok(&["rm", "-f", "c1"]);
    // (Docker counts endpoints on every host in its own store)
    let e = dockers[0].fail(&["network", "rm", "dov"]);
    assert!(e.contains("dov") && e.contains("active endpoints"), "{e}");
    dockers[1].ok(&["rm", "-f", "web"]);
    // host 2's dockerd restarted: the network is still there (from
    // Docker's store), and a new container on it is reached from host 1
    dockers.pop().expect("two").stop();
    dockers.push(Dockerd::start_with(
        &hosts[1],
        &dirs[1].0,
        &["--cluster-store", &store, "--cluster-advertise", "ul0:2376"],
    ));
    dockers[1].run_d("web2", "dov", &[], HTTPD);
    assert!(
        answers(&dockers[0], "http://web2/"),
        "web2 after host 2's dockerd restarted: {}",
        hosts[0].inspect(&name)
    );
    dockers[1].ok(&["rm", "-f", "web2"]);
    // host 2's endpoint leaves host 1's peers, then the network goes
    let ok = wait_until(Duration::from_secs(15), || {
        !hosts[0].inspect(&name)["overlay"]
            .to_string()
            .contains(&web_ip)
    });
    assert!(ok, "{}", hosts[0].inspect(&name));
    dockers[0].ok(&["network", "rm", "dov"]);
    for h in &hosts {
        let ok = wait_until(Duration::from_secs(15), || h.inspect_ok(&name).is_none());
        assert!(ok, "{name} still on a host: {}", h.ok(&["network", "ls"]));
    }
    // Docker's own overlay option: an encrypted tapnet overlay network
    dockers[0].ok(&[
        "network",
        "create",
        "-d",
        "tapnet-overlay",
        "--subnet",
        "10.96.0.0/24",
        "-o",
        "encrypted",
        "denc",
    ]);
    let id = dockers[1].ok(&["network", "inspect", "-f", "{{.Id}}", "denc"]);
    let enc = format!("docker-{}", &id[..12]);
    let ok = wait_until(Duration::from_secs(15), || {
        hosts[1]
            .inspect_ok(&enc)
            .is_some_and(|n| n["overlay"]["encrypted"] == true)
    });
    assert!(ok, "{}", hosts[1].ok(&["network", "ls"]));
    dockers[1].run_d("s1", "denc", &[], &["sleep", "1000"]);
    let got = out(dockers[0].run_rm("denc", &["ping", "-c", "2", "-W", "5", "s1"]));
    assert!(
        got.contains("2 packets received"),
        "{got}\nhost 1: {}\nhost 2: {}",
        hosts[0].inspect(&enc)["overlay"],
        hosts[1].inspect(&enc)["overlay"]
    );
    // (the ping went through the encrypted network's own tunnel)
    let t = hosts[0].inspect(&enc)["overlay"]["tunnel_port"]["counters"].clone();
    assert!(
        ctr(&t, "tx_frames") >= 2 && ctr(&t, "rx_frames") >= 2,
        "{t}"
    );
    dockers[1].ok(&["rm", "-f", "s1"]);
    drop(dockers);
    drop(hosts);
}
