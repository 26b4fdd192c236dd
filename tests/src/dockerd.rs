//! Docker's daemon for the tests that use it: Debian's dockerd, started by
//! a test in its host namespace and stopped by it.

use crate::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// busybox's web server on port 80, serving the image's /www (see
/// [`busybox_rootfs_tar`]).
pub const HTTPD: &[&str] = &["httpd", "-f", "-p", "80", "-h", "/www"];

/// A dockerd (Debian's docker.io) in a test's host namespace, with a
/// private plugin directory (a mount namespace of its own) and every
/// iptables/bridge feature off; stopped (its mounts undone) when dropped.
pub struct Dockerd {
    child: Child,
    pub dir: PathBuf,
}

impl Dockerd {
    pub fn start(env: &Env, plugins: &std::path::Path) -> Dockerd {
        Self::start_with(env, plugins, &[])
    }

    /// [`Self::start`] with more dockerd flags (words without quotes).
    pub fn start_with(env: &Env, plugins: &std::path::Path, extra: &[&str]) -> Dockerd {
        require_tools(&["dockerd", "docker"], "docker.io");
        let dir = env.dir.join("docker");
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        // dockerd's exec-root is a shared mount, so the sandboxes it mounts
        // there (the containers' namespaces, which tapnet's port relays
        // enter) are seen outside its mount namespace, as they are when
        // dockerd runs in the host's; the plugin directory stays private
        std::fs::create_dir_all(dir.join("exec")).unwrap();
        let exec = dir.join("exec");
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(&exec)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            run_ok(Command::new("mount").arg("--bind").arg(&exec).arg(&exec));
            run_ok(Command::new("mount").arg("--make-shared").arg(&exec));
        }
        let script = format!(
            "mount --make-private / && \
             (! mountpoint -q /run || mount --make-private /run) && \
             mkdir -p /run/docker/plugins && mount --bind {} /run/docker/plugins && \
             exec dockerd --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
             --bridge=none --data-root {d}/data --exec-root {d}/exec -H unix://{d}/docker.sock \
             --pidfile {d}/docker.pid --cgroup-parent /{} {}",
            plugins.display(),
            env.prefix.trim_end_matches('_'),
            extra.join(" ")
        );
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("dockerd.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", env.host_ns))
            .args([
                "unshare",
                "-m",
                "--propagation",
                "unchanged",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let dk = Dockerd { child, dir };
        let up = wait_until(Duration::from_secs(20), || {
            dk.docker(&["info"]).status.success()
        });
        assert!(
            up,
            "dockerd did not come up: {}",
            std::fs::read_to_string(dk.dir.join("dockerd.log")).unwrap_or_default()
        );
        dk
    }

    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        // Debian's client, made for this daemon (a newer one on PATH may
        // ask for API features 20.10 lacks)
        let cli = if std::path::Path::new("/usr/bin/docker").exists() {
            "/usr/bin/docker"
        } else {
            "docker"
        };
        Command::new(cli)
            .arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `docker run --rm --network NET tn-busybox CMD...` (the image the
    /// tests import).
    pub fn run_rm(&self, net: &str, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["run", "--rm", "--network", net, "tn-busybox"];
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// `docker run -d --name NAME --network NET OPTS... tn-busybox CMD...`:
    /// a detached container; panics (with Docker's words) if it fails.
    pub fn run_d(&self, name: &str, net: &str, opts: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", net];
        args.extend_from_slice(opts);
        args.push("tn-busybox");
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    /// Container `ctr`'s address on network `net`, as Docker has it.
    pub fn ip_on(&self, ctr: &str, net: &str) -> String {
        self.ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            ctr,
        ])
    }

    pub fn fail(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(!o.status.success(), "docker {args:?} succeeded");
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.halt();
        self.unmount();
    }
}

impl Dockerd {
    /// Stops dockerd (SIGTERM, then SIGKILL after 15 s), its mounts kept
    /// for a restart.
    pub fn stop(mut self) {
        self.halt();
        std::mem::forget(self);
    }

    fn halt(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Dockerd {
    /// After dockerd is gone: the sandboxes' mounts and the exec-root's.
    fn unmount(&self) {
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.join("exec"))
            .status();
    }
}

/// Removes a directory when dropped (also when the test panics).
pub struct RmDir(pub PathBuf);

impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
