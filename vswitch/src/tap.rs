//! TAP ports and network namespaces.
//!
//! A port's TAP device is created *inside* the container's network namespace:
//! a short-lived thread enters the namespace with `setns`, opens
//! `/dev/net/tun` there (the device belongs to the namespace of the opener)
//! and returns the file descriptor, which the switch keeps.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Where a network namespace is: a name under `/run/netns`, a
/// `/proc/PID/ns/net`-style path, or a PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsRef(pub PathBuf);

impl NetnsRef {
    /// `1234` -> `/proc/1234/ns/net`; a string with `/` -> that path;
    /// anything else -> `/run/netns/NAME`.
    pub fn parse(s: &str) -> NetnsRef {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            NetnsRef(PathBuf::from(format!("/proc/{s}/ns/net")))
        } else if s.contains('/') {
            NetnsRef(PathBuf::from(s))
        } else {
            NetnsRef(Path::new("/run/netns").join(s))
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Opens the namespace file and checks that it is a network namespace.
    pub fn open(&self) -> io::Result<File> {
        let f = File::open(&self.0).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("network namespace {}: {e}", self.0.display()),
            )
        })?;
        // NS_GET_NSTYPE = _IO(0xb7, 0x3)
        let t = unsafe { libc::ioctl(f.as_raw_fd(), 0xb703 as _) };
        if t != libc::CLONE_NEWNET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a network namespace", self.0.display()),
            ));
        }
        Ok(f)
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`.
/// The calling thread's namespace is never changed.
pub fn in_netns<T: Send>(ns: &NetnsRef, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = ns.open()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::new(
                    io::Error::last_os_error().kind(),
                    format!(
                        "entering network namespace {}: {}",
                        ns.0.display(),
                        io::Error::last_os_error()
                    ),
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("namespace worker thread panicked"))?
    })
}

/// The TUN/TAP clone device everyone has.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// How to open a TAP device.
#[derive(Debug, Clone)]
pub struct TapOptions {
    pub name: String,
    /// `IFF_VNET_HDR` plus checksum/TSO offloads (64 KiB GSO frames).
    pub offload: bool,
    /// Keep the device when the fd closes (so a restarted daemon re-attaches).
    pub persist: bool,
    /// Number of queues (`IFF_MULTI_QUEUE` when more than one).
    pub queues: usize,
    /// The clone device to open (None: [`TUN_DEVICE`]); e.g. a copy of the
    /// node that a rootless user may open.
    pub clone_device: Option<std::path::PathBuf>,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ioctl_err(what: &str, name: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("TAP {name}: {what}: {e}"))
}

/// Opens (creating if needed) TAP device `opts.name` in the *current
/// thread's* network namespace; returns one fd per queue. An existing
/// device keeps the queue mode it was made with: a single-queue one gives
/// one fd whatever `opts.queues` says, and a multi-queue one is attached
/// as such even for one queue (the kernel refuses a mode change).
pub fn open_tap(opts: &TapOptions) -> io::Result<Vec<OwnedFd>> {
    let name = &opts.name;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    let cname = CString::new(name.as_str()).expect("checked");
    let mut queues = opts.queues.max(1);
    let mut multi = queues > 1;
    let mut flipped = false;
    let mut fds = Vec::with_capacity(queues);
    let dev = CString::new(
        opts.clone_device
            .as_deref()
            .unwrap_or(Path::new(TUN_DEVICE))
            .as_os_str()
            .as_encoded_bytes(),
    )
    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad TUN device path"))?;
    let mut q = 0;
    while q < queues {
        let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("opening {}: {e}", dev.to_string_lossy()),
            ));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(cname.as_bytes()) {
            *d = *s as libc::c_char;
        }
        if opts.offload {
            req.flags |= IFF_VNET_HDR;
        }
        if multi {
            req.flags |= IFF_MULTI_QUEUE;
        }
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            if q == 0 && e.raw_os_error() == Some(libc::EINVAL) && !flipped {
                // the device exists in the other queue mode: take it as it is
                flipped = true;
                multi = !multi;
                if !multi {
                    queues = 1;
                }
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("TAP {name}: TUNSETIFF: {e}"),
            ));
        }
        if q == 0 {
            if opts.offload {
                let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
                // USO (UDP segmentation) exists since Linux 6.2; fall back without it.
                if unsafe {
                    libc::ioctl(
                        fd.as_raw_fd(),
                        TUNSETOFFLOAD,
                        base | TUN_F_USO4 | TUN_F_USO6,
                    )
                } < 0
                    && unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, base) } < 0
                {
                    return Err(ioctl_err("TUNSETOFFLOAD", name));
                }
            }
            set_persist(&fd, opts.persist).map_err(|_| ioctl_err("TUNSETPERSIST", name))?;
        }
        fds.push(fd);
        q += 1;
    }
    Ok(fds)
}

/// Sets or clears `TUNSETPERSIST`: a non-persistent device is deleted when
/// its last fd closes.
pub fn set_persist(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, on as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_ref_parse() {
        assert_eq!(NetnsRef::parse("123").0, PathBuf::from("/proc/123/ns/net"));
        assert_eq!(NetnsRef::parse("tn_a").0, PathBuf::from("/run/netns/tn_a"));
        assert_eq!(
            NetnsRef::parse("/proc/1/ns/net").0,
            PathBuf::from("/proc/1/ns/net")
        );
    }

    #[test]
    fn bad_names_rejected() {
        for n in ["", "a/b", "0123456789abcdefg"] {
            let o = TapOptions {
                name: n.into(),
                offload: true,
                persist: false,
                queues: 1,
                clone_device: None,
            };
            assert!(open_tap(&o).is_err(), "{n}");
        }
    }
}
