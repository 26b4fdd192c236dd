//! The CNI plugin as runtimes call it: `CNI_*` in the environment, the
//! configuration on stdin, a result or an error as JSON on stdout.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;
use tapnet_tests::dnsutil::*;
use tapnet_tests::*;

struct Call<'a> {
    cmd: &'a str,
    id: &'a str,
    netns: &'a str,
    ifname: &'a str,
    args: &'a str,
}

/// Runs the plugin; (exit status ok, stdout as JSON or Null).
fn cni(env: &Env, c: &Call, conf: &Value) -> (bool, Value) {
    let bin = env.bin.with_file_name("tapnet-cni");
    let mut p = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", c.cmd)
        .env("CNI_CONTAINERID", c.id)
        .env("CNI_NETNS", c.netns)
        .env("CNI_IFNAME", c.ifname)
        .env("CNI_ARGS", c.args)
        .env("CNI_PATH", bin.parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release --bins)", bin.display()));
    p.stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = p.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let v = if out.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    };
    (o.status.success(), v)
}

fn conf(env: &Env, net: &str, extra: Value) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "tn", "type": "tapnet",
        "network": net, "socket": env.sock});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

#[test]
fn cni_add_check_del_gc() {
    let Some(env) = Env::new("cni_add_check_del_gc", &[]) else {
        return;
    };
    env.ok(&["network", "create", "cn", "--subnet", "10.70.0.0/24"]);
    let (p1, p2) = (env.netns("p1"), env.netns("p2"));
    let (n1, n2) = (ns_path(&p1), ns_path(&p2));
    let cf = conf(&env, "cn", json!({}));
    let id1 = "a1".repeat(32);
    let id2 = "b2".repeat(32);
    let add1 = Call {
        cmd: "ADD",
        id: &id1,
        netns: &n1,
        ifname: "eth0",
        args: "IgnoreUnknown=1;K8S_POD_NAME=web",
    };
    let (ok, r1) = cni(&env, &add1, &cf);
    assert!(ok, "{r1}");
    assert_eq!(r1["cniVersion"], "1.0.0");
    assert_eq!(r1["ips"][0]["address"], "10.70.0.2/24", "{r1}");
    assert_eq!(r1["interfaces"][0]["sandbox"], n1.as_str());
    assert_eq!(r1["interfaces"][0]["name"], "eth0");
    assert_eq!(r1["routes"][0]["gw"], "10.70.0.1");
    assert_eq!(r1["dns"]["nameservers"][0], "10.70.0.1");
    assert!(env
        .exec_ok(&p1, &["ip", "-o", "addr", "show", "eth0"])
        .contains("10.70.0.2/24"));
    // a static address from CNI_ARGS, another interface name
    let add2 = Call {
        cmd: "ADD",
        id: &id2,
        netns: &n2,
        ifname: "net1",
        args: "IP=10.70.0.50",
    };
    let (ok, r2) = cni(&env, &add2, &cf);
    assert!(ok, "{r2}");
    assert_eq!(r2["ips"][0]["address"], "10.70.0.50/24");
    assert!(env
        .exec_ok(&p2, &["ip", "-o", "addr", "show", "net1"])
        .contains("10.70.0.50"));
    // they talk, through the switch; the pod name resolves
    assert!(ping(&env, &p2, "10.70.0.2", 2));
    let q = make_query(7, "web", hickory_proto::rr::RecordType::A, None);
    let a = in_ns(&p2, move || {
        udp_query("10.70.0.1".parse().unwrap(), &q, Duration::from_secs(3))
    })
    .join()
    .unwrap()
    .expect("an answer for the pod name");
    assert_eq!(
        addrs(&parse(&a)),
        vec!["10.70.0.2".parse::<Ipv4Addr>().unwrap()]
    );
    // CHECK against the result; a wrong result is an error
    let chk = Call {
        cmd: "CHECK",
        ..add1
    };
    let (ok, v) = cni(&env, &chk, &conf(&env, "cn", json!({"prevResult": r1})));
    assert!(ok, "{v}");
    let mut wrong = r1.clone();
    wrong["ips"][0]["address"] = json!("10.70.0.99/24");
    let (ok, v) = cni(&env, &chk, &conf(&env, "cn", json!({"prevResult": wrong})));
    assert!(!ok && v["code"] == 3, "{v}");
    // DEL, then DEL again: both succeed; the interface and address are gone
    let del1 = Call { cmd: "DEL", ..add1 };
    let (ok, v) = cni(&env, &del1, &conf(&env, "cn", json!({"prevResult": r1})));
    assert!(ok, "{v}");
    assert!(!env
        .exec(&p1, &["ip", "link", "show", "eth0"])
        .status
        .success());
    let (ok, v) = cni(&env, &del1, &cf);
    assert!(ok, "second DEL: {v}");
    let (ok, r3) = cni(
        &env,
        &Call {
            id: &"c3".repeat(32),
            ..add1
        },
        &cf,
    );
    assert!(
        ok && r3["ips"][0]["address"] == "10.70.0.2/24",
        "address not released: {r3}"
    );
    // VERSION, STATUS
    let (ok, v) = cni(
        &env,
        &Call {
            cmd: "VERSION",
            ..add1
        },
        &json!({"cniVersion": "1.1.0"}),
    );
    assert!(
        ok && v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0")),
        "{v}"
    );
    let (ok, v) = cni(
        &env,
        &Call {
            cmd: "STATUS",
            ..add1
        },
        &conf(&env, "cn", json!({"cniVersion": "1.1.0"})),
    );
    assert!(ok, "{v}");
    // GC: only id2 is still the runtime's; c3 goes
    let gc = conf(
        &env,
        "cn",
        json!({"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": id2, "ifname": "net1"}]}),
    );
    let (ok, v) = cni(&env, &Call { cmd: "GC", ..add1 }, &gc);
    assert!(ok, "{v}");
    let ps = env.ok(&["ps", "-q"]);
    assert!(ps.contains(&format!("cni-{}", &id2[..60])), "{ps}");
    assert!(!ps.contains("cni-c3"), "GC left {ps}");
}

#[test]
fn cni_errors_are_json_with_codes() {
    let Some(env) = Env::new("cni_errors", &[]) else {
        return;
    };
    env.ok(&["network", "create", "cn", "--subnet", "10.71.0.0/24"]);
    let p = env.netns("p");
    let n = ns_path(&p);
    let id = "d4".repeat(32);
    let add = Call {
        cmd: "ADD",
        id: &id,
        netns: &n,
        ifname: "eth0",
        args: "",
    };
    let expect = |c: &Call, conf: &Value, code: u64, what: &str| {
        let (ok, v) = cni(&env, c, conf);
        assert!(!ok, "{what}: succeeded: {v}");
        assert_eq!(v["code"], code, "{what}: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    };
    // malformed configuration: the bytes are not JSON
    let bin = env.bin.with_file_name("tapnet-cni");
    let mut c = Command::new(&bin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", &id)
        .env("CNI_NETNS", &n)
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"{\"cniVersion\":")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!o.status.success() && v["code"] == 6, "{v}");
    expect(
        &add,
        &json!({"cniVersion": "1.0.0", "type": "tapnet", "socket": env.sock}),
        7,
        "no network",
    );
    expect(&add, &conf(&env, "nope", json!({})), 7, "unknown network");
    expect(
        &add,
        &conf(&env, "cn", json!({"cniVersion": "0.1.0"})),
        1,
        "old version",
    );
    expect(
        &Call { netns: "", ..add },
        &conf(&env, "cn", json!({})),
        4,
        "no CNI_NETNS",
    );
    expect(
        &Call { id: "../x", ..add },
        &conf(&env, "cn", json!({})),
        4,
        "bad container id",
    );
    expect(
        &Call {
            netns: "/run/netns/tn_nonexistent_ns",
            ..add
        },
        &conf(&env, "cn", json!({})),
        5,
        "missing netns",
    );
    expect(
        &Call { cmd: "FROB", ..add },
        &conf(&env, "cn", json!({})),
        4,
        "unknown command",
    );
    let gone = json!({"cniVersion": "1.1.0", "network": "cn", "socket": "/tmp/tn_no_daemon.sock"});
    expect(&add, &gone, 11, "daemon not running");
    expect(
        &Call {
            cmd: "STATUS",
            ..add
        },
        &gone,
        50,
        "STATUS without daemon",
    );
    // nothing was left behind by the failures
    assert_eq!(
        env.ok(&["ps", "-q"]).trim(),
        "",
        "an error left a container"
    );
    // DEL without a daemon and without a namespace: nothing to release
    let (ok, v) = cni(
        &env,
        &Call {
            cmd: "DEL",
            netns: "/run/netns/tn_nonexistent_ns",
            ..add
        },
        &gone,
    );
    assert!(ok, "{v}");
}

#[test]
fn cni_port_mappings_and_chaining() {
    let Some(env) = Env::new("cni_ports", &[]) else {
        return;
    };
    env.ok(&["network", "create", "cn", "--subnet", "10.72.0.0/24"]);
    let p = env.netns("p");
    let n = ns_path(&p);
    let id = "e5".repeat(32);
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo0", "sandbox": n}],
        "ips": [{"address": "192.0.2.9/32", "interface": 0}]});
    let cf = conf(
        &env,
        "cn",
        json!({"prevResult": prev, "runtimeConfig": {"portMappings": [
            {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}),
    );
    let add = Call {
        cmd: "ADD",
        id: &id,
        netns: &n,
        ifname: "eth0",
        args: "",
    };
    let (ok, r) = cni(&env, &add, &cf);
    assert!(ok, "{r}");
    // chained: the previous plugin's interface and address come first
    assert_eq!(r["interfaces"][0]["name"], "lo0");
    assert_eq!(r["ips"][0]["address"], "192.0.2.9/32");
    assert_eq!(r["ips"][1]["interface"], 1);
    assert_eq!(r["ips"][1]["address"], "10.72.0.2/24");
    // the published port reaches the container from the host side
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(&p, move || {
        let l = TcpListener::bind("0.0.0.0:80").unwrap();
        tx.send(()).unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(b"hello from the pod");
            }
        });
    });
    rx.recv().unwrap();
    let got = in_ns(&env.host_ns, || {
        let mut s = TcpStream::connect(("127.0.0.1", 18080)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = String::new();
        let _ = s.read_to_string(&mut b);
        b
    })
    .join()
    .unwrap();
    assert_eq!(got, "hello from the pod");
    let (ok, v) = cni(&env, &Call { cmd: "DEL", ..add }, &cf);
    assert!(ok, "{v}");
    let nat = env.json(&["nat", "ls", "--format", "json"]);
    assert_eq!(
        nat["published"].as_array().map_or(0, |p| p.len()),
        0,
        "{nat}"
    );
}
