//! `tapnet run`: a fresh network namespace attached to a network, a command
//! inside it, and clean-up when the command exits (its exit code passed on).

use crate::api::{ContainerInfo, CreateContainer};
use crate::client::Client;
use anyhow::{Context, Result};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::sync::atomic::{AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        unsafe { libc::kill(pid, sig) };
    }
}

pub struct RunArgs {
    pub network: String,
    pub name: Option<String>,
    pub ip: Option<String>,
    pub mtu: Option<u32>,
    pub cmd: Vec<String>,
}

/// Returns the exit code to exit with.
pub fn run(client: &Client, a: RunArgs) -> Result<i32> {
    let info: ContainerInfo = client.call(
        "POST",
        "/containers",
        Some(&CreateContainer {
            name: a.name.clone(),
            network: a.network.clone(),
            ip: a.ip.clone(),
            mtu: a.mtu,
        }),
    )?;
    let code = run_in(&info, &a.cmd);
    let cleanup = client.call::<serde_json::Value>(
        "DELETE",
        &format!("/containers/{}", info.name),
        None::<&()>,
    );
    let code = code?;
    if let Err(e) = cleanup {
        eprintln!("tapnet: removing container {}: {e:#}", info.name);
    }
    Ok(code)
}

fn run_in(info: &ContainerInfo, argv: &[String]) -> Result<i32> {
    let ns = std::fs::File::open(&info.netns)
        .with_context(|| format!("opening namespace {}", info.netns))?;
    let nsfd = ns.as_raw_fd();
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env("TAPNET_CONTAINER", &info.name);
    unsafe {
        cmd.pre_exec(move || {
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
            }
            Ok(())
        });
    }
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        unsafe { libc::signal(s, forward as *const () as libc::sighandler_t) };
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tapnet: cannot run {:?}: {e}", argv[0]);
            return Ok(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait().context("waiting for the command")?;
    CHILD.store(0, Ordering::SeqCst);
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
