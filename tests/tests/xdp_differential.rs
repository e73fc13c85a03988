//! Differential test: generated packets, valid and malformed, go through the
//! XDP program (both variants, BPF_PROG_TEST_RUN) and through the reference
//! model (dispatcher_common::model) reading the same maps. Verdicts,
//! counters and output bytes must match exactly; for p2c, whose samples
//! are random, the kernel's choice must be one the model allows, with the
//! same bytes. Needs root: run through `cargo xtask test`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dispatcher::{
    control,
    data_plane::{Loaded, WithTurns, HW_PROGRAM, PROGRAM},
};
use dispatcher_common::{
    checksum,
    maps::policy,
    model::{self, Verdict, View},
    protocol::{FaasHdr, MAGIC},
    stats::Counter,
};
use proptest::{prelude::*, strategy::ValueTree};
use tests::{
    packets::{CLIENT_MAC, IFACE_MAC},
    xdp::{run, stay_on_this_cpu, XDP_DROP, XDP_PASS, XDP_TX},
};

const CONFIG: &str = r#"
    [service]
    addresses = ["10.0.0.1", "fd00::1"]

    [[functions]]
    id = 10
    policy = "round-robin"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11", weight = 3 },
    ]

    [[functions]]
    id = 11
    policy = "hash"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
      { addr = "10.0.0.12:9000", mac = "02:00:00:00:00:12" },
    ]

    [[functions]]
    id = 12
    policy = "least-loaded"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.12:9000", mac = "02:00:00:00:00:12" },
    ]

    [[functions]]
    id = 13
    policy = "p2c"
    workers = [
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
      { addr = "10.0.0.12:9000", mac = "02:00:00:00:00:12" },
    ]

    [[functions]]
    id = 14
    policy = "round-robin"
    workers = [
      { addr = "[fd00::10]:9000", mac = "02:00:00:00:06:10" },
      { addr = "[fd00::11]:9000", mac = "02:00:00:00:06:11" },
    ]

    [[functions]]
    id = 15

    [[workflows]]
    id = 100
    steps = [10, 11, 12]

    [[workflows]]
    id = 101
    steps = [14]
"#;

/// Ids the generator draws from: functions, workflows, unknown.
const IDS: [u32; 9] = [10, 11, 12, 13, 14, 15, 100, 101, 4242];
const SOURCES_V4: [[u8; 4]; 4] = [
    [10, 0, 0, 2],
    [10, 0, 0, 10],
    [10, 0, 0, 11],
    [192, 168, 7, 7],
];

#[derive(Debug, Clone)]
struct Spec {
    vlans: u8,
    v6: bool,
    ipv4_option_words: u8,
    ext_headers: Vec<u8>,
    to_vip: bool,
    to_service_port: bool,
    source: usize,
    source_port: u16,
    magic_ok: bool,
    version: u8,
    kind: u8,
    function: usize,
    key: u64,
    workflow_id: u32,
    step: u8,
    flags: u8,
    payload: Vec<u8>,
    zero_checksum: bool,
    fragment: bool,
    truncate: Option<usize>,
    corrupt: Option<(usize, u8)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        (
            0u8..=2,
            prop::bool::weighted(0.3),
            0u8..=3,
            prop::collection::vec(prop::sample::select(vec![0u8, 43, 60, 44, 51]), 0..=5),
        ),
        (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.9),
            0usize..4,
            prop::sample::select(vec![9000u16, 40000, 7770, 1]),
        ),
        (
            prop::bool::weighted(0.9),
            prop::sample::select(vec![1u8, 1, 1, 2]),
            0u8..=6,
            0usize..IDS.len(),
            prop::sample::select(vec![0u64, 1, 0xdead_beef_cafe]),
        ),
        (
            prop::sample::select(vec![0u32, 100, 101, 77]),
            0u8..=3,
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..64),
        ),
        (
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.05),
            prop::option::weighted(0.1, 0usize..200),
            prop::option::weighted(0.1, (0usize..200, any::<u8>())),
        ),
    )
        .prop_map(
            |(
                (vlans, v6, ipv4_option_words, ext_headers),
                (to_vip, to_service_port, source, source_port),
                (magic_ok, version, kind, function, key),
                (workflow_id, step, flags, payload),
                (zero_checksum, fragment, truncate, corrupt),
            )| Spec {
                vlans,
                v6,
                ipv4_option_words,
                ext_headers: if v6 { ext_headers } else { Vec::new() },
                to_vip,
                to_service_port,
                source,
                source_port,
                magic_ok,
                version,
                kind,
                function,
                key,
                workflow_id,
                step,
                flags,
                payload,
                zero_checksum,
                fragment,
                truncate,
                corrupt,
            },
        )
}

/// Builds the frame a spec describes, by hand (IPv4 options and IPv6
/// extension headers included), with correct checksums before mutation.
fn build(s: &Spec) -> Vec<u8> {
    let mut hdr = FaasHdr::new(s.kind, IDS[s.function], 1234);
    if !s.magic_ok {
        hdr.magic = (MAGIC ^ 0x0100).to_be_bytes();
    }
    hdr.version = s.version;
    hdr.key = s.key.to_be_bytes();
    hdr.workflow_id = s.workflow_id.to_be_bytes();
    hdr.step = s.step;
    hdr.flags = s.flags;
    hdr.reply_port = 5555u16.to_be_bytes();
    hdr.reply_addr = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets();
    let mut udp_payload = hdr.to_bytes().to_vec();
    udp_payload.extend_from_slice(&s.payload);

    let (src, dst): (IpAddr, IpAddr) = if s.v6 {
        let src = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, [2, 0x10, 0x11, 0x77][s.source]);
        (
            src.into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, if s.to_vip { 1 } else { 9 }).into(),
        )
    } else {
        (
            Ipv4Addr::from(SOURCES_V4[s.source]).into(),
            Ipv4Addr::new(10, 0, 0, if s.to_vip { 1 } else { 9 }).into(),
        )
    };
    let dport: u16 = if s.to_service_port { 7770 } else { 7771 };
    let udp_len = 8 + udp_payload.len() as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&s.source_port.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&udp_payload);
    let pseudo = |src: &[u8], dst: &[u8]| {
        let mut p = Vec::new();
        p.extend_from_slice(src);
        p.extend_from_slice(dst);
        p.extend_from_slice(&[0, 17]);
        p.extend_from_slice(&udp_len.to_be_bytes());
        p
    };

    let mut frame = Vec::new();
    frame.extend_from_slice(&IFACE_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    if s.vlans == 2 {
        frame.extend_from_slice(&[0x88, 0xa8, 0, 200]);
    }
    if s.vlans >= 1 {
        frame.extend_from_slice(&[0x81, 0x00, 0, 100]);
    }
    match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mut sum_input = pseudo(&a.octets(), &b.octets());
            sum_input.extend_from_slice(&udp);
            let c = checksum::checksum(0, &sum_input);
            if !s.zero_checksum {
                udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            }
            frame.extend_from_slice(&[0x08, 0x00]);
            let ihl = 5 + s.ipv4_option_words;
            let total = ihl as u16 * 4 + udp.len() as u16;
            let mut ip = vec![0x40 | ihl, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[
                0x12,
                0x34,
                if s.fragment { 0x20 } else { 0x40 },
                0,
                64,
                17,
                0,
                0,
            ]);
            ip.extend_from_slice(&a.octets());
            ip.extend_from_slice(&b.octets());
            ip.extend(std::iter::repeat_n(1u8, s.ipv4_option_words as usize * 4)); // NOP options
            let c = checksum::checksum(0, &ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mut sum_input = pseudo(&a.octets(), &b.octets());
            sum_input.extend_from_slice(&udp);
            let c = checksum::checksum(0, &sum_input);
            if !s.zero_checksum {
                udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
            }
            frame.extend_from_slice(&[0x86, 0xdd]);
            let payload_len = (udp.len() + 8 * s.ext_headers.len()) as u16;
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&payload_len.to_be_bytes());
            frame.push(*s.ext_headers.first().unwrap_or(&17));
            frame.push(64);
            frame.extend_from_slice(&a.octets());
            frame.extend_from_slice(&b.octets());
            for (i, _) in s.ext_headers.iter().enumerate() {
                let next = s.ext_headers.get(i + 1).copied().unwrap_or(17);
                frame.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        _ => unreachable!(),
    }
    frame.extend_from_slice(&udp);
    if let Some((at, byte)) = s.corrupt {
        let at = at % frame.len();
        frame[at] ^= byte;
    }
    if let Some(len) = s.truncate {
        frame.truncate(len.max(14));
    }
    frame
}

fn xdp_code(v: Verdict) -> u32 {
    match v {
        Verdict::Tx => XDP_TX,
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
        Verdict::Redirect => 4,
    }
}

fn data_plane() -> Loaded {
    let mut dp = tests::xdp::data_plane(CONFIG);
    control::set_load(&mut dp.maps, 12, 0, 3).unwrap();
    dp
}

fn counters(dp: &Loaded, hw: bool) -> Vec<u64> {
    let c = if hw {
        dp.maps.counters_hw()
    } else {
        dp.maps.counters_host()
    };
    c.unwrap().into_iter().map(|(_, n)| n).collect()
}

/// Runs one frame through one variant and the model; panics on a mismatch.
fn compare(dp: &Loaded, hw: bool, frame: &[u8]) {
    stay_on_this_cpu();
    // The host variant takes round-robin turns per CPU (RR_TURNS, which
    // `Maps` reads for this thread's CPU), the offload variant from the
    // shared RR_CURSORS.
    let view = WithTurns {
        maps: &dp.maps,
        turn: |index| {
            if hw {
                dp.maps.rr_cursors.get(&index, 0).map_or(0, |t| t as u32)
            } else {
                dp.maps.turn(index)
            }
        },
    };
    let mut expected = frame.to_vec();
    let outcome = model::process(&mut expected, &view, 0);
    let before = counters(dp, hw);
    let (verdict, out) = run(dp.named(if hw { HW_PROGRAM } else { PROGRAM }), frame);
    let after = counters(dp, hw);
    let moved: Vec<&str> = Counter::ALL
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a != b)
        .map(|(c, _)| c.name())
        .collect();
    assert_eq!(moved, vec![outcome.counter.name()], "counter (hw: {hw})");
    // An oracle of its own, so that a mistake shared by the model and the
    // kernel still shows: a dispatched frame is one a strict receiver
    // accepts (etherparse checks every length field against the bytes).
    if outcome.dispatch.is_some() {
        let strict = etherparse::SlicedPacket::from_ethernet(frame);
        assert!(
            matches!(
                strict,
                Ok(etherparse::SlicedPacket {
                    transport: Some(etherparse::TransportSlice::Udp(_)),
                    ..
                })
            ),
            "dispatched a frame a strict receiver rejects: {strict:?}"
        );
    }
    assert_eq!(
        verdict,
        xdp_code(outcome.verdict),
        "verdict (hw: {hw}), model says {:?}",
        outcome.counter
    );
    // BUSY re-steering takes ring turns whatever the policy: only a p2c
    // request samples at random.
    let p2c = outcome.dispatch.is_some_and(|d| {
        d.function.policy == policy::P2C
            && !matches!(
                d.edit,
                dispatcher_common::protocol::HeaderEdit::Resteer { .. }
            )
    });
    if !p2c {
        assert_eq!(out, expected, "output bytes (hw: {hw})");
        return;
    }
    // p2c: find the slot the kernel chose (by its destination MAC), then let
    // the model draw both samples at that slot's ring position.
    let d = outcome.dispatch.unwrap();
    let slot = (0..2u32)
        .find(|s| {
            let w = dp.maps.worker(d.function.worker_index(*s));
            w.is_some_and(|w| w.mac == out[0..6])
        })
        .expect("the kernel chose a worker of the function");
    let position = (0..=d.function.ring_mask as u32)
        .find(|p| dp.maps.ring_slot(&d.function, *p) == Some(slot as u8))
        .expect("slot in the ring");
    let mut expected = frame.to_vec();
    model::process(&mut expected, &view, position | (position << 8));
    assert_eq!(out, expected, "p2c output bytes (hw: {hw})");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn kernel_and_model_agree(specs in prop::collection::vec(spec(), 1..8)) {
        // A fresh data plane per case would cost a load; a handful of
        // packets per case shares one, as a real sequence would.
        thread_local!(static DP: Loaded = data_plane());
        DP.with(|dp| {
            for s in &specs {
                let frame = build(s);
                compare(dp, false, &frame);
                compare(dp, true, &frame);
            }
        });
    }
}

/// Where a spec's IP and UDP headers start in the frame `build` makes.
fn offsets(s: &Spec) -> (usize, usize) {
    let l3 = 14 + 4 * s.vlans as usize;
    let l4 = if s.v6 {
        l3 + 40 + 8 * s.ext_headers.len()
    } else {
        l3 + 20 + 4 * s.ipv4_option_words as usize
    };
    (l3, l4)
}

/// The length fields a receiver must not trust.
#[derive(Debug, Clone, Copy)]
enum LengthField {
    /// IPv4 total length or IPv6 payload length.
    Ip,
    Udp,
}

/// One change to a well-formed frame.
#[derive(Debug, Clone)]
enum Mutation {
    /// Any byte of the headers (Ethernet to the end of the FaaS header).
    HeaderByte { at: usize, value: u8 },
    /// A length field set to an arbitrary value.
    Length { field: LengthField, value: u16 },
    /// A length field moved by a little, either way.
    LengthBy { field: LengthField, delta: i8 },
    /// Bytes appended after the IP packet (Ethernet padding).
    Pad(Vec<u8>),
    /// The frame cut short.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = prop::sample::select(vec![LengthField::Ip, LengthField::Udp]);
    prop_oneof![
        (0usize..200, any::<u8>()).prop_map(|(at, value)| Mutation::HeaderByte { at, value }),
        (field.clone(), any::<u16>()).prop_map(|(field, value)| Mutation::Length { field, value }),
        (field, -12i8..=12).prop_map(|(field, delta)| Mutation::LengthBy { field, delta }),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Pad),
        (14usize..200).prop_map(Mutation::Truncate),
    ]
}

/// Applies mutations to a well-formed frame built from `s`.
fn mutate(s: &Spec, mutations: &[Mutation]) -> Vec<u8> {
    let mut clean = s.clone();
    (clean.truncate, clean.corrupt) = (None, None);
    let mut frame = build(&clean);
    let (l3, l4) = offsets(&clean);
    let headers_end = l4 + 8 + FaasHdr::LEN;
    let field_at = |field: LengthField| match field {
        LengthField::Ip if clean.v6 => l3 + 4,
        LengthField::Ip => l3 + 2,
        LengthField::Udp => l4 + 4,
    };
    for m in mutations {
        match m {
            Mutation::HeaderByte { at, value } => {
                let at = at % headers_end.min(frame.len());
                frame[at] = *value;
            }
            Mutation::Length { field, value } => {
                let at = field_at(*field);
                if at + 2 <= frame.len() {
                    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
                }
            }
            Mutation::LengthBy { field, delta } => {
                let at = field_at(*field);
                if at + 2 <= frame.len() {
                    let v = u16::from_be_bytes([frame[at], frame[at + 1]])
                        .wrapping_add_signed(*delta as i16);
                    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            Mutation::Pad(bytes) => frame.extend_from_slice(bytes),
            Mutation::Truncate(len) => frame.truncate((*len).max(14)),
        }
    }
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    /// Well-formed requests with their headers and length fields mutated,
    /// padding added, cuts made; and byte strings of no shape at all.
    #[test]
    fn kernel_and_model_agree_on_mutated_frames_and_noise(
        mutated in prop::collection::vec((spec(), prop::collection::vec(mutation(), 1..4)), 1..6),
        noise in prop::collection::vec(prop::collection::vec(any::<u8>(), 14..160), 1..3),
    ) {
        thread_local!(static DP: Loaded = data_plane());
        DP.with(|dp| {
            let frames = mutated.iter().map(|(s, m)| mutate(s, m)).chain(noise.iter().cloned());
            for frame in frames {
                compare(dp, false, &frame);
                compare(dp, true, &frame);
            }
        });
    }
}

/// The mutations reach the length checks and still dispatch padded and
/// short-UDP frames: a mutation generator that never got past the parser,
/// or never got a frame dispatched, would prove little.
#[test]
fn mutations_reach_the_length_checks_and_dispatches() {
    let dp = data_plane();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (spec(), prop::collection::vec(mutation(), 1..4));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        let (s, m) = strategy.new_tree(&mut runner).unwrap().current();
        let mut frame = mutate(&s, &m);
        seen.insert(model::process(&mut frame, &dp.maps, 0).counter);
    }
    for c in [
        Counter::PassBadLength,
        Counter::PassMalformed,
        Counter::PassShort,
        Counter::DispatchedRequest,
        Counter::PassBadMagic,
    ] {
        assert!(
            seen.contains(&c),
            "the mutations never produced {}: {seen:?}",
            c.name()
        );
    }
}

/// The generator reaches every outcome: a differential test that never
/// dispatches (or never fails) would prove little. (pass_short, a UDP
/// length below the FaaS header, comes from the mutations above: a
/// truncated frame's lengths lie, and it is counted as pass_bad_length.)
#[test]
fn generated_packets_cover_every_counter_that_matters() {
    let dp = data_plane();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = spec();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        let s = strategy.new_tree(&mut runner).unwrap().current();
        let mut frame = build(&s);
        seen.insert(model::process(&mut frame, &dp.maps, 0).counter);
    }
    for c in [
        Counter::DispatchedRequest,
        Counter::DispatchedWorkflow,
        Counter::DispatchedStep,
        Counter::Resteered,
        Counter::PassNotService,
        Counter::PassFragment,
        Counter::PassIpv6ExtHeader,
        Counter::PassMalformed,
        Counter::PassBadLength,
        Counter::PassBadMagic,
        Counter::PassBadVersion,
        Counter::PassNotRequest,
        Counter::PassUnknownFunction,
        Counter::PassNoWorker,
        Counter::PassFamilyMismatch,
        Counter::PassBadStep,
        Counter::DropNotRegistered,
    ] {
        assert!(
            seen.contains(&c),
            "the generator never produced {}: {seen:?}",
            c.name()
        );
    }
}
