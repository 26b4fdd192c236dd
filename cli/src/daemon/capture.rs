//! Packet capture (`GET /capture`, `tapnet capture`): frames as the switch
//! sees them, written as a pcapng stream that tshark, Wireshark and
//! `tcpdump -r` read.
//!
//! The filter is a tcpdump expression, compiled by libpcap to classic BPF
//! (once here, to refuse a bad one with libpcap's own message, then once
//! per datapath worker) and run by each worker on the frame before it is
//! copied (see `vswitch::datapath::capture`). Every port is an interface
//! of its own in the pcapng stream (named CONTAINER@NETWORK); a frame read
//! from the port (sent by the container) is inbound, one written to it
//! outbound (the EPB flags). Frames the capture had no room for are counted
//! (never held back from the network) and reported, when they grow, at
//! most four times a second in an
//! Interface Statistics Block (isb_ifdrop, on interface 0), so a reader
//! knows what it missed. GSO super-frames are written as they are, up to
//! 64 KiB (the snap length cuts them like any frame), or with `segment`
//! cut into the frames they stand for, checksums completed
//! (`wire::gso`, the overlay's segmentation).

use super::{ApiError, ApiResult, Core, DP_TIMEOUT};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vswitch::datapath::{Capture, CaptureFilter, CaptureTarget};

/// Bytes kept of a frame by default (tcpdump's default).
pub const DEFAULT_SNAPLEN: u32 = 262_144;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct CaptureQuery {
    /// A network or a container.
    pub target: String,
    /// With a network: only this container's port; with a container: only
    /// its port on this network.
    pub port: Option<String>,
    /// A tcpdump filter expression.
    pub filter: Option<String>,
    pub snaplen: Option<u32>,
    /// End after this many frames.
    pub count: Option<u64>,
    /// Cut GSO super-frames into the MTU-sized frames they stand for (and
    /// complete offloaded checksums), as the receiver's kernel would.
    #[serde(default)]
    pub segment: bool,
}

/// Compiles a tcpdump expression for Ethernet frames. Err: libpcap's
/// message.
fn compile(expr: &str) -> Result<pcap::BpfProgram, String> {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| e.to_string())?;
    dead.compile(expr, true).map_err(|e| e.to_string())
}

/// A started capture, for [`pump`].
pub struct Started {
    pub cap: Capture,
    /// (port id, interface name) known when it started.
    pub ifaces: Vec<(u64, String)>,
    pub snaplen: u32,
    pub count: Option<u64>,
    pub segment: bool,
}

impl Core {
    /// Starts a capture as `q` asks. Err: unknown target or port, a bad
    /// filter (libpcap's message), a snap length out of range.
    pub fn start_capture(&self, q: &CaptureQuery) -> ApiResult<Started> {
        let snaplen = q.snaplen.unwrap_or(DEFAULT_SNAPLEN);
        if !(14..=DEFAULT_SNAPLEN).contains(&snaplen) {
            return Err(ApiError::bad_request(format!(
                "invalid snap length {snaplen}: 14 to {DEFAULT_SNAPLEN} bytes"
            )));
        }
        let mut ifaces = Vec::new();
        let target = if let Some(n) = self.nets.get(&q.target) {
            let net = &n.rec.name;
            match &q.port {
                Some(c) => {
                    let p = n.ports.get(c).ok_or_else(|| {
                        ApiError::not_found(format!("container {c} has no port on network {net}"))
                    })?;
                    ifaces.push((*p, format!("{c}@{net}")));
                    CaptureTarget::Ports(vec![*p])
                }
                None => {
                    for (c, p) in &n.ports {
                        ifaces.push((*p, format!("{c}@{net}")));
                    }
                    if let Some(t) = n.trunk {
                        ifaces.push((t, format!("{}@{net}", n.rec.driver)));
                    }
                    CaptureTarget::Network(n.idx)
                }
            }
        } else if self.containers.contains_key(&q.target) {
            let c = &q.target;
            let mut ports = Vec::new();
            for n in self.nets.values() {
                if q.port.as_ref().is_some_and(|p| *p != n.rec.name) {
                    continue;
                }
                if let Some(p) = n.ports.get(c) {
                    ports.push(*p);
                    ifaces.push((*p, format!("{c}@{}", n.rec.name)));
                }
            }
            if ports.is_empty() {
                return Err(ApiError::not_found(match &q.port {
                    Some(n) => format!("container {c} has no port on network {n}"),
                    None => format!(
                        "container {c} has no ports (network mode host, none or container:)"
                    ),
                }));
            }
            CaptureTarget::Ports(ports)
        } else {
            return Err(ApiError::not_found(format!(
                "no such network or container: {}",
                q.target
            )));
        };
        let expr = q.filter.clone().filter(|f| !f.trim().is_empty());
        if let Some(e) = &expr {
            compile(e)
                .map_err(|m| ApiError::bad_request(format!("invalid capture filter {e:?}: {m}")))?;
        }
        let make = expr.map(|e| {
            move || -> CaptureFilter {
                match compile(&e) {
                    Ok(p) => Box::new(move |f: &[u8]| p.filter(f)),
                    // it compiled a moment ago: nothing matches rather
                    // than everything
                    Err(_) => Box::new(|_: &[u8]| false),
                }
            }
        });
        // segmenting needs whole frames: the snap length is applied to
        // each segment then
        let keep = if q.segment { 0 } else { snaplen as usize };
        let cap = self
            .dp
            .start_capture(target, make, keep, DP_TIMEOUT)
            .map_err(ApiError::internal)?;
        Ok(Started {
            cap,
            ifaces,
            snaplen,
            count: q.count,
            segment: q.segment,
        })
    }
}

/// Writes the capture as pcapng into `out` (chunks of the stream) until
/// the reader goes (`out` closed), `count` frames were written, or the
/// datapath ends it.
/// Also ends when the daemon stops (`stop` turns true); a reader that went
/// away is noticed within 250 ms even when no frame comes.
pub fn pump(
    s: Started,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(mut w) = PcapNgWriter::new(Vec::new()) else {
        return;
    };
    let mut ids: HashMap<u64, u32> = HashMap::new();
    let snaplen = s.snaplen;
    let add =
        |w: &mut PcapNgWriter<Vec<u8>>, ids: &mut HashMap<u64, u32>, port: u64, name: String| {
            let idb = InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(name)),
                    // nanosecond timestamps
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            };
            if w.write_pcapng_block(idb).is_ok() {
                let n = ids.len() as u32;
                ids.insert(port, n);
            }
        };
    for (p, name) in s.ifaces {
        add(&mut w, &mut ids, p, name);
    }
    let flush = |w: &mut PcapNgWriter<Vec<u8>>| -> bool {
        let b = std::mem::take(w.get_mut());
        b.is_empty() || out.blocking_send(b).is_ok()
    };
    if !flush(&mut w) {
        return;
    }
    let (mut written, mut last_drops, mut stats_at) = (0u64, 0u64, Instant::now());
    let (mut segs, mut lens) = (Vec::new(), Vec::new());
    loop {
        if out.is_closed() || *stop.borrow() {
            return;
        }
        let first = match s.cap.frames.recv_timeout(Duration::from_millis(250)) {
            Ok(f) => Some(f),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // this frame and what else waits (at most 256: the reader hears of
        // drops between batches), then one write to the stream
        let more = std::iter::from_fn(|| s.cap.frames.try_recv().ok()).take(255);
        for f in first.into_iter().chain(more) {
            s.cap.took(&f);
            if !ids.contains_key(&f.port) {
                add(&mut w, &mut ids, f.port, format!("port-{}", f.port));
            }
            let iface = ids.get(&f.port).copied().unwrap_or(0);
            // direction: 1 inbound (read from the port), 2 outbound
            let flags = if f.out { 2 } else { 1 };
            let h = wire::vnet::VnetHdr::parse(&f.vnet);
            segs.clear();
            lens.clear();
            let cut = s.segment
                && (h.is_gso() || h.flags & wire::vnet::F_NEEDS_CSUM != 0)
                && wire::gso::segment(&h, &f.data, 65_535, &[], false, &mut segs, &mut lens)
                    .is_ok();
            let pieces: Vec<&[u8]> = if cut {
                let mut at = 0;
                lens.iter()
                    .map(|&n| {
                        at += n;
                        &segs[at - n..at]
                    })
                    .collect()
            } else {
                vec![&f.data[..]]
            };
            for p in pieces {
                // a count is of frames written: a super-frame's segments
                // each count, and the last may stop part way
                if s.count.is_some_and(|c| written >= c) {
                    break;
                }
                let epb = EnhancedPacketBlock {
                    interface_id: iface,
                    timestamp: f.time,
                    original_len: if cut { p.len() as u32 } else { f.len },
                    data: Cow::Borrowed(&p[..p.len().min(snaplen as usize)]),
                    options: vec![EnhancedPacketOption::Flags(flags)],
                };
                if w.write_pcapng_block(epb).is_ok() {
                    written += 1;
                }
            }
            if s.count.is_some_and(|c| written >= c) {
                break;
            }
        }
        let drops = s.cap.drops.load(Ordering::Relaxed);
        let done = s.count.is_some_and(|c| written >= c);
        if !ids.is_empty()
            && (done || (drops != last_drops && stats_at.elapsed() >= Duration::from_millis(250)))
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let isb = InterfaceStatisticsBlock {
                interface_id: 0,
                // pcap-file 2.0 writes this field as one u64, where
                // pcapng has the high 32 bits first, then the low 32
                // bits (each in the section's byte order): swapped here
                // so the two come out in that order
                timestamp: {
                    let ns = now.as_nanos() as u64;
                    if cfg!(target_endian = "little") {
                        ns.rotate_left(32)
                    } else {
                        ns
                    }
                },
                options: vec![
                    InterfaceStatisticsOption::IsbIfDrop(drops),
                    InterfaceStatisticsOption::Comment(Cow::Borrowed(
                        "isb_ifdrop: frames the capture had no room for (all interfaces); the network lost none",
                    )),
                ],
            };
            let _ = w.write_pcapng_block(isb);
            last_drops = drops;
            stats_at = Instant::now();
        }
        if !flush(&mut w) || done {
            return;
        }
    }
}
