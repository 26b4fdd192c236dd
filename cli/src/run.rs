//! `tapnet run`: a fresh network namespace attached to a network, a command
//! inside it, and clean-up when the command exits (its exit code passed on).

use crate::api::{ContainerInfo, CreateContainer};
use crate::client::Client;
use anyhow::{Context, Result};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

/// The command's PID, or minus its process group (signals go to all of it).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid != 0 {
        unsafe { libc::kill(pid, sig) };
    }
}

pub struct RunArgs {
    pub network: String,
    pub name: Option<String>,
    pub ip: Option<String>,
    pub ip6: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<String>,
    pub aliases: Vec<String>,
    pub ports: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_option: Vec<String>,
    pub cmd: Vec<String>,
}

/// Returns the exit code to exit with.
pub fn run(client: &Client, a: RunArgs) -> Result<i32> {
    let rootless = rootless_daemon(client)?;
    let info: ContainerInfo = client.call(
        "POST",
        "/containers",
        Some(&CreateContainer {
            name: a.name.clone(),
            network: a.network.clone(),
            ip: a.ip.clone(),
            ip6: a.ip6.clone(),
            mtu: a.mtu,
            mac: a.mac.clone(),
            aliases: a.aliases.clone(),
            dns: a.dns.clone(),
            ports: a.ports.clone(),
            client_pid: Some(std::process::id()),
        }),
    )?;
    for w in &info.warnings {
        eprintln!("WARNING: {w}");
    }
    // a host container keeps the host's resolv.conf; one that shares
    // another's namespace gets that one's servers
    let resolv = (!info.host_netns)
        .then(|| write_resolv_conf(&info, &a))
        .flatten();
    let code =
        join_rootless(rootless).and_then(|_| run_in(client, &info, &a.cmd, resolv.as_deref()));
    if let Some(p) = &resolv {
        let _ = std::fs::remove_file(p);
    }
    // by id, not name: the container may have been renamed meanwhile (and
    // by namespace for a daemon that gives no id)
    let listed = client.get::<Vec<ContainerInfo>>("/containers");
    let cleanup = match &listed {
        Ok(cs) => match cs.iter().find(|c| {
            if info.id.is_empty() {
                c.netns == info.netns
            } else {
                c.id == info.id
            }
        }) {
            Some(c) => client
                .call::<serde_json::Value>(
                    "DELETE",
                    &format!("/containers/{}", c.name),
                    None::<&()>,
                )
                .map(|_| ()),
            // removed meanwhile (`tapnet rm`): nothing left to do
            None => Ok(()),
        },
        Err(_) => client
            .call::<serde_json::Value>("DELETE", &format!("/containers/{}", info.name), None::<&()>)
            .map(|_| ()),
    };
    let code = code?;
    if let Err(e) = cleanup {
        eprintln!("tapnet: removing container {}: {e:#}", info.name);
    }
    Ok(code)
}

/// A rootless daemon keeps its namespaces in its own user and mount
/// namespaces: join them (as their owner, we are root there) so the
/// container's network namespace can be entered.
/// Asked before the container exists: once it does, the run needs the
/// daemon for nothing but the clean-up (a daemon that stops meanwhile does
/// not make the command fail).
fn rootless_daemon(client: &Client) -> Result<Option<u64>> {
    let ping: serde_json::Value = client.get("/_ping")?;
    if ping["rootless"] != true {
        return Ok(None);
    }
    ping["pid"]
        .as_u64()
        .map(Some)
        .context("the daemon did not say its PID")
}

fn join_rootless(daemon: Option<u64>) -> Result<()> {
    let Some(pid) = daemon else {
        return Ok(());
    };
    for (ns, flag) in [("user", libc::CLONE_NEWUSER), ("mnt", libc::CLONE_NEWNS)] {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
            .with_context(|| format!("opening the rootless daemon's {ns} namespace"))?;
        if unsafe { libc::setns(f.as_raw_fd(), flag) } != 0 {
            anyhow::bail!(
                "joining the rootless daemon's {ns} namespace: {} (is it another user's daemon?)",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// The container's resolv.conf (bind-mounted over /etc/resolv.conf in its
/// private mount namespace; the host's file is untouched).
fn write_resolv_conf(info: &ContainerInfo, a: &RunArgs) -> Option<PathBuf> {
    let mut text = String::from("# written by tapnet\n");
    for n in &info.nameservers {
        text += &format!("nameserver {n}\n");
    }
    if !a.dns_search.is_empty() {
        text += &format!("search {}\n", a.dns_search.join(" "));
    }
    if !a.dns_option.is_empty() {
        text += &format!("options {}\n", a.dns_option.join(" "));
    }
    let p = std::env::temp_dir().join(format!(
        "tapnet-resolv-{}-{}.conf",
        info.name,
        std::process::id()
    ));
    match std::fs::write(&p, text) {
        Ok(()) => Some(p),
        Err(e) => {
            eprintln!(
                "tapnet: writing {}: {e} (the container keeps the host's resolv.conf)",
                p.display()
            );
            None
        }
    }
}

fn run_in(
    client: &Client,
    info: &ContainerInfo,
    argv: &[String],
    resolv_file: Option<&std::path::Path>,
) -> Result<i32> {
    let resolv = resolv_file.and_then(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok());
    let ns = std::fs::File::open(&info.netns)
        .with_context(|| format!("opening namespace {}", info.netns))?;
    let nsfd = ns.as_raw_fd();
    let mut cmd = std::process::Command::new(&argv[0]);
    // Its own process group, so signals and the clean-up at exit reach
    // everything it started; not for an interactive terminal, which must
    // stay in the foreground group.
    let own_group = unsafe { libc::isatty(0) } == 0;
    if own_group {
        cmd.process_group(0);
    }
    cmd.args(&argv[1..]);
    cmd.env("TAPNET_CONTAINER", &info.name);
    unsafe {
        cmd.pre_exec(move || {
            // the command does not outlive this run, even a SIGKILLed one
            // (the daemon then stops the rest of its process group)
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::setns(nsfd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Like `ip netns exec`: a private mount namespace whose /sys
            // shows this network namespace's interfaces. Best effort.
            if libc::unshare(libc::CLONE_NEWNS) == 0 {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                );
                if libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) == 0 {
                    libc::mount(
                        c"sysfs".as_ptr(),
                        c"/sys".as_ptr(),
                        c"sysfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                }
                if let Some(src) = &resolv {
                    libc::mount(
                        src.as_ptr(),
                        c"/etc/resolv.conf".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    );
                }
            }
            // the mount holds the file now: its name can go at once, so
            // a run killed from here on leaves nothing in the temp dir
            if let Some(src) = &resolv {
                libc::unlink(src.as_ptr());
            }
            Ok(())
        });
    }
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        unsafe { libc::signal(s, forward as *const () as libc::sighandler_t) };
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // setns on a file that is not a namespace here: the daemon's
            // bind mount is in a mount namespace of its own
            eprintln!(
                "tapnet: cannot enter {}: it is not a network namespace in this mount namespace (was the daemon started with `ip netns exec`, which gives it a private mount namespace? start it with `nsenter --net=/run/netns/NAME tapnet daemon` instead)",
                info.netns
            );
            return Ok(126);
        }
        Err(e) => {
            eprintln!("tapnet: cannot run {:?}: {e}", argv[0]);
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = child.id() as i32;
    CHILD.store(if own_group { -pid } else { pid }, Ordering::SeqCst);
    // the command has mounted its resolv.conf (before exec, which spawn
    // waited for): the file is not needed any more, and a SIGKILLed run
    // cannot leave it behind
    if let Some(p) = resolv_file {
        let _ = std::fs::remove_file(p);
    }
    // the daemon stops it when the container is removed
    let told = client.call::<serde_json::Value>(
        "PUT",
        &format!("/containers/{}/process", info.name),
        Some(&crate::api::ContainerProcess { pid: pid as u32 }),
    );
    if told
        .as_ref()
        .is_err_and(|e| format!("{e:#}").contains("no such container"))
    {
        // removed before its command started: it does not get to run
        unsafe { libc::kill(if own_group { -pid } else { pid }, libc::SIGKILL) };
    }
    let status = child.wait().context("waiting for the command")?;
    CHILD.store(0, Ordering::SeqCst);
    if own_group {
        // like a container's end: whatever the command left running goes too
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
