//! Docker's remote network driver, with the real dockerd (Debian's
//! docker.io) started by the test in the daemon's namespace, with a
//! private plugin directory (a mount namespace of its own) and every
//! iptables/bridge feature off: networks, containers on them, -p.

use tapnet_tests::dockerd::*;
use tapnet_tests::*;

#[test]
fn docker_creates_and_removes_tapnet_networks() {
    let plugins = std::env::temp_dir().join(format!("tn_dplug_{}", std::process::id()));
    std::fs::create_dir_all(&plugins).unwrap();
    let _rm = RmDir(plugins.clone());
    let sock = plugins.join("tapnet.sock");
    let Some(mut env) = Env::new(
        "docker_plugin",
        &["--docker-plugin", &sock.to_string_lossy()],
    ) else {
        return;
    };
    let dk = Dockerd::start(&env, &plugins);
    let id = dk.ok(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--subnet",
        "10.74.0.0/24",
        "-o",
        "tapnet.port_security=true",
        "dn",
    ]);
    let nets = env.json(&["network", "ls", "--format", "json"]);
    let n = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id.as_str())
        .unwrap_or_else(|| panic!("Docker's network {id} not in tapnet: {nets}"));
    assert_eq!(n["name"], format!("docker-{}", &id[..12]));
    assert_eq!(n["subnet"], "10.74.0.0/24");
    assert_eq!(n["gateway"], "10.74.0.1");
    assert_eq!(n["options"]["port_security"], "true");
    // tapnet's checks speak through Docker
    env.ok(&["network", "create", "--subnet", "10.75.0.0/24", "t1"]);
    let e = dk.fail(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--subnet",
        "10.75.0.0/24",
        "dn2",
    ]);
    assert!(e.contains("overlaps") && e.contains("t1"), "{e}");
    let e = dk.fail(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--subnet",
        "10.76.0.0/24",
        "-o",
        "tapnet.colour=blue",
        "dn3",
    ]);
    assert!(e.contains("unknown option"), "{e}");
    // Docker's own IPAM starts at 172.17.0.0/16, tapnet's default bridge:
    // refused clearly (pass --subnet)
    let e = dk.fail(&["network", "create", "-d", "tapnet", "dn4"]);
    assert!(e.contains("overlaps with network bridge"), "{e}");
    // containers on it: Docker moves tapnet's TAP in as eth0 and its own
    // DNS resolves names; the traffic goes through tapnet's switch (the
    // daemon's bridge is off)
    let tar = busybox_rootfs_tar(&dk.dir, "hello from docker");
    dk.ok(&["import", &tar.to_string_lossy(), "tn-busybox"]);
    dk.run_d("web", "dn", &["-p", "18082:80"], HTTPD);
    let a_ip = dk.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"dn\").IPAddress}}",
        "web",
    ]);
    assert!(a_ip.starts_with("10.74.0."), "{a_ip}");
    let got = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn",
        "tn-busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://web/",
    ]);
    assert_eq!(got, "hello from docker");
    // -p: published by tapnet (Docker starts no proxy for remote drivers)
    let body = http_get_local(&env.host_ns, 18082);
    assert!(
        body.contains("hello from docker"),
        "{body:?}; listening: {}; log: {}",
        env.exec_ok(&env.host_ns, &["ss", "-ltnp"]),
        env.daemon_log()
    );
    // --ip, --mac-address (port security admits them) and --network-alias
    dk.run_d(
        "pinned",
        "dn",
        &[
            "--ip",
            "10.74.0.50",
            "--mac-address",
            "02:aa:bb:cc:dd:ee",
            "--network-alias",
            "svc",
        ],
        HTTPD,
    );
    let link = dk.ok(&["exec", "pinned", "ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("02:aa:bb:cc:dd:ee"), "{link}");
    let got = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn",
        "tn-busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://svc/",
    ]);
    assert_eq!(got, "hello from docker");
    let addrs = dk.ok(&["exec", "pinned", "ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains("10.74.0.50/24"), "{addrs}");
    dk.ok(&["rm", "-f", "pinned"]);
    // hot-plug: connect web to a second tapnet network, then disconnect
    dk.ok(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--subnet",
        "10.79.0.0/24",
        "dn5",
    ]);
    dk.ok(&["network", "connect", "dn5", "web"]);
    let ip5 = dk.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"dn5\").IPAddress}}",
        "web",
    ]);
    assert!(ip5.starts_with("10.79.0."), "{ip5}");
    let got = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn5",
        "tn-busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{ip5}/"),
    ]);
    assert_eq!(got, "hello from docker");
    dk.ok(&["network", "disconnect", "dn5", "web"]);
    let addrs = dk.ok(&["exec", "web", "ip", "-o", "-4", "addr"]);
    assert!(
        !addrs.contains(&ip5) && addrs.contains(&a_ip),
        "after disconnect: {addrs}"
    );
    dk.ok(&["network", "rm", "dn5"]);
    let ping = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn",
        "tn-busybox",
        "ping",
        "-c",
        "2",
        "web",
    ]);
    // by name (Docker's DNS), to web's tapnet address
    assert!(
        ping.contains("2 packets received") && ping.contains(&format!("({a_ip})")),
        "{ping}"
    );
    assert!(
        env.daemon_log().contains(&format!("as {a_ip} (tn")),
        "{}",
        env.daemon_log()
    );
    // tapnet's IPAM: a subnet by tapnet's rules (not 172.17.0.0/16, its
    // default bridge's), addresses from it
    let id6 = dk.ok(&[
        "network",
        "create",
        "-d",
        "tapnet",
        "--ipam-driver",
        "tapnet",
        "dn6",
    ]);
    let nets = env.json(&["network", "ls", "--format", "json"]);
    let n6 = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id6.as_str())
        .expect("dn6 in tapnet")
        .clone();
    let subnet = n6["subnet"].as_str().unwrap().to_string();
    assert_ne!(subnet, "172.17.0.0/16");
    let prefix = subnet.rsplit_once('.').unwrap().0.to_string(); // a.b.c
                                                                 // 100 MB over TCP between two Docker containers, checksums compared
    std::fs::create_dir_all(env.dir.join("big")).unwrap();
    let blob = env.random_file("big/blob", 100 << 20);
    let www = env.dir.join("big");
    dk.run_d(
        "files",
        "dn",
        &["-v", &format!("{}:/www:ro", www.display())],
        HTTPD,
    );
    let sum = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn",
        "tn-busybox",
        "sh",
        "-c",
        "wget -q -O - http://files/blob | sha256sum",
    ]);
    assert_eq!(sum.split_whitespace().next(), Some(sha256(&blob).as_str()));
    // tapnet restarted (killed) while Docker's containers run: they keep
    // their interfaces, tapnet finds them again, traffic resumes
    env.stop_daemon(libc::SIGKILL);
    env.start_daemon();
    let log = env.daemon_log();
    assert!(log.contains("Docker's TAP is eth0 in"), "{log}");
    let got = dk.ok(&["exec", "files", "wget", "-q", "-O", "-", "http://web/"]);
    assert_eq!(got, "hello from docker");
    let got = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn",
        "tn-busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://web/",
    ]);
    assert_eq!(got, "hello from docker");
    let body = http_get_local(&env.host_ns, 18082);
    assert!(body.contains("hello from docker"), "{body:?}");
    // Docker's endpoints are the network's endpoints in tapnet
    let dn = env.inspect(&format!("docker-{}", &id[..12]));
    let eps = dn["endpoints"].to_string();
    assert!(eps.contains(&a_ip) && eps.contains("docker-"), "{dn}");
    assert!(env
        .fail(&[
            "network",
            "disconnect",
            &format!("docker-{}", &id[..12]),
            dn["endpoints"].as_object().unwrap().keys().next().unwrap()
        ])
        .contains("Docker's"));
    // the IPAM pool outlived tapnet's restart: addresses still come from it
    let addr = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn6",
        "tn-busybox",
        "ip",
        "-o",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(
        addr.contains(&format!("{prefix}.")),
        "{addr} not in {subnet}"
    );
    dk.ok(&["network", "rm", "dn6"]);
    dk.ok(&["rm", "-f", "files"]);
    // in use: Docker refuses to remove it; after rm -f it goes
    let e = dk.fail(&["network", "rm", "dn"]);
    assert!(e.contains("active endpoints"), "{e}");
    dk.ok(&["rm", "-f", "web"]);
    // the port went with it
    let gone = in_ns(&env.host_ns, || {
        std::net::TcpStream::connect(("127.0.0.1", 18082)).is_err()
    })
    .join()
    .unwrap();
    assert!(gone, "18082 still published after docker rm");
    // dockerd restarted: the network is still Docker's and tapnet's, and
    // new containers on it talk
    dk.stop();
    let dk = Dockerd::start(&env, &plugins);
    dk.run_d("web2", "dn", &[], HTTPD);
    let got = dk.ok(&[
        "run",
        "--rm",
        "--network",
        "dn",
        "tn-busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://web2/",
    ]);
    assert_eq!(got, "hello from docker");
    dk.ok(&["rm", "-f", "web2"]);
    // Docker's rm removes it from tapnet
    dk.ok(&["network", "rm", "dn"]);
    let nets = env.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("docker-"), "{nets}");
}
