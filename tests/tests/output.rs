//! Docker-compatible output: `network ls` with Docker's columns, filters
//! and `--format` Go templates; `network create --label`; `network
//! inspect` with Docker's field names (and tapnet's own view under
//! `Tapnet`) and `-f` templates, as Docker's docs write them; checked
//! against live containers passing traffic, and across a daemon restart.

use serde_json::Value;
use tapnet_tests::*;

/// Names `network ls` lists with `args`, sorted.
fn names(env: &Env, args: &[&str]) -> Vec<String> {
    let mut a = vec!["network", "ls", "--format", "{{.Name}}"];
    a.extend_from_slice(args);
    let mut v: Vec<String> = lines(&env.ok(&a)).iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.is_empty()).collect()
}

#[test]
fn docker_compatible_ls_and_inspect() {
    let Some(mut env) = Env::new("docker_compatible_ls_and_inspect", &[]) else {
        return;
    };
    env.ok(&[
        "network",
        "create",
        "front",
        "--subnet",
        "10.66.0.0/24",
        "--label",
        "env=prod",
        "--label",
        "team=web",
    ]);
    env.ok(&[
        "network",
        "create",
        "back",
        "--subnet",
        "10.67.0.0/24",
        "--ip-range",
        "10.67.0.128/25",
        "--internal",
        "--label",
        "env=dev",
    ]);
    let web = env.container("front", "web", &[]);
    let api = env.container("front", "api", &[]);
    assert!(ping(&env, &web.ns, &api.ip.to_string(), 3), "web -> api");

    // the default table: Docker's four columns
    let ls = env.ok(&["network", "ls"]);
    let rows = lines(&ls);
    assert_eq!(
        rows[0].split_whitespace().collect::<Vec<_>>(),
        ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"],
        "{ls}"
    );
    for (name, driver) in [
        ("bridge", "bridge"),
        ("host", "host"),
        ("none", "null"),
        ("front", "bridge"),
        ("back", "bridge"),
    ] {
        assert!(
            rows.iter().any(|r| {
                let w: Vec<&str> = r.split_whitespace().collect();
                w.len() == 4
                    && w[0].len() == 12
                    && w[1] == name
                    && w[2] == driver
                    && w[3] == "local"
            }),
            "{name} missing from:\n{ls}"
        );
    }
    // -q: ids, as many as networks
    let ids = env.ok(&["network", "ls", "-q"]);
    assert_eq!(lines(&ids).len(), 5, "{ids}");
    assert!(
        lines(&ids)
            .iter()
            .all(|i| i.len() == 12 && i.chars().all(|c| c.is_ascii_hexdigit())),
        "{ids}"
    );
    // --long adds the addressing
    let long = env.ok(&["network", "ls", "--long", "--filter", "name=front"]);
    assert!(
        long.contains("SUBNET") && long.contains("10.66.0.0/24") && long.contains("10.66.0.1"),
        "{long}"
    );

    // filters: one key's values are alternatives, keys must all match
    assert_eq!(names(&env, &["--filter", "label=env=prod"]), ["front"]);
    assert_eq!(names(&env, &["--filter", "label=env"]), ["back", "front"]);
    assert_eq!(names(&env, &["--filter", "type=custom"]), ["back", "front"]);
    assert_eq!(
        names(&env, &["--filter", "type=builtin"]),
        ["bridge", "host", "none"]
    );
    assert_eq!(
        names(
            &env,
            &["--filter", "driver=null", "--filter", "driver=host"]
        ),
        ["host", "none"]
    );
    assert_eq!(
        names(&env, &["--filter", "driver=bridge", "--filter", "name=ro"]),
        ["front"]
    );
    let e = env.fail(&["network", "ls", "--filter", "colour=red"]);
    assert!(
        e.contains("invalid filter 'colour'") && e.lines().count() == 1,
        "{e}"
    );

    // templates as Docker's docs write them
    let t = env.ok(&[
        "network",
        "ls",
        "--filter",
        "name=front",
        "--format",
        "{{.ID}}: {{.Driver}} {{.Labels}}",
    ]);
    assert!(t.trim().ends_with(": bridge env=prod,team=web"), "{t}");
    let t = env.ok(&[
        "network",
        "ls",
        "--filter",
        "label=env",
        "--format",
        "table {{.Name}}\\t{{.Internal}}",
    ]);
    let tl = lines(&t);
    assert_eq!(
        tl[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "INTERNAL"],
        "{t}"
    );
    assert!(
        tl.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["back", "true"]),
        "{t}"
    );
    let e = env.fail(&["network", "ls", "--format", "{{.Name"]);
    assert!(e.contains("--format") && e.lines().count() == 1, "{e}");
    let e = env.fail(&["network", "ls", "--format", "{{.NoSuchField}}"]);
    assert!(e.contains("NoSuchField") && e.lines().count() == 1, "{e}");

    // inspect: Docker's shape
    let v = env.json(&["network", "inspect", "front", "back"]);
    assert_eq!(v.as_array().map(|a| a.len()), Some(2), "{v}");
    let f = &v[0];
    assert_eq!(f["Name"], "front");
    assert_eq!(f["Driver"], "bridge");
    assert_eq!(f["Scope"], "local");
    assert_eq!(f["EnableIPv6"], false);
    assert_eq!(f["Internal"], false);
    assert_eq!(v[1]["Internal"], true);
    assert_eq!(f["IPAM"]["Driver"], "default");
    assert_eq!(f["IPAM"]["Config"][0]["Subnet"], "10.66.0.0/24");
    assert_eq!(f["IPAM"]["Config"][0]["Gateway"], "10.66.0.1");
    assert_eq!(v[1]["IPAM"]["Config"][0]["IPRange"], "10.67.0.128/25");
    assert_eq!(f["Labels"]["team"], "web");
    assert!(
        f["Created"]
            .as_str()
            .is_some_and(|c| c.ends_with('Z') && c.contains('T')),
        "{f}"
    );
    let ps = env.json(&["ps", "--format", "json"]);
    let web_id = ps
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "web"))
        .map(|c| c["id"].as_str().unwrap_or_default().to_string())
        .expect("web in ps");
    let c = &f["Containers"][&web_id];
    assert_eq!(c["Name"], "web", "{f}");
    assert_eq!(c["IPv4Address"], format!("{}/24", web.ip));
    assert_eq!(c["MacAddress"], web.mac);
    assert_eq!(c["IPv6Address"], "");
    assert!(
        c["EndpointID"].as_str().is_some_and(|e| e.len() == 64),
        "{c}"
    );
    // tapnet's own view: the traffic above on web's port
    let own = &f["Tapnet"];
    assert!(ctr(own, "endpoints.web.counters.rx_frames") >= 3, "{own}");
    assert_eq!(env.inspect("front")["subnet"], "10.66.0.0/24");

    // inspect -f
    let s = env.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        "front",
        "back",
    ]);
    assert_eq!(lines(&s), ["10.66.0.0/24", "10.67.0.0/24"]);
    let s = env.ok(&["network", "inspect", "--format", "{{json .}}", "front"]);
    let j: Value = serde_json::from_str(s.trim()).expect("{{json .}} is JSON");
    assert_eq!(j["Containers"][&web_id]["Name"], "web");
    let s = env.ok(&[
        "network",
        "inspect",
        "-f",
        "{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}",
        "front",
    ]);
    let mut got: Vec<&str> = s.split_whitespace().collect();
    got.sort();
    assert_eq!(
        got,
        [format!("api={}/24", api.ip), format!("web={}/24", web.ip)]
    );
    assert_eq!(
        env.ok(&[
            "network",
            "inspect",
            "-f",
            "{{index .Labels \"env\"}}",
            "back"
        ])
        .trim(),
        "dev"
    );
    let e = env.fail(&["network", "inspect", "-f", "{{.Nope}}", "front"]);
    assert!(e.contains("Nope") && e.lines().count() == 1, "{e}");

    // tapnet inspect: a container in Docker's shape, a network as above
    env.ok(&["network", "connect", "back", "web", "--alias", "www"]);
    let pub_ = env.container(
        "front",
        "pub",
        &["-p", "18080:80", "-p", "127.0.0.1:15353:53/udp"],
    );
    let v = env.json(&["inspect", "web", "front", "pub"]);
    let w = &v[0];
    assert_eq!(w["Name"], "/web");
    assert_eq!(w["Id"], web_id);
    assert_eq!(w["HostConfig"]["NetworkMode"], "front");
    let n = &w["NetworkSettings"]["Networks"];
    assert_eq!(n["front"]["IPAddress"], web.ip.to_string());
    assert_eq!(n["front"]["IPPrefixLen"], 24);
    assert_eq!(n["front"]["Gateway"], "10.66.0.1");
    assert_eq!(n["front"]["MacAddress"], web.mac);
    assert_eq!(n["front"]["NetworkID"], f["Id"]);
    // the same endpoint id from both sides
    assert_eq!(
        n["front"]["EndpointID"],
        f["Containers"][&web_id]["EndpointID"]
    );
    assert_eq!(n["back"]["Aliases"], serde_json::json!(["www"]));
    assert!(
        n["back"]["IPAddress"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.67.0.")),
        "{n}"
    );
    assert!(
        w["NetworkSettings"]["SandboxKey"]
            .as_str()
            .is_some_and(|k| !k.is_empty()),
        "{w}"
    );
    assert_eq!(v[1]["Name"], "front");
    assert_eq!(v[1]["IPAM"]["Config"][0]["Subnet"], "10.66.0.0/24");
    let ports = &v[2]["NetworkSettings"]["Ports"];
    assert_eq!(ports["80/tcp"][0]["HostPort"], "18080", "{ports}");
    assert_eq!(ports["80/tcp"][0]["HostIp"], "0.0.0.0", "{ports}");
    assert_eq!(ports["53/udp"][0]["HostIp"], "127.0.0.1", "{ports}");
    // the template Docker's own test runs against dockerd (tests/docker.rs)
    let ip = env.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"back\").IPAddress}}",
        "web",
    ]);
    assert!(ip.trim().starts_with("10.67.0."), "{ip}");
    let ip = env.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.front.IPAddress}}",
        "pub",
    ]);
    assert_eq!(ip.trim(), pub_.ip.to_string());
    // --type, and a name that is nothing: the others printed, then a one-line error
    let e = env.fail(&["inspect", "--type", "network", "web"]);
    assert!(
        e.contains("no such object: web") && e.lines().count() == 1,
        "{e}"
    );
    let o = env.tapnet(&["inspect", "-f", "{{.Name}}", "web", "nothing"]);
    assert!(!o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "/web");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such object: nothing"));

    // bad labels: a clear error, nothing stored
    let before = env.ok(&["network", "ls"]);
    let e = env.fail(&["network", "create", "x", "--label", "=v"]);
    assert!(e.contains("invalid label") && e.lines().count() == 1, "{e}");
    assert_eq!(env.ok(&["network", "ls"]), before);

    // labels are kept across a restart
    env.stop_daemon(libc::SIGTERM);
    env.start_daemon();
    assert_eq!(names(&env, &["--filter", "label=team=web"]), ["front"]);
}
