//! The data plane in the kernel, byte for byte: crafted frames go through
//! the real XDP program with BPF_PROG_TEST_RUN, and each test asserts the
//! verdict, the exact output bytes, the checksums and the counter.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN): run through `cargo xtask test`.

use std::net::SocketAddr;

use aya::programs::{TestRun, TestRunOptions};
use dispatcher::{config::Config, data_plane::Loaded};
use dispatcher_common::{
    maps::{worker_state, WorkerKey},
    protocol::{kind, FaasHdr},
    stats::Counter,
};
use tests::packets::{
    assert_checksums_verify, faas_payload, udp_frame, zero_udp_checksum, CLIENT_MAC, IFACE_MAC,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const WORKER4_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const WORKER6_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// Function 1: one IPv4 worker. Function 2: one IPv6 worker. Function 3:
/// no workers. Function 4: its only worker is down.
const CONFIG: &str = r#"
    [service]
    addresses = ["10.0.0.1", "fd00::1"]
    port = 7770

    [[functions]]
    id = 1
    workers = [{ addr = "10.0.0.10:9000", mac = "02:00:00:00:00:0a" }]

    [[functions]]
    id = 2
    workers = [{ addr = "[fd00::10]:9001", mac = "02:00:00:00:00:0b" }]

    [[functions]]
    id = 3

    [[functions]]
    id = 4
    workers = [{ addr = "10.0.0.11:9000", mac = "02:00:00:00:00:0c" }]
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A loaded (not attached) data plane configured with `CONFIG`.
fn data_plane() -> Loaded {
    let mut dp = Loaded::new().expect("load the data plane (are you root?)");
    dp.maps.set_iface_mac(IFACE_MAC).unwrap();
    dp.maps.apply(&Config::parse(CONFIG).unwrap()).unwrap();
    let key = WorkerKey { function_id: 4, slot: 0 };
    let mut down = dp.maps.workers.get(&key, 0).unwrap();
    down.state = worker_state::DOWN;
    dp.maps.workers.insert(key, down, 0).unwrap();
    dp
}

/// Runs `frame` through the program once: (verdict, output frame).
fn run(dp: &Loaded, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let result = dp.program().test_run(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn counters(dp: &Loaded) -> Vec<(Counter, u64)> {
    dp.maps.counters().unwrap()
}

/// Asserts that exactly `counter` went up by one between two snapshots.
fn assert_counted(before: &[(Counter, u64)], after: &[(Counter, u64)], counter: Counter, case: &str) {
    for ((c, b), (_, a)) in before.iter().zip(after) {
        let want = if *c == counter { b + 1 } else { *b };
        assert_eq!(*a, want, "{case}: counter {} went from {b} to {a}", c.name());
    }
}

fn request(function_id: u32) -> Vec<u8> {
    faas_payload(&FaasHdr::new(kind::REQUEST, function_id, 0xABCD), b"hello")
}

/// A REQUEST frame from the client to `vip`, and the frame the program must
/// make of it (built from scratch, so its checksums are computed afresh).
fn request_and_expected(vlans: &[u16], client: &str, vip: &str, worker: &str, worker_mac: [u8; 6], function_id: u32) -> (Vec<u8>, Vec<u8>) {
    let payload = request(function_id);
    let input = udp_frame(CLIENT_MAC, IFACE_MAC, vlans, addr(client), addr(vip), &payload);
    let expected = udp_frame(IFACE_MAC, worker_mac, vlans, addr(client), addr(worker), &payload);
    (input, expected)
}

#[test]
fn ipv4_request_is_rewritten_toward_its_worker_and_transmitted() {
    let dp = data_plane();
    let (input, expected) = request_and_expected(&[], "10.0.0.2:40000", "10.0.0.1:7770", "10.0.0.10:9000", WORKER4_MAC, 1);
    let before = counters(&dp);
    let (verdict, out) = run(&dp, &input);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, expected, "output bytes");
    assert_checksums_verify(&out, false);
    assert_counted(&before, &counters(&dp), Counter::Dispatched, "ipv4 request");
}

#[test]
fn ipv6_request_is_rewritten_toward_its_worker_and_transmitted() {
    let dp = data_plane();
    let (input, expected) = request_and_expected(&[], "[fd00::2]:40000", "[fd00::1]:7770", "[fd00::10]:9001", WORKER6_MAC, 2);
    let before = counters(&dp);
    let (verdict, out) = run(&dp, &input);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, expected, "output bytes");
    assert_checksums_verify(&out, false);
    assert_counted(&before, &counters(&dp), Counter::Dispatched, "ipv6 request");
}

#[test]
fn vlan_tagged_requests_keep_their_tags() {
    let dp = data_plane();
    for vlans in [&[100u16][..], &[200, 100][..]] {
        let (input, expected) = request_and_expected(vlans, "10.0.0.2:40000", "10.0.0.1:7770", "10.0.0.10:9000", WORKER4_MAC, 1);
        let (verdict, out) = run(&dp, &input);
        assert_eq!(verdict, XDP_TX, "vlans {vlans:?}");
        assert_eq!(out, expected, "vlans {vlans:?}");
        assert_checksums_verify(&out, false);
    }
}

#[test]
fn zero_udp_checksum_stays_zero() {
    let dp = data_plane();
    let (mut input, mut expected) = request_and_expected(&[], "10.0.0.2:40000", "10.0.0.1:7770", "10.0.0.10:9000", WORKER4_MAC, 1);
    zero_udp_checksum(&mut input);
    zero_udp_checksum(&mut expected);
    let (verdict, out) = run(&dp, &input);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, expected);
    assert_checksums_verify(&out, true);
}

#[test]
fn checksums_stay_right_for_many_addresses_and_ports() {
    // Incremental patching must equal a full recompute whatever the words;
    // vary client address, port and payload so carries happen.
    let dp = data_plane();
    for i in 0..300u32 {
        let client = format!("10.{}.{}.{}:{}", i % 7, (i * 37) % 256, (i * 91) % 255 + 1, 1024 + i * 211);
        let body = vec![(i * 13) as u8; (i % 50) as usize];
        let payload = faas_payload(&FaasHdr::new(kind::REQUEST, 1, i as u64), &body);
        let input = udp_frame(CLIENT_MAC, IFACE_MAC, &[], addr(&client), addr("10.0.0.1:7770"), &payload);
        let expected = udp_frame(IFACE_MAC, WORKER4_MAC, &[], addr(&client), addr("10.0.0.10:9000"), &payload);
        let (verdict, out) = run(&dp, &input);
        assert_eq!(verdict, XDP_TX, "case {i}");
        assert_eq!(out, expected, "case {i}");
    }
}

/// Everything that is not a dispatchable REQUEST: passed untouched, and
/// counted under its reason.
#[test]
fn everything_else_passes_untouched_and_is_counted() {
    let dp = data_plane();
    let vip = "10.0.0.1:7770";
    let client = "10.0.0.2:40000";
    let to_vip = |payload: &[u8]| udp_frame(CLIENT_MAC, IFACE_MAC, &[], addr(client), addr(vip), payload);
    let with_hdr = |f: &dyn Fn(&mut FaasHdr)| {
        let mut h = FaasHdr::new(kind::REQUEST, 1, 7);
        f(&mut h);
        to_vip(&faas_payload(&h, b"x"))
    };

    let arp = {
        let mut f = to_vip(&request(1));
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        f
    };
    let tcp = {
        let mut f = to_vip(&request(1));
        f[23] = 6; // IPv4 protocol: TCP (checksum no longer matters: passed)
        f
    };
    let fragment = {
        let mut f = to_vip(&request(1));
        f[20] = 0x20; // More Fragments
        f
    };
    let bad_ihl = {
        let mut f = to_vip(&request(1));
        f[14] = 0x44; // IHL 4: shorter than an IPv4 header
        f
    };
    let ipv6_hop_by_hop = {
        let mut f = udp_frame(CLIENT_MAC, IFACE_MAC, &[], addr("[fd00::2]:4000"), addr("[fd00::1]:7770"), &request(2));
        f[14 + 6] = 0; // next header: hop-by-hop options
        f
    };
    let truncated_vlan = {
        let mut f = to_vip(&request(1));
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f.truncate(16); // half a tag
        f
    };
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        ("ARP", arp, Counter::PassNotIp),
        ("TCP", tcp, Counter::PassNotUdp),
        ("other port", udp_frame(CLIENT_MAC, IFACE_MAC, &[], addr(client), addr("10.0.0.1:53"), &request(1)), Counter::PassNotService),
        ("other address", udp_frame(CLIENT_MAC, IFACE_MAC, &[], addr(client), addr("10.0.0.9:7770"), &request(1)), Counter::PassNotService),
        ("IPv4 fragment", fragment, Counter::PassFragment),
        ("IPv6 extension header", ipv6_hop_by_hop, Counter::PassIpv6ExtHeader),
        ("bad IHL", bad_ihl, Counter::PassMalformed),
        // (A frame shorter than an Ethernet header never reaches XDP: the
        // kernel, and BPF_PROG_TEST_RUN, refuse it.)
        ("truncated VLAN tag", truncated_vlan, Counter::PassMalformed),
        ("truncated IPv4", to_vip(&request(1))[..30].to_vec(), Counter::PassMalformed),
        ("truncated UDP", to_vip(&request(1))[..38].to_vec(), Counter::PassMalformed),
        ("shorter than the FaaS header", to_vip(&request(1)[..47]), Counter::PassShort),
        ("bad magic", with_hdr(&|h| h.magic = [0xFA, 0x46]), Counter::PassBadMagic),
        ("bad version", with_hdr(&|h| h.version = 2), Counter::PassBadVersion),
        ("RESPONSE", with_hdr(&|h| h.kind = kind::RESPONSE), Counter::PassNotRequest),
        ("unknown function", to_vip(&request(99)), Counter::PassUnknownFunction),
        ("function without workers", to_vip(&request(3)), Counter::PassNoWorker),
        ("worker down", to_vip(&request(4)), Counter::PassNoWorker),
        ("IPv6 request to an IPv4 worker", udp_frame(CLIENT_MAC, IFACE_MAC, &[], addr("[fd00::2]:4000"), addr("[fd00::1]:7770"), &request(1)), Counter::PassFamilyMismatch),
    ];
    for (case, frame, counter) in cases {
        let before = counters(&dp);
        let (verdict, out) = run(&dp, &frame);
        assert_eq!(verdict, XDP_PASS, "{case}: verdict");
        assert_eq!(out, frame, "{case}: the frame must pass untouched");
        assert_counted(&before, &counters(&dp), counter, case);
    }
}
