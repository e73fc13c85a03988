//! The data plane in the kernel, byte for byte: crafted frames go through
//! the real XDP program with BPF_PROG_TEST_RUN, and each test asserts the
//! verdict, the exact output bytes, the checksums and the counter.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN): run through `cargo xtask test`.

use std::net::SocketAddr;

use dispatcher::{config::Config, control, data_plane::Loaded};
use dispatcher_common::{
    maps::{policy, worker_state},
    protocol::{kind, FaasHdr},
    stats::Counter,
};
use tests::{
    packets::{
        assert_checksums_verify, faas_payload, ipv6_with_extension_headers, udp_frame,
        zero_udp_checksum, CLIENT_MAC, IFACE_MAC,
    },
    xdp::{assert_counted, XDP_PASS, XDP_TX},
};

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
    let mut dp = tests::xdp::data_plane(CONFIG);
    let config = Config::parse(CONFIG).unwrap();
    let mut down = config.functions[3].workers[0].to_map(4).unwrap();
    down.state = worker_state::DOWN;
    control::set_function(&mut dp.maps, 4, policy::ROUND_ROBIN, &[down]).unwrap();
    dp
}

/// Which program runs, and where its counters are: the host variant
/// (`dispatch`) and the offload variant (`dispatch_hw`) must behave the
/// same on every case here.
#[derive(Clone, Copy, Debug)]
enum Variant {
    Host,
    Hw,
}

const VARIANTS: [Variant; 2] = [Variant::Host, Variant::Hw];

fn run(dp: &Loaded, v: Variant, frame: &[u8]) -> (u32, Vec<u8>) {
    let name = match v {
        Variant::Host => dispatcher::data_plane::PROGRAM,
        Variant::Hw => dispatcher::data_plane::HW_PROGRAM,
    };
    tests::xdp::run(dp.named(name), frame)
}

fn counters(dp: &Loaded, v: Variant) -> Vec<(Counter, u64)> {
    match v {
        Variant::Host => dp.maps.counters_host().unwrap(),
        Variant::Hw => dp.maps.counters_hw().unwrap(),
    }
}

/// Runs `frame` through both variants; asserts verdict, output and the
/// one counter that must move, for each.
fn check(dp: &Loaded, case: &str, frame: &[u8], verdict: u32, expected: &[u8], counter: Counter) {
    for v in VARIANTS {
        let before = counters(dp, v);
        let (got, out) = run(dp, v, frame);
        assert_eq!(got, verdict, "{case} ({v:?}): verdict");
        assert_eq!(out, expected, "{case} ({v:?}): output bytes");
        assert_counted(
            &before,
            &counters(dp, v),
            counter,
            &format!("{case} ({v:?})"),
        );
    }
}

fn request(function_id: u32) -> Vec<u8> {
    faas_payload(&FaasHdr::new(kind::REQUEST, function_id, 0xABCD), b"hello")
}

/// A REQUEST frame from the client to `vip`, and the frame the program must
/// make of it (built from scratch, so its checksums are computed afresh).
fn request_and_expected(
    vlans: &[u16],
    client: &str,
    vip: &str,
    worker: &str,
    worker_mac: [u8; 6],
    function_id: u32,
) -> (Vec<u8>, Vec<u8>) {
    let payload = request(function_id);
    let input = udp_frame(
        CLIENT_MAC,
        IFACE_MAC,
        vlans,
        addr(client),
        addr(vip),
        &payload,
    );
    let expected = udp_frame(
        IFACE_MAC,
        worker_mac,
        vlans,
        addr(client),
        addr(worker),
        &payload,
    );
    (input, expected)
}

#[test]
fn ipv4_request_is_rewritten_toward_its_worker_and_transmitted() {
    let dp = data_plane();
    let (input, expected) = request_and_expected(
        &[],
        "10.0.0.2:40000",
        "10.0.0.1:7770",
        "10.0.0.10:9000",
        WORKER4_MAC,
        1,
    );
    assert_checksums_verify(&expected, false);
    check(
        &dp,
        "ipv4 request",
        &input,
        XDP_TX,
        &expected,
        Counter::DispatchedRequest,
    );
}

#[test]
fn ipv6_request_is_rewritten_toward_its_worker_and_transmitted() {
    let dp = data_plane();
    let (input, expected) = request_and_expected(
        &[],
        "[fd00::2]:40000",
        "[fd00::1]:7770",
        "[fd00::10]:9001",
        WORKER6_MAC,
        2,
    );
    assert_checksums_verify(&expected, false);
    check(
        &dp,
        "ipv6 request",
        &input,
        XDP_TX,
        &expected,
        Counter::DispatchedRequest,
    );
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let dp = data_plane();
    let (input, expected) = request_and_expected(
        &[],
        "[fd00::2]:40000",
        "[fd00::1]:7770",
        "[fd00::10]:9001",
        WORKER6_MAC,
        2,
    );
    // Hop-by-hop, destination options, routing with no segments left.
    let chain = [0u8, 60, 43];
    let input = ipv6_with_extension_headers(&input, &chain, 0);
    let expected = ipv6_with_extension_headers(&expected, &chain, 0);
    assert_checksums_verify(&expected, false);
    check(
        &dp,
        "three extension headers",
        &input,
        XDP_TX,
        &expected,
        Counter::DispatchedRequest,
    );
    let (plain, _) = request_and_expected(
        &[],
        "[fd00::2]:40000",
        "[fd00::1]:7770",
        "[fd00::10]:9001",
        WORKER6_MAC,
        2,
    );
    let too_long = ipv6_with_extension_headers(&plain, &[0, 60, 60, 60, 60], 0);
    check(
        &dp,
        "five extension headers",
        &too_long,
        XDP_PASS,
        &too_long,
        Counter::PassIpv6ExtHeader,
    );
    let routed = ipv6_with_extension_headers(&plain, &[43], 1);
    check(
        &dp,
        "routing header with a segment left",
        &routed,
        XDP_PASS,
        &routed,
        Counter::PassIpv6ExtHeader,
    );
    let fragment = ipv6_with_extension_headers(&plain, &[0, 44], 0);
    check(
        &dp,
        "fragment header",
        &fragment,
        XDP_PASS,
        &fragment,
        Counter::PassFragment,
    );
}

#[test]
fn vlan_tagged_requests_keep_their_tags() {
    let dp = data_plane();
    for vlans in [&[100u16][..], &[200, 100][..]] {
        let (input, expected) = request_and_expected(
            vlans,
            "10.0.0.2:40000",
            "10.0.0.1:7770",
            "10.0.0.10:9000",
            WORKER4_MAC,
            1,
        );
        assert_checksums_verify(&expected, false);
        check(
            &dp,
            &format!("vlans {vlans:?}"),
            &input,
            XDP_TX,
            &expected,
            Counter::DispatchedRequest,
        );
    }
}

#[test]
fn zero_udp_checksum_stays_zero() {
    let dp = data_plane();
    let (mut input, mut expected) = request_and_expected(
        &[],
        "10.0.0.2:40000",
        "10.0.0.1:7770",
        "10.0.0.10:9000",
        WORKER4_MAC,
        1,
    );
    zero_udp_checksum(&mut input);
    zero_udp_checksum(&mut expected);
    assert_checksums_verify(&expected, true);
    check(
        &dp,
        "zero UDP checksum",
        &input,
        XDP_TX,
        &expected,
        Counter::DispatchedRequest,
    );
}

#[test]
fn checksums_stay_right_for_many_addresses_and_ports() {
    // Incremental patching must equal a full recompute whatever the words;
    // vary client address, port and payload so carries happen.
    let dp = data_plane();
    for i in 0..300u32 {
        let client = format!(
            "10.{}.{}.{}:{}",
            i % 7,
            (i * 37) % 256,
            (i * 91) % 255 + 1,
            1024 + i * 211
        );
        let body = vec![(i * 13) as u8; (i % 50) as usize];
        let payload = faas_payload(&FaasHdr::new(kind::REQUEST, 1, i as u64), &body);
        let input = udp_frame(
            CLIENT_MAC,
            IFACE_MAC,
            &[],
            addr(&client),
            addr("10.0.0.1:7770"),
            &payload,
        );
        let expected = udp_frame(
            IFACE_MAC,
            WORKER4_MAC,
            &[],
            addr(&client),
            addr("10.0.0.10:9000"),
            &payload,
        );
        check(
            &dp,
            &format!("case {i}"),
            &input,
            XDP_TX,
            &expected,
            Counter::DispatchedRequest,
        );
    }
}

/// Everything that is not a dispatchable REQUEST: passed untouched, and
/// counted under its reason.
#[test]
fn everything_else_passes_untouched_and_is_counted() {
    let dp = data_plane();
    let vip = "10.0.0.1:7770";
    let client = "10.0.0.2:40000";
    let to_vip =
        |payload: &[u8]| udp_frame(CLIENT_MAC, IFACE_MAC, &[], addr(client), addr(vip), payload);
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
    let ipv6_esp = {
        let mut f = udp_frame(
            CLIENT_MAC,
            IFACE_MAC,
            &[],
            addr("[fd00::2]:4000"),
            addr("[fd00::1]:7770"),
            &request(2),
        );
        f[14 + 6] = 50; // next header: ESP
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
        (
            "other port",
            udp_frame(
                CLIENT_MAC,
                IFACE_MAC,
                &[],
                addr(client),
                addr("10.0.0.1:53"),
                &request(1),
            ),
            Counter::PassNotService,
        ),
        (
            "other address",
            udp_frame(
                CLIENT_MAC,
                IFACE_MAC,
                &[],
                addr(client),
                addr("10.0.0.9:7770"),
                &request(1),
            ),
            Counter::PassNotService,
        ),
        ("IPv4 fragment", fragment, Counter::PassFragment),
        ("IPv6 ESP", ipv6_esp, Counter::PassIpv6ExtHeader),
        ("bad IHL", bad_ihl, Counter::PassMalformed),
        // (A frame shorter than an Ethernet header never reaches XDP: the
        // kernel, and BPF_PROG_TEST_RUN, refuse it.)
        ("truncated VLAN tag", truncated_vlan, Counter::PassMalformed),
        (
            "truncated IPv4",
            to_vip(&request(1))[..30].to_vec(),
            Counter::PassMalformed,
        ),
        (
            "truncated UDP",
            to_vip(&request(1))[..38].to_vec(),
            Counter::PassMalformed,
        ),
        (
            "shorter than the FaaS header",
            to_vip(&request(1)[..47]),
            Counter::PassShort,
        ),
        (
            "bad magic",
            with_hdr(&|h| h.magic = [0xFA, 0x46]),
            Counter::PassBadMagic,
        ),
        (
            "bad version",
            with_hdr(&|h| h.version = 2),
            Counter::PassBadVersion,
        ),
        (
            "RESPONSE",
            with_hdr(&|h| h.kind = kind::RESPONSE),
            Counter::PassNotRequest,
        ),
        (
            "unknown function",
            to_vip(&request(99)),
            Counter::PassUnknownFunction,
        ),
        (
            "function without workers",
            to_vip(&request(3)),
            Counter::PassNoWorker,
        ),
        ("worker down", to_vip(&request(4)), Counter::PassNoWorker),
        (
            "IPv6 request to an IPv4 worker",
            udp_frame(
                CLIENT_MAC,
                IFACE_MAC,
                &[],
                addr("[fd00::2]:4000"),
                addr("[fd00::1]:7770"),
                &request(1),
            ),
            Counter::PassFamilyMismatch,
        ),
    ];
    for (case, frame, counter) in cases {
        check(&dp, case, &frame, XDP_PASS, &frame, counter);
    }
}
