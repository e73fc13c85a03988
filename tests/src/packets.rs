//! Crafting frames for BPF_PROG_TEST_RUN and checking what comes out.

use std::net::{IpAddr, SocketAddr};

use dispatcher_common::protocol::FaasHdr;
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId};

/// MAC addresses used by the fixtures.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const IFACE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A UDP frame from `src` to `dst`, with 0, 1 (802.1Q) or 2 (802.1ad +
/// 802.1Q) VLAN tags.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlans: &[u16],
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let vid = |v: u16| VlanId::try_new(v).expect("VLAN id below 4096");
    let mut out = Vec::new();
    macro_rules! finish {
        ($b:expr) => {{
            let b = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => $b.ipv4(s.octets(), d.octets(), 64),
                (IpAddr::V6(s), IpAddr::V6(d)) => $b.ipv6(s.octets(), d.octets(), 64),
                _ => panic!("mixed address families"),
            };
            b.udp(src.port(), dst.port())
                .write(&mut out, payload)
                .expect("write frame");
        }};
    }
    match vlans {
        [] => finish!(eth),
        [v] => finish!(eth.single_vlan(vid(*v))),
        [outer, inner] => finish!(eth.double_vlan(vid(*outer), vid(*inner))),
        _ => panic!("at most two VLAN tags"),
    }
    out
}

/// A FaaS header followed by `body`: a UDP payload.
pub fn faas_payload(hdr: &FaasHdr, body: &[u8]) -> Vec<u8> {
    let mut p = hdr.to_bytes().to_vec();
    p.extend_from_slice(body);
    p
}

/// Offset of the UDP header in a frame built by `udp_frame` without IP
/// options.
pub fn udp_offset(frame: &[u8]) -> usize {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("parsable frame");
    let link = 14 + 4 * headers.link_exts.len();
    match headers.net.expect("IP") {
        NetHeaders::Ipv4(h, _) => link + h.header_len(),
        NetHeaders::Ipv6(_, _) => link + 40,
        NetHeaders::Arp(_) => panic!("not IP"),
    }
}

/// Sets the UDP checksum field of `frame` to zero ("no checksum", IPv4).
pub fn zero_udp_checksum(frame: &mut [u8]) {
    let at = udp_offset(frame) + 6;
    frame[at..at + 2].copy_from_slice(&[0, 0]);
}

/// Panics unless the frame's IPv4 header checksum and UDP checksum verify,
/// recomputed from scratch by etherparse. A zero IPv4 UDP checksum passes
/// only when `allow_zero_udp`.
pub fn assert_checksums_verify(frame: &[u8], allow_zero_udp: bool) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("parsable frame");
    let Some(TransportHeader::Udp(udp)) = headers.transport else {
        panic!("not UDP")
    };
    let payload = headers.payload.slice();
    match headers.net.expect("IP header") {
        NetHeaders::Ipv4(ip, _) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            if udp.checksum == 0 {
                assert!(allow_zero_udp, "UDP checksum is zero");
            } else {
                assert_eq!(
                    udp.checksum,
                    udp.calc_checksum_ipv4(&ip, payload).unwrap(),
                    "UDP checksum"
                );
            }
        }
        NetHeaders::Ipv6(ip, _) => {
            assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv6(&ip, payload).unwrap(),
                "UDP checksum"
            );
        }
        NetHeaders::Arp(_) => panic!("not IP"),
    }
}

/// Inserts IPv6 extension headers (8 bytes each, types from `chain`, in
/// order) between the IPv6 header and UDP of an IPv6 `frame` without VLAN
/// tags. A routing header (43) gets `segments_left`. The UDP checksum stays
/// valid: the pseudo-header does not cover extension headers.
pub fn ipv6_with_extension_headers(frame: &[u8], chain: &[u8], segments_left: u8) -> Vec<u8> {
    const IP: usize = 14;
    const UDP: usize = IP + 40;
    let mut out = frame[..UDP].to_vec();
    let first = out[IP + 6];
    out[IP + 6] = chain[0];
    for (i, kind) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(first);
        let ext = if *kind == 43 {
            [next, 0, 0, segments_left, 0, 0, 0, 0]
        } else {
            // PadN option: type 1, 4 bytes of padding.
            [next, 0, 1, 4, 0, 0, 0, 0]
        };
        out.extend_from_slice(&ext);
    }
    out.extend_from_slice(&frame[UDP..]);
    let payload_len = u16::from_be_bytes([out[IP + 4], out[IP + 5]]) + 8 * chain.len() as u16;
    out[IP + 4..IP + 6].copy_from_slice(&payload_len.to_be_bytes());
    out
}

/// Where a frame is addressed (destination IP and UDP port), and its FaaS
/// header, for checking dispatch decisions.
pub fn destination_and_header(frame: &[u8]) -> (SocketAddr, FaasHdr) {
    let headers = PacketHeaders::from_ethernet_slice(frame).expect("parsable frame");
    let Some(TransportHeader::Udp(udp)) = headers.transport else {
        panic!("not UDP")
    };
    let ip: IpAddr = match headers.net.expect("IP") {
        NetHeaders::Ipv4(h, _) => h.destination.into(),
        NetHeaders::Ipv6(h, _) => h.destination.into(),
        NetHeaders::Arp(_) => panic!("not IP"),
    };
    let hdr = FaasHdr::from_bytes(headers.payload.slice()).expect("FaaS header");
    (SocketAddr::new(ip, udp.destination_port), hdr)
}
