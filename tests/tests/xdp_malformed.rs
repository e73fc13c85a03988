//! Malformed input in the kernel: every truncation of every layer, bad
//! headers, QinQ, IPv4 options, long IPv6 extension chains, wrong
//! checksums, large frames. The program must load (verify), never return
//! XDP_ABORTED, pass what it cannot dispatch untouched, and count every
//! packet in exactly one counter. Needs root: run through `cargo xtask test`.

use std::net::SocketAddr;

use dispatcher::data_plane::{Loaded, HW_PROGRAM, PROGRAM};
use dispatcher_common::{
    protocol::{kind, FaasHdr},
    stats::Counter,
};
use tests::{
    packets::{
        faas_payload, ipv6_with_extension_headers, udp_frame, udp_offset, CLIENT_MAC, IFACE_MAC,
    },
    xdp::{run, XDP_PASS, XDP_TX},
};

const CONFIG: &str = r#"
    [service]
    addresses = ["10.0.0.1", "fd00::1"]

    [[functions]]
    id = 1
    workers = [{ addr = "10.0.0.10:9000", mac = "02:00:00:00:00:0a" }]

    [[functions]]
    id = 2
    workers = [{ addr = "[fd00::10]:9000", mac = "02:00:00:00:00:0b" }]
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn data_plane() -> Loaded {
    tests::xdp::data_plane(CONFIG)
}

fn total(dp: &Loaded, hw: bool) -> (u64, Vec<u64>) {
    let c = if hw {
        dp.maps.counters_hw()
    } else {
        dp.maps.counters_host()
    }
    .unwrap();
    let v: Vec<u64> = c.iter().map(|(_, n)| *n).collect();
    (v.iter().sum(), v)
}

/// Runs a frame through both variants: never ABORTED, exactly one counter
/// moves, anything not dispatched is untouched, and both variants agree.
/// Returns the host variant's verdict and counter.
fn survive(dp: &Loaded, case: &str, frame: &[u8]) -> (u32, Counter) {
    let mut results = Vec::new();
    for hw in [false, true] {
        let (sum_before, before) = total(dp, hw);
        let (verdict, out) = run(dp.named(if hw { HW_PROGRAM } else { PROGRAM }), frame);
        let (sum_after, after) = total(dp, hw);
        assert!(
            verdict == XDP_PASS || verdict == XDP_TX || verdict == 1,
            "{case}: verdict {verdict}"
        );
        assert_eq!(
            sum_after,
            sum_before + 1,
            "{case}: exactly one counter per packet"
        );
        let moved = Counter::ALL[(0..before.len()).find(|&i| after[i] != before[i]).unwrap()];
        if verdict == XDP_PASS {
            assert_eq!(out, frame, "{case}: passed frames are untouched");
        }
        results.push((verdict, moved));
    }
    assert_eq!(
        results[0], results[1],
        "{case}: the host and offload variants disagree (host first)"
    );
    results[0]
}

fn request(vlans: &[u16], client: &str, vip: &str, function_id: u32, body: usize) -> Vec<u8> {
    let payload = faas_payload(
        &FaasHdr::new(kind::REQUEST, function_id, 1),
        &vec![7u8; body],
    );
    udp_frame(
        CLIENT_MAC,
        IFACE_MAC,
        vlans,
        addr(client),
        addr(vip),
        &payload,
    )
}

/// IPv4 with `words` 32-bit words of options (NOPs), checksums recomputed.
fn with_ipv4_options(frame: &[u8], words: usize) -> Vec<u8> {
    let mut out = frame[..34].to_vec();
    out.extend(std::iter::repeat_n(1u8, words * 4));
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x45 + words as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4 * words as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let c = dispatcher_common::checksum::checksum(0, &out[14..14 + 20 + 4 * words]);
    out[24..26].copy_from_slice(&c.to_be_bytes());
    out
}

#[test]
fn every_truncation_of_every_shape_passes_and_is_counted() {
    let dp = data_plane();
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPv4",
            request(&[], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16),
        ),
        (
            "IPv4 with options",
            with_ipv4_options(&request(&[], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16), 3),
        ),
        (
            "QinQ IPv4",
            request(&[300, 200], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16),
        ),
        (
            "IPv6",
            request(&[], "[fd00::2]:4000", "[fd00::1]:7770", 2, 16),
        ),
        (
            "IPv6 with 3 extension headers",
            ipv6_with_extension_headers(
                &request(&[], "[fd00::2]:4000", "[fd00::1]:7770", 2, 16),
                &[0, 60, 43],
                0,
            ),
        ),
    ];
    for (shape, full) in shapes {
        let (verdict, counter) = survive(&dp, shape, &full);
        assert_eq!(
            (verdict, counter),
            (XDP_TX, Counter::DispatchedRequest),
            "{shape}: whole frame"
        );
        // A frame cut anywhere: before the UDP header is whole the headers
        // do not parse; after it, the IP length promises bytes the frame
        // does not hold. Neither is dispatched.
        let udp_end = udp_offset_of_shape(&full) + 8;
        for len in 14..full.len() {
            let case = format!("{shape} cut at {len} of {}", full.len());
            let (verdict, counter) = survive(&dp, &case, &full[..len]);
            assert_eq!(verdict, XDP_PASS, "{case}");
            let expected = if len < udp_end {
                Counter::PassMalformed
            } else {
                Counter::PassBadLength
            };
            assert_eq!(counter, expected, "{case}: counted as {}", counter.name());
        }
    }
}

/// The UDP header's offset in any of the shapes above (etherparse walks
/// options and extension headers).
fn udp_offset_of_shape(frame: &[u8]) -> usize {
    let headers = etherparse::PacketHeaders::from_ethernet_slice(frame).expect("parsable frame");
    frame.len() - headers.payload.slice().len() - 8
}

#[test]
fn bad_headers_are_passed_under_their_reason() {
    let dp = data_plane();
    let base = request(&[], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16);
    let u = udp_offset(&base);
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    let base6 = request(&[], "[fd00::2]:4000", "[fd00::1]:7770", 2, 16);
    let edit6 = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base6.clone();
        f(&mut v);
        v
    };
    let long_chain = ipv6_with_extension_headers(
        &request(&[], "[fd00::2]:4000", "[fd00::1]:7770", 2, 16),
        &[0, 60, 60, 60, 60, 60],
        0,
    );
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        ("IHL 0", edit(&|v| v[14] = 0x40), Counter::PassMalformed),
        (
            "IHL 15 beyond the frame",
            edit(&|v| {
                v[14] = 0x4f;
                v.truncate(14 + 50)
            }),
            Counter::PassMalformed,
        ),
        (
            "IP version 6 in an IPv4 frame",
            edit(&|v| v[14] = 0x65),
            Counter::PassMalformed,
        ),
        (
            "addressed to another host's MAC",
            edit(&|v| v[5] ^= 1),
            Counter::PassNotForUs,
        ),
        (
            "IP version 4 in an IPv6 frame",
            edit6(&|v| v[14] = 0x40),
            Counter::PassMalformed,
        ),
        (
            "IPv6 version 0",
            edit6(&|v| v[14] &= 0x0f),
            Counter::PassMalformed,
        ),
        (
            "fragment offset set",
            edit(&|v| v[21] = 0x10),
            Counter::PassFragment,
        ),
        (
            "UDP length below the FaaS header",
            edit(&|v| v[u + 4..u + 6].copy_from_slice(&40u16.to_be_bytes())),
            Counter::PassShort,
        ),
        // One case per length field, each lying in each direction it can.
        (
            "IPv4 total length past the frame",
            edit(&|v| add16(v, 16, 1)),
            Counter::PassBadLength,
        ),
        (
            "IPv4 total length 0xffff",
            edit(&|v| v[16..18].copy_from_slice(&[0xff, 0xff])),
            Counter::PassBadLength,
        ),
        (
            "IPv4 total length below its header",
            edit(&|v| v[16..18].copy_from_slice(&19u16.to_be_bytes())),
            Counter::PassBadLength,
        ),
        (
            "IPv4 total length ending inside UDP",
            edit(&|v| v[16..18].copy_from_slice(&24u16.to_be_bytes())),
            Counter::PassBadLength,
        ),
        (
            "UDP length below its header",
            edit(&|v| v[u + 4..u + 6].copy_from_slice(&7u16.to_be_bytes())),
            Counter::PassBadLength,
        ),
        (
            "UDP length 0",
            edit(&|v| v[u + 4..u + 6].copy_from_slice(&[0, 0])),
            Counter::PassBadLength,
        ),
        (
            "UDP length past the IP payload",
            edit(&|v| add16(v, u + 4, 1)),
            Counter::PassBadLength,
        ),
        (
            "IPv6 payload length past the frame",
            edit6(&|v| add16(v, 18, 1)),
            Counter::PassBadLength,
        ),
        (
            "IPv6 payload length ending inside UDP",
            edit6(&|v| v[18..20].copy_from_slice(&4u16.to_be_bytes())),
            Counter::PassBadLength,
        ),
        (
            "IPv6 UDP length past the IP payload",
            edit6(&|v| add16(v, 54 + 4, 1)),
            Counter::PassBadLength,
        ),
        (
            "IPv6 UDP length below its header",
            edit6(&|v| v[58..60].copy_from_slice(&7u16.to_be_bytes())),
            Counter::PassBadLength,
        ),
        ("bad magic", edit(&|v| v[u + 8] = 0), Counter::PassBadMagic),
        (
            "version 0",
            edit(&|v| v[u + 10] = 0),
            Counter::PassBadVersion,
        ),
        (
            "version 255",
            edit(&|v| v[u + 10] = 255),
            Counter::PassBadVersion,
        ),
        (
            "reserved kind 0",
            edit(&|v| v[u + 11] = 0),
            Counter::PassNotRequest,
        ),
        (
            "reserved kind 200",
            edit(&|v| v[u + 11] = 200),
            Counter::PassNotRequest,
        ),
        (
            "IPv6 chain longer than the bound",
            long_chain,
            Counter::PassIpv6ExtHeader,
        ),
        (
            "IPv6 hop-by-hop options after destination options",
            ipv6_with_extension_headers(&base6, &[60, 0], 0),
            Counter::PassIpv6ExtHeader,
        ),
        (
            "three VLAN tags",
            request(&[300, 200], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16)
                .iter()
                .take(12)
                .copied()
                .chain([0x81, 0x00, 0, 5])
                .chain(
                    request(&[300, 200], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16)[12..]
                        .iter()
                        .copied(),
                )
                .collect(),
            Counter::PassNotIp,
        ),
    ];
    for (case, frame, counter) in cases {
        let (verdict, got) = survive(&dp, case, &frame);
        assert_eq!(verdict, XDP_PASS, "{case}");
        assert_eq!(got, counter, "{case}: counted as {}", got.name());
    }
}

/// Adds `n` to the big-endian u16 at `at`.
fn add16(v: &mut [u8], at: usize, n: u16) {
    let x = u16::from_be_bytes([v[at], v[at + 1]]).wrapping_add(n);
    v[at..at + 2].copy_from_slice(&x.to_be_bytes());
}

/// Bytes after the IP packet (Ethernet padding, as short frames carry) and
/// a UDP datagram that ends before the IP payload does are both legal: the
/// request is dispatched, the bytes past the lengths are left as they came,
/// and the checksums, recomputed over what the lengths cover, verify.
#[test]
fn padding_and_short_udp_lengths_are_dispatched_untouched() {
    let dp = data_plane();
    for (name, base) in [
        (
            "IPv4",
            request(&[], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16),
        ),
        (
            "IPv6",
            request(&[], "[fd00::2]:4000", "[fd00::1]:7770", 2, 16),
        ),
    ] {
        let u = udp_offset(&base);
        // Ethernet padding: bytes after the IP packet.
        let mut padded = base.clone();
        padded.extend_from_slice(&[0xa5; 10]);
        // A UDP length 4 short of the IP payload (the body's last 4 bytes are
        // outside the datagram); its checksum recomputed over the datagram.
        let mut short = base.clone();
        add16(&mut short, u + 4, 0u16.wrapping_sub(4));
        short[u + 6..u + 8].copy_from_slice(&[0, 0]);
        let datagram_len = u16::from_be_bytes([short[u + 4], short[u + 5]]) as usize;
        let c = udp_checksum(&short, u, datagram_len);
        short[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
        for (case, frame, tail_from) in [
            ("padded", &padded, base.len()),
            ("short UDP length", &short, u + datagram_len),
        ] {
            let case = format!("{name} {case}");
            let (verdict, counter) = survive(&dp, &case, frame);
            assert_eq!(
                (verdict, counter),
                (XDP_TX, Counter::DispatchedRequest),
                "{case}"
            );
            for program in [PROGRAM, HW_PROGRAM] {
                let (_, out) = run(dp.named(program), frame);
                assert_eq!(out.len(), frame.len(), "{case}: length");
                assert_eq!(
                    out[tail_from..],
                    frame[tail_from..],
                    "{case}: the bytes past the lengths are untouched"
                );
                let datagram_len = u16::from_be_bytes([out[u + 4], out[u + 5]]) as usize;
                assert_eq!(
                    udp_checksum(&out, u, datagram_len),
                    u16::from_be_bytes([out[u + 6], out[u + 7]]),
                    "{case}: UDP checksum over the datagram"
                );
                if name == "IPv4" {
                    assert_eq!(
                        dispatcher_common::checksum::checksum(0, &out[14..34]),
                        0,
                        "{case}: IPv4 header checksum"
                    );
                }
            }
        }
    }
}

/// The UDP checksum of the datagram at `u` of `len` bytes (its checksum
/// field taken as zero), over the IPv4 or IPv6 pseudo-header.
fn udp_checksum(frame: &[u8], u: usize, len: usize) -> u16 {
    let (src, dst) = if frame[12..14] == [0x08, 0x00] {
        (&frame[26..30], &frame[30..34])
    } else {
        (&frame[22..38], &frame[38..54])
    };
    let mut input = Vec::new();
    input.extend_from_slice(src);
    input.extend_from_slice(dst);
    input.extend_from_slice(&[0, 17]);
    input.extend_from_slice(&(len as u16).to_be_bytes());
    input.extend_from_slice(&frame[u..u + 6]);
    input.extend_from_slice(&[0, 0]);
    input.extend_from_slice(&frame[u + 8..u + len]);
    match dispatcher_common::checksum::checksum(0, &input) {
        0 => 0xffff,
        c => c,
    }
}

#[test]
fn a_wrong_udp_checksum_stays_wrong() {
    // The data plane patches checksums, it does not recompute them: a
    // corrupted datagram must still fail the worker's check.
    let dp = data_plane();
    let mut frame = request(&[], "10.0.0.2:4000", "10.0.0.1:7770", 1, 16);
    let u = udp_offset(&frame);
    frame[u + 6] ^= 0x5a;
    let (verdict, out) = run(dp.named(PROGRAM), &frame);
    assert_eq!(verdict, XDP_TX);
    let headers = etherparse::PacketHeaders::from_ethernet_slice(&out).unwrap();
    let (Some(etherparse::NetHeaders::Ipv4(ip, _)), Some(etherparse::TransportHeader::Udp(udp))) =
        (headers.net, headers.transport)
    else {
        panic!("not IPv4/UDP")
    };
    assert_ne!(
        udp.checksum,
        udp.calc_checksum_ipv4(&ip, headers.payload.slice())
            .unwrap()
    );
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "the IP header checksum was right and stays right"
    );
}

#[test]
fn large_frames_are_dispatched() {
    let dp = data_plane();
    for body in [0usize, 1000, 3000] {
        let frame = request(&[], "10.0.0.2:4000", "10.0.0.1:7770", 1, body);
        let (verdict, counter) = survive(&dp, &format!("{body}-byte body"), &frame);
        assert_eq!((verdict, counter), (XDP_TX, Counter::DispatchedRequest));
    }
}
