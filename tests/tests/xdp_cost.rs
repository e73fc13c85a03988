//! What one dispatch costs in operations that do not depend on the
//! machine, per path: instructions, calls (helpers and bpf-to-bpf), hash
//! and array lookups, atomics, counted by running the shipped program in
//! `tests::bpf_trace`'s interpreter against a loaded data plane's maps.
//! The ceilings below are today's counts plus a little room for compiler
//! drift: a change that adds a lookup, an atomic or a call to a path, or
//! tens of instructions, fails here and has to say why in this table.
//! Needs root (the maps are real): run through `cargo xtask test`.

use std::net::SocketAddr;

use dispatcher::data_plane::{Loaded, HW_PROGRAM, PROGRAM};
use dispatcher_common::protocol::{kind, FaasHdr};
use tests::{
    bpf_trace::{Cost, Tracer},
    packets::{faas_payload, udp_frame, CLIENT_MAC, IFACE_MAC},
    xdp::{XDP_PASS, XDP_TX},
};

const CONFIG: &str = r#"
    [service]
    addresses = ["10.0.0.1", "fd00::1"]

    [[functions]]
    id = 1
    policy = "round-robin"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
    ]

    [[functions]]
    id = 2
    policy = "least-loaded"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
    ]

    [[functions]]
    id = 3
    policy = "p2c"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
    ]

    [[functions]]
    id = 4
    policy = "hash"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
    ]

    [[functions]]
    id = 11
    policy = "round-robin"
    workers = [
      { addr = "[fd00::10]:9000", mac = "02:00:00:00:00:10" },
      { addr = "[fd00::11]:9000", mac = "02:00:00:00:00:11" },
    ]

    [[workflows]]
    id = 100
    steps = [1, 4]
"#;

/// One path's ceilings: (instructions, calls, hash lookups, array lookups,
/// atomics). Measured on 2026-12-02 (issue 16's second pass), plus about
/// 4% instructions of room.
struct Ceiling {
    path: &'static str,
    instructions: u64,
    calls: u64,
    hash_lookups: u64,
    array_lookups: u64,
    atomics: u64,
}

fn frame(from: &str, to: &str, hdr: &FaasHdr) -> Vec<u8> {
    let from: SocketAddr = from.parse().unwrap();
    let to: SocketAddr = to.parse().unwrap();
    udp_frame(
        CLIENT_MAC,
        IFACE_MAC,
        &[],
        from,
        to,
        &faas_payload(hdr, &[0u8; 64]),
    )
}

fn request(function_id: u32, key: u64) -> FaasHdr {
    let mut hdr = FaasHdr::new(kind::REQUEST, function_id, 1);
    hdr.key = key.to_be_bytes();
    hdr
}

fn cost(dp: &Loaded, program: &str, frame: &[u8]) -> Cost {
    Tracer::new(dp, program)
        .and_then(|t| t.run(frame))
        .unwrap_or_else(|e| panic!("tracing {program}: {e:#}"))
}

fn check(c: &Cost, ceiling: &Ceiling, verdict: u32) {
    let path = ceiling.path;
    println!("{path}: {}", c.summary());
    // XDP_COST_SOURCES=1 (with --nocapture): where each path's instructions
    // come from, by source file.
    if std::env::var_os("XDP_COST_SOURCES").is_some() {
        println!("  {:?}", c.by_source);
    }
    assert_eq!(c.verdict, verdict, "{path}: verdict");
    let over: Vec<String> = [
        ("instructions", c.instructions, ceiling.instructions),
        ("calls", c.calls() + c.bpf_calls, ceiling.calls),
        ("hash lookups", c.hash_lookups, ceiling.hash_lookups),
        ("array lookups", c.array_lookups, ceiling.array_lookups),
        ("atomics", c.atomics, ceiling.atomics),
    ]
    .iter()
    .filter(|(_, n, most)| n > most)
    .map(|(what, n, most)| format!("{what} {n} > {most}"))
    .collect();
    assert!(
        over.is_empty(),
        "{path} costs more than its ceiling: {}",
        over.join(", ")
    );
}

#[test]
fn each_path_stays_within_its_counts() {
    let dp = tests::xdp::data_plane(CONFIG);
    let client = "10.0.0.2:40000";
    let vip = "10.0.0.1:7770";
    let ceilings = [
        (
            request(1, 0),
            client,
            vip,
            Ceiling {
                path: "IPv4 round-robin",
                instructions: 440,
                calls: 0,
                hash_lookups: 0,
                array_lookups: 10,
                atomics: 0,
            },
        ),
        (
            request(2, 0),
            client,
            vip,
            Ceiling {
                path: "IPv4 least-loaded",
                instructions: 460,
                calls: 0,
                hash_lookups: 0,
                array_lookups: 11,
                atomics: 1,
            },
        ),
        (
            request(3, 0),
            client,
            vip,
            Ceiling {
                path: "IPv4 p2c",
                // Its samples come from this CPU's turn (an array lookup),
                // not bpf_get_prandom_u32 (a call).
                instructions: 530,
                calls: 0,
                hash_lookups: 0,
                array_lookups: 14,
                atomics: 1,
            },
        ),
        (
            request(4, 42),
            client,
            vip,
            Ceiling {
                path: "IPv4 hash (key)",
                instructions: 460,
                calls: 0,
                hash_lookups: 0,
                array_lookups: 9,
                atomics: 0,
            },
        ),
        (
            request(4, 0),
            client,
            vip,
            Ceiling {
                path: "IPv4 hash (client address)",
                instructions: 480,
                calls: 0,
                hash_lookups: 0,
                array_lookups: 9,
                atomics: 0,
            },
        ),
        (
            request(11, 0),
            "[fd00::2]:40000",
            "[fd00::1]:7770",
            Ceiling {
                path: "IPv6 round-robin",
                instructions: 470,
                calls: 0,
                hash_lookups: 0,
                array_lookups: 10,
                atomics: 0,
            },
        ),
        (
            request(100, 0),
            client,
            vip,
            Ceiling {
                path: "IPv4 workflow start",
                instructions: 810,
                calls: 1,
                hash_lookups: 1,
                array_lookups: 11,
                atomics: 0,
            },
        ),
    ];
    for (hdr, from, to, ceiling) in &ceilings {
        check(&cost(&dp, PROGRAM, &frame(from, to, hdr)), ceiling, XDP_TX);
    }

    // A STEP from a registered worker: its sender is checked (a hash lookup).
    let mut step = FaasHdr::new(kind::STEP, 1, 7);
    step.workflow_id = 100u32.to_be_bytes();
    step.step = 1;
    check(
        &cost(&dp, PROGRAM, &frame("10.0.0.10:9000", vip, &step)),
        &Ceiling {
            path: "IPv4 workflow step",
            instructions: 700,
            calls: 3,
            hash_lookups: 2,
            array_lookups: 9,
            atomics: 0,
        },
        XDP_TX,
    );

    // What is not for us costs little: passed before any lookup but SETTINGS'.
    let mut not_faas = frame(client, "10.0.0.99:53", &request(1, 0));
    not_faas[0] ^= 0x80; // another host's MAC
    check(
        &cost(&dp, PROGRAM, &not_faas),
        &Ceiling {
            path: "IPv4 frame for another host",
            instructions: 112,
            calls: 0,
            hash_lookups: 0,
            array_lookups: 2,
            atomics: 0,
        },
        XDP_PASS,
    );
}

/// The offload variant's request path, for the NFP's instruction budget
/// per packet (counters are XADDs there: atomics by design).
#[test]
fn the_offload_variant_stays_within_its_counts() {
    let dp = tests::xdp::data_plane(CONFIG);
    let f = frame("10.0.0.2:40000", "10.0.0.1:7770", &request(1, 0));
    check(
        &cost(&dp, HW_PROGRAM, &f),
        &Ceiling {
            path: "IPv4 round-robin, offload variant",
            instructions: 515,
            calls: 2,
            hash_lookups: 1,
            array_lookups: 8,
            atomics: 5,
        },
        XDP_TX,
    );
}

/// The interpreter counts what it runs: a request for an unknown function
/// stops at the function lookup (no selection, no rewrite), so it must
/// count fewer instructions and no array lookup past the service check.
#[test]
fn the_interpreter_follows_the_path() {
    let dp = tests::xdp::data_plane(CONFIG);
    let known = cost(
        &dp,
        PROGRAM,
        &frame("10.0.0.2:40000", "10.0.0.1:7770", &request(1, 0)),
    );
    let unknown = cost(
        &dp,
        PROGRAM,
        &frame("10.0.0.2:40000", "10.0.0.1:7770", &request(999, 0)),
    );
    assert_eq!(known.verdict, XDP_TX);
    assert_eq!(unknown.verdict, XDP_PASS);
    assert!(
        unknown.instructions < known.instructions,
        "{unknown:?} vs {known:?}"
    );
    // The function's direct slot is empty and counts no hashed id, so
    // FUNCTIONS is not asked; WORKFLOWS is.
    assert_eq!(unknown.hash_lookups, 1, "{unknown:?}");
    assert!(unknown.array_lookups < known.array_lookups, "{unknown:?}");
}

/// `dispatcher trace` on: a packet not drawn pays a countdown (an inlined
/// array lookup, no call); a drawn one its record (the clock, reserve and
/// submit, the control entry, the function's policy). Off, the dispatch
/// path is the one above.
#[test]
fn tracing_costs_a_countdown_and_a_drawn_packet_its_record() {
    let mut dp = tests::xdp::data_plane(CONFIG);
    let f = frame("10.0.0.2:40000", "10.0.0.1:7770", &request(1, 0));
    let off = cost(&dp, PROGRAM, &f);
    // Five packets to go before the next traced one.
    tests::xdp::set_trace(&mut dp, 7, Some(5));
    let not_drawn = cost(&dp, PROGRAM, &f);
    check(
        &not_drawn,
        &Ceiling {
            path: "IPv4 round-robin, tracing on, not drawn",
            instructions: off.instructions + 25,
            calls: 0,
            hash_lookups: 0,
            array_lookups: off.array_lookups + 1,
            atomics: 0,
        },
        XDP_TX,
    );
    tests::xdp::set_trace(&mut dp, 7, Some(1));
    let drawn = cost(&dp, PROGRAM, &f);
    check(
        &drawn,
        &Ceiling {
            path: "IPv4 round-robin, traced",
            instructions: off.instructions + 275,
            calls: 3,
            hash_lookups: 0,
            array_lookups: off.array_lookups + 5,
            atomics: 0,
        },
        XDP_TX,
    );
    for helper in ["ktime_get_ns", "ringbuf_reserve", "ringbuf_submit"] {
        assert_eq!(drawn.helpers.get(helper), Some(&1), "{helper}: {drawn:?}");
    }
}
