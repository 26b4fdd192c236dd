//! The uplink's packet socket: `AF_PACKET` bound to a host interface with
//! `PACKET_VNET_HDR`, so frames carry the same `virtio_net_hdr` as TAP
//! frames (GSO super-frames go out whole and the kernel segments them) and
//! `PACKET_IGNORE_OUTGOING`, so our own transmissions do not come back.

use crate::mac::Mac;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Opens the packet socket on `ifname` (in the calling thread's network
/// namespace); returns it with the interface's MAC and MTU.
pub fn open_packet_socket(ifname: &str) -> io::Result<(OwnedFd, Mac, u32)> {
    let cname = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {ifname} in this network namespace"),
        ));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto as i32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for (opt, what) in [
        (PACKET_VNET_HDR, "PACKET_VNET_HDR"),
        (PACKET_IGNORE_OUTGOING, "PACKET_IGNORE_OUTGOING"),
    ] {
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what} on {ifname}: {e}")));
        }
    }
    let buf: libc::c_int = 8 << 20;
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &buf as *const _ as *const libc::c_void,
            4,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &buf as *const _ as *const libc::c_void,
            4,
        );
    }
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = idx as i32;
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // MAC and MTU of the interface
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, c) in cname.as_bytes().iter().enumerate() {
        ifr.ifr_name[i] = *c as libc::c_char;
    }
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
    let mac = Mac([
        hw[0] as u8,
        hw[1] as u8,
        hw[2] as u8,
        hw[3] as u8,
        hw[4] as u8,
        hw[5] as u8,
    ]);
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu } as u32;
    Ok((fd, mac, mtu))
}

/// Makes the interface the packet socket `fd` is bound to (`ifname`)
/// accept frames for multicast `group` (a solicited-node group's
/// `33:33:ff:..` address: neighbour solicitations for an address tapnet
/// owns there, which a NIC's multicast filter would otherwise drop). Held
/// as long as the socket is open.
pub fn join_multicast(fd: &OwnedFd, ifname: &str, group: [u8; 6]) -> io::Result<()> {
    const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
    const PACKET_MR_MULTICAST: libc::c_ushort = 0;
    let cname = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mr.mr_ifindex = idx as i32;
    mr.mr_type = PACKET_MR_MULTICAST;
    mr.mr_alen = 6;
    mr.mr_address[..6].copy_from_slice(&group);
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_ADD_MEMBERSHIP,
            &mr as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::packet_mreq>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
