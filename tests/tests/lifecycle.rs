//! Container lifecycles without debris: a `run` killed with SIGKILL takes
//! its container and command with it (the daemon watches the run), also
//! when it ended while the daemon was down; `tapnet rm` stops a running
//! container's command, as `docker rm -f` does.

use std::time::Duration;
use tapnet_tests::*;

/// Whether a process runs `sleep SECS` (a number no other test uses).
fn sleeping(secs: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| c == format!("sleep\0{secs}\0").as_bytes())
}

fn listed(env: &Env, name: &str) -> bool {
    env.ok(&["ps", "-q"]).lines().any(|l| l == name)
}

fn ns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn start(env: &mut Env, name: &str, secs: &str) -> usize {
    start_cmd(env, name, secs, &["sleep", secs])
}

fn start_cmd(env: &mut Env, name: &str, secs: &str, cmd: &[&str]) -> usize {
    let mut args = vec!["run", "--name", name, "--"];
    args.extend_from_slice(cmd);
    let idx = env.spawn_tapnet(&args);
    assert!(
        wait_until(Duration::from_secs(10), || listed(env, name)
            && sleeping(secs)),
        "{name} did not start: {}",
        std::fs::read_to_string(env.bg_log(idx)).unwrap_or_default()
    );
    idx
}

#[test]
fn killed_runs_are_reaped_and_rm_stops_commands() {
    let Some(mut env) = Env::new("killed_runs_are_reaped_and_rm_stops_commands", &[]) else {
        return;
    };
    // SIGKILL of the run: container, namespace, command (and what it
    // started) and resolv.conf go
    let idx = start_cmd(
        &mut env,
        "k1",
        "3001",
        &["sh", "-c", "sleep 3011 & sleep 3001"],
    );
    assert!(wait_until(Duration::from_secs(5), || sleeping("3011")));
    let run_pid = env.bg_pid(idx);
    let resolv = std::env::temp_dir().join(format!("tapnet-resolv-k1-{run_pid}.conf"));
    unsafe { libc::kill(run_pid as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(10), || !listed(&env, "k1")),
        "k1 not reaped: {}",
        env.daemon_log()
    );
    assert!(!ns_exists(&format!("{}k1", env.prefix)), "namespace left");
    assert!(
        wait_until(Duration::from_secs(5), || !sleeping("3001")),
        "the command outlived its run"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !sleeping("3011")),
        "what the command started outlived its run"
    );
    assert!(!resolv.exists(), "{} left behind", resolv.display());

    // rm on a running container stops its command; its run ends quietly
    let idx = start(&mut env, "k2", "3002");
    env.ok(&["rm", "k2"]);
    let st = env.wait_bg(idx, Duration::from_secs(10));
    assert!(!sleeping("3002"), "rm left the command running");
    assert!(!st.success(), "the command was stopped, not finished");
    let said = std::fs::read_to_string(env.bg_log(idx)).unwrap();
    assert!(!said.contains("no such container"), "{said}");

    // a run that ends while the daemon is down: reaped at the next start
    let idx = start(&mut env, "k3", "3003");
    let run_pid = env.bg_pid(idx);
    env.stop_daemon(libc::SIGKILL);
    unsafe { libc::kill(run_pid as i32, libc::SIGKILL) };
    env.wait_bg(idx, Duration::from_secs(5));
    env.start_daemon();
    assert!(
        wait_until(Duration::from_secs(10), || !listed(&env, "k3")),
        "k3 survived the restart"
    );
    assert!(!ns_exists(&format!("{}k3", env.prefix)), "namespace left");
    assert!(!sleeping("3003"));
    // and a live one is still watched after a restart
    let idx = start(&mut env, "k4", "3004");
    env.stop_daemon(libc::SIGKILL);
    env.start_daemon();
    assert!(listed(&env, "k4"), "a live run's container was reaped");
    unsafe { libc::kill(env.bg_pid(idx) as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(10), || !listed(&env, "k4")),
        "k4 not reaped by the restarted daemon"
    );
}
