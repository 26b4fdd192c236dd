//! Minimal manual harness: `tapswitch NS1 NS2 ...` creates `eth0` in each
//! named network namespace, attaches them to one network, and prints
//! counters every 5 s. The real entry point is `tapnet daemon`.
use std::time::Duration;
use vswitch::*;

fn main() {
    let dp = Datapath::start(DatapathConfig::default()).expect("datapath");
    dp.add_network(
        0,
        NetConfig {
            gateway_ip: "10.99.0.1".parse().unwrap(),
            gateway_mac: Mac([2, 0x42, 10, 99, 0, 1]),
            prefix: 24,
            routed: false,
            gateway: true,
            v6: None,
        },
    )
    .unwrap();
    for ns in std::env::args().skip(1) {
        let fds = in_netns(&NetnsRef::parse(&ns), || {
            open_tap(&TapOptions {
                name: "eth0".into(),
                offload: true,
                persist: false,
                queues: 1,
                clone_device: None,
            })
        })
        .unwrap()
        .unwrap();
        for fd in fds {
            dp.add_port(&ns, 0, 1500, fd).unwrap();
        }
    }
    println!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let s = dp.snapshot(Duration::from_secs(1)).unwrap();
        for p in s.ports {
            println!("{} {:?}", p.name, p.counters);
        }
    }
}
