//! The CLI's side of `tapnet capture`: reads the daemon's pcapng stream
//! as it comes (blocks may be split anywhere), to count frames, learn the
//! capture's drops from its statistics blocks, and print a line per frame
//! when no file is written.

use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::PcapError;
use std::time::Duration;

/// What the stream said.
#[derive(Debug, PartialEq)]
pub enum Item {
    Frame {
        /// The interface's name (CONTAINER@NETWORK).
        iface: String,
        /// Written to the port (towards the container).
        out: bool,
        time: Duration,
        len: u32,
        data: Vec<u8>,
    },
    /// Frames the capture has dropped so far.
    Drops(u64),
}

#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    parser: Option<PcapNgParser>,
    ifaces: Vec<String>,
}

impl Reader {
    /// Takes the next bytes of the stream; returns what they completed.
    /// Err: the stream is not pcapng.
    pub fn feed(&mut self, b: &[u8]) -> Result<Vec<Item>, String> {
        self.buf.extend_from_slice(b);
        let mut items = Vec::new();
        if self.parser.is_none() {
            match PcapNgParser::new(&self.buf) {
                Ok((rem, p)) => {
                    let used = self.buf.len() - rem.len();
                    self.parser = Some(p);
                    self.buf.drain(..used);
                }
                Err(PcapError::IncompleteBuffer) => return Ok(items),
                Err(e) => return Err(format!("not a pcapng stream: {e}")),
            }
        }
        let p = self.parser.as_mut().expect("set above");
        loop {
            let (used, item) = match p.next_block(&self.buf) {
                Ok((rem, block)) => {
                    let used = self.buf.len() - rem.len();
                    let item = match block {
                        Block::InterfaceDescription(idb) => {
                            let name = idb
                                .options
                                .iter()
                                .find_map(|o| match o {
                                    InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                                    _ => None,
                                })
                                .unwrap_or_else(|| format!("if{}", self.ifaces.len()));
                            self.ifaces.push(name);
                            None
                        }
                        Block::EnhancedPacket(e) => Some(Item::Frame {
                            iface: self
                                .ifaces
                                .get(e.interface_id as usize)
                                .cloned()
                                .unwrap_or_default(),
                            out: e
                                .options
                                .iter()
                                .any(|o| matches!(o, EnhancedPacketOption::Flags(f) if f & 3 == 2)),
                            time: e.timestamp,
                            len: e.original_len,
                            data: e.data.into_owned(),
                        }),
                        Block::InterfaceStatistics(s) => s.options.iter().find_map(|o| match o {
                            InterfaceStatisticsOption::IsbIfDrop(n) => Some(Item::Drops(*n)),
                            _ => None,
                        }),
                        _ => None,
                    };
                    (used, item)
                }
                Err(PcapError::IncompleteBuffer) => return Ok(items),
                Err(e) => return Err(format!("bad pcapng block: {e}")),
            };
            self.buf.drain(..used);
            items.extend(item);
        }
    }
}

/// A line for a frame, as tcpdump prints one: time, interface, direction,
/// then what the frame carries (addresses, protocol, ports), and length.
pub fn line(iface: &str, out: bool, time: Duration, len: u32, data: &[u8]) -> String {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let secs = time.as_secs() % 86_400;
    let t = format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        time.subsec_micros()
    );
    let dir = if out { "Out" } else { "In " };
    let what = match SlicedPacket::from_ethernet(data) {
        Ok(p) => {
            let (src, dst) = match &p.net {
                Some(NetSlice::Ipv4(v4)) => (
                    v4.header().source_addr().to_string(),
                    v4.header().destination_addr().to_string(),
                ),
                Some(NetSlice::Ipv6(v6)) => (
                    v6.header().source_addr().to_string(),
                    v6.header().destination_addr().to_string(),
                ),
                _ => (String::new(), String::new()),
            };
            match &p.transport {
                Some(TransportSlice::Tcp(t)) => format!(
                    "IP {src}.{} > {dst}.{}: TCP",
                    t.source_port(),
                    t.destination_port()
                ),
                Some(TransportSlice::Udp(u)) => format!(
                    "IP {src}.{} > {dst}.{}: UDP",
                    u.source_port(),
                    u.destination_port()
                ),
                Some(TransportSlice::Icmpv4(_)) => format!("IP {src} > {dst}: ICMP"),
                Some(TransportSlice::Icmpv6(_)) => format!("IP6 {src} > {dst}: ICMP6"),
                _ if !src.is_empty() => format!("IP {src} > {dst}"),
                _ => match data.get(12..14) {
                    Some([8, 6]) => "ARP".to_string(),
                    Some(t) => format!("ethertype 0x{:02x}{:02x}", t[0], t[1]),
                    None => "runt".to_string(),
                },
            }
        }
        Err(_) => match data.get(12..14) {
            Some([8, 6]) => "ARP".to_string(),
            _ => "malformed".to_string(),
        },
    };
    format!("{t} {iface} {dir} {what}, length {len}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsBlock;
    use pcap_file::pcapng::PcapNgWriter;
    use std::borrow::Cow;

    #[test]
    fn reads_a_stream_split_anywhere() {
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: pcap_file::DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfName(Cow::Borrowed("c1@net"))],
        })
        .unwrap();
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 8, 6]);
        f.resize(42, 0);
        for out in [false, true] {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_nanos(1_500_000_000),
                original_len: 60,
                data: Cow::Owned(f.clone()),
                options: vec![EnhancedPacketOption::Flags(if out { 2 } else { 1 })],
            })
            .unwrap();
        }
        w.write_pcapng_block(InterfaceStatisticsBlock {
            interface_id: 0,
            timestamp: 0,
            options: vec![InterfaceStatisticsOption::IsbIfDrop(7)],
        })
        .unwrap();
        let bytes = w.into_inner();
        for step in [1, 3, 7, 64, bytes.len()] {
            let mut r = Reader::default();
            let mut items = Vec::new();
            for c in bytes.chunks(step) {
                items.extend(r.feed(c).unwrap());
            }
            assert_eq!(items.len(), 3, "step {step}");
            match &items[1] {
                Item::Frame {
                    iface,
                    out,
                    len,
                    data,
                    ..
                } => {
                    assert_eq!((iface.as_str(), *out, *len), ("c1@net", true, 60));
                    assert_eq!(data, &f);
                }
                i => panic!("{i:?}"),
            }
            assert_eq!(items[2], Item::Drops(7));
        }
        assert!(Reader::default().feed(&[0u8; 64]).is_err());
        let l = line("c1@net", false, Duration::from_millis(3_723_004), 60, &f);
        assert_eq!(l, "01:02:03.004000 c1@net In  ARP, length 60");
    }
}
