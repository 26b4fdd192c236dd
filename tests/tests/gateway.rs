//! The gateway answers ARP and ping; `tapnet run` passes exit codes through.

use tapnet_tests::*;

#[test]
fn gateway_answers_and_run_passes_exit_codes() {
    let Some(mut env) = Env::new("gateway_answers_and_run_passes_exit_codes", &[]) else {
        return;
    };
    env.ok(&[
        "network",
        "create",
        "g",
        "--subnet",
        "10.50.0.0/24",
        "--gateway",
        "10.50.0.254",
    ]);
    let c = env.container("g", "c", &[]);
    assert_eq!(
        c.ip.to_string(),
        "10.50.0.1",
        "first free address after a custom gateway"
    );
    assert!(
        ping(&env, &c.ns, "10.50.0.254", 3),
        "gateway did not answer ping"
    );
    let v = env.inspect("g");
    let neigh = env.exec_ok(&c.ns, &["ip", "neigh", "show", "10.50.0.254"]);
    assert!(
        neigh.contains(v["gateway_mac"].as_str().unwrap()),
        "{neigh} vs {v}"
    );
    assert!(ctr(&env.counters("g", "c"), "gateway_replies") >= 4); // ARP + 3 echoes
                                                                   // a large echo (still one frame at MTU 1500) is answered
    assert!(env
        .exec(
            &c.ns,
            &["ping", "-c", "1", "-W", "1", "-s", "1472", "10.50.0.254"]
        )
        .status
        .success());
    // a fragmented one is not (the gateway answers whole echoes only): it
    // is counted, not lost silently
    let before = ctr(&env.counters("g", "c"), "drops.gateway_unsupported");
    assert!(!env
        .exec(
            &c.ns,
            &["ping", "-c", "1", "-W", "1", "-s", "3000", "10.50.0.254"]
        )
        .status
        .success());
    let after = ctr(&env.counters("g", "c"), "drops.gateway_unsupported");
    assert!(
        after >= before + 2,
        "fragments not counted: {before} -> {after}"
    );

    // `tapnet run`: exit codes passed through, the namespace is gone after
    let o = env.tapnet(&[
        "run",
        "--network",
        "g",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        "10.50.0.254",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.tapnet(&[
        "run",
        "--network",
        "g",
        "--name",
        "seven",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7));
    let o = env.tapnet(&["run", "--network", "g", "--", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127));
    let ps = env.json(&["ps", "--format", "json"]);
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps}");
    assert!(!std::path::Path::new(&format!("/run/netns/{}seven", env.prefix)).exists());
    // the container sees its own name and address
    let o = env.ok(&[
        "run",
        "--network",
        "g",
        "--ip",
        "10.50.0.77",
        "--mtu",
        "1400",
        "--",
        "ip",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(o.contains("10.50.0.77/24"), "{o}");
    let o = env.ok(&[
        "run",
        "--network",
        "g",
        "--mtu",
        "1400",
        "--",
        "ip",
        "-o",
        "link",
        "show",
        "eth0",
    ]);
    assert!(o.contains("mtu 1400"), "{o}");
}
