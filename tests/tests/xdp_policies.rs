//! Policies, workflows and re-steering in the kernel (BPF_PROG_TEST_RUN):
//! which worker each request goes to, and what the FaaS header says when it
//! leaves. Needs root: run through `cargo xtask test`.

use std::{collections::HashMap, net::SocketAddr};

use dispatcher::{
    config::Config,
    control,
    control::tables::{self, Member},
    data_plane::{Loaded, HW_PROGRAM, PROGRAM},
};
use dispatcher_common::{
    hash,
    maps::Geometry,
    protocol::{flags, kind, FaasHdr},
    stats::Counter,
};
use tests::{
    packets::{
        assert_checksums_verify, destination_and_header, faas_payload, udp_frame, CLIENT_MAC,
        IFACE_MAC,
    },
    xdp::{assert_counted, run, XDP_DROP, XDP_PASS, XDP_TX},
};

const CONFIG: &str = r#"
    [service]
    addresses = ["10.0.0.1"]

    [[functions]]
    id = 10
    policy = "round-robin"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
      { addr = "10.0.0.12:9000", mac = "02:00:00:00:00:12", weight = 2 },
    ]

    [[functions]]
    id = 11
    policy = "hash"
    workers = [
      { addr = "10.0.1.1:9000", mac = "02:00:00:00:01:01" },
      { addr = "10.0.1.2:9000", mac = "02:00:00:00:01:02" },
      { addr = "10.0.1.3:9000", mac = "02:00:00:00:01:03" },
      { addr = "10.0.1.4:9000", mac = "02:00:00:00:01:04" },
      { addr = "10.0.1.5:9000", mac = "02:00:00:00:01:05" },
    ]

    [[functions]]
    id = 12
    policy = "least-loaded"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
      { addr = "10.0.0.12:9000", mac = "02:00:00:00:00:12" },
    ]

    [[functions]]
    id = 13
    policy = "p2c"
    workers = [
      { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" },
      { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
      { addr = "10.0.0.12:9000", mac = "02:00:00:00:00:12" },
    ]

    [[functions]]
    id = 1
    workers = [{ addr = "10.0.0.21:9000", mac = "02:00:00:00:00:21" }]

    [[functions]]
    id = 2
    workers = [{ addr = "10.0.0.22:9000", mac = "02:00:00:00:00:22" }]

    [[functions]]
    id = 20
    workers = [
      { addr = "10.0.0.31:9000", mac = "02:00:00:00:00:31" },
      { addr = "10.0.0.32:9000", mac = "02:00:00:00:00:32" },
    ]

    [[functions]]
    id = 21
    workers = [{ addr = "10.0.0.33:9000", mac = "02:00:00:00:00:33" }]

    [[workflows]]
    id = 100
    steps = [1, 2]

    [[workflows]]
    id = 101
    steps = [2]
"#;

const VIP: &str = "10.0.0.1:7770";
const CLIENT: &str = "10.0.0.2:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn data_plane() -> Loaded {
    tests::xdp::data_plane(CONFIG)
}

/// A frame from `from` to the VIP carrying `hdr` and a small payload.
fn frame(from: &str, hdr: &FaasHdr) -> Vec<u8> {
    udp_frame(
        CLIENT_MAC,
        IFACE_MAC,
        &[],
        addr(from),
        addr(VIP),
        &faas_payload(hdr, b"input"),
    )
}

/// Sends a frame through `dispatch`; returns where it went and its header.
fn dispatch(dp: &Loaded, frame: &[u8]) -> (SocketAddr, FaasHdr) {
    let (verdict, out) = run(dp.named(PROGRAM), frame);
    assert_eq!(verdict, XDP_TX, "not dispatched");
    assert_checksums_verify(&out, false);
    destination_and_header(&out)
}

fn count_by_worker(results: impl Iterator<Item = SocketAddr>) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for r in results {
        *counts.entry(r).or_default() += 1;
    }
    counts
}

#[test]
fn round_robin_takes_turns_by_weight() {
    let dp = data_plane();
    // 256 requests walk the ring once: exact shares 1:1:2.
    let counts = count_by_worker(
        (0..256u64).map(|i| dispatch(&dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 10, i))).0),
    );
    assert_eq!(counts[&addr("10.0.0.10:9000")], 64);
    assert_eq!(counts[&addr("10.0.0.11:9000")], 64);
    assert_eq!(counts[&addr("10.0.0.12:9000")], 128);
    // Consecutive turns go to different workers (smooth weighting).
    let order: Vec<_> = (0..8u64)
        .map(|i| dispatch(&dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 10, i))).0)
        .collect();
    assert!(
        order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{order:?}"
    );
}

#[test]
fn round_robin_in_the_offload_variant_takes_the_same_turns() {
    let dp = data_plane();
    let counts = count_by_worker((0..256u64).map(|i| {
        let (verdict, out) = run(
            dp.named(HW_PROGRAM),
            &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 10, i)),
        );
        assert_eq!(verdict, XDP_TX);
        destination_and_header(&out).0
    }));
    assert_eq!(counts[&addr("10.0.0.12:9000")], 128);
    assert_eq!(counts[&addr("10.0.0.10:9000")], 64);
}

#[test]
fn hash_policy_follows_the_maglev_table_user_space_computed() {
    let dp = data_plane();
    // The table below was written through the mapping of MAGLEV's values
    // (not by batched updates), and the data plane reads what was copied.
    assert!(dp.maps.tables_mapped(), "the host's MAGLEV is mmap-able");
    let workers: Vec<String> = (1..=5).map(|i| format!("10.0.1.{i}:9000")).collect();
    let members: Vec<Member> = workers
        .iter()
        .enumerate()
        .map(|(slot, name)| Member {
            slot: slot as u8,
            weight: 1,
            key: Member::key_of(name.parse().unwrap()),
        })
        .collect();
    // Five workers: a 4,096-slot rendezvous table (at least 256 per worker).
    let size = Geometry::HOST.maglev_size_for(5);
    assert_eq!(dp.maps.functions.get(&11, 0).unwrap().maglev_size(), 4096);
    let table = tables::hash_table(&members, size);
    let mut seen = HashMap::new();
    for key in 1..=500u64 {
        let mut hdr = FaasHdr::new(kind::REQUEST, 11, key);
        hdr.key = (key * 7919).to_be_bytes();
        let (to, _) = dispatch(&dp, &frame(CLIENT, &hdr));
        let slot = table[(hash::key_hash(key * 7919) & (size - 1)) as usize];
        assert_eq!(to, addr(&workers[slot as usize]), "key {key}");
        // The same key always lands on the same worker.
        assert_eq!(dispatch(&dp, &frame("10.0.0.99:1234", &hdr)).0, to);
        *seen.entry(to).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 5, "every worker gets keys: {seen:?}");
    // Key 0: the client's address and port decide.
    let hdr = FaasHdr::new(kind::REQUEST, 11, 1);
    let first = dispatch(&dp, &frame(CLIENT, &hdr)).0;
    for _ in 0..10 {
        assert_eq!(dispatch(&dp, &frame(CLIENT, &hdr)).0, first);
    }
    let spread = count_by_worker(
        (0..200u16).map(|p| dispatch(&dp, &frame(&format!("10.0.0.2:{}", 20000 + p), &hdr)).0),
    );
    assert_eq!(
        spread.len(),
        5,
        "client ports spread over workers: {spread:?}"
    );
}

#[test]
fn least_loaded_sends_to_the_least_loaded_and_counts_what_it_sent() {
    let mut dp = data_plane();
    // Reported loads: A 5, B 0, C 2.
    for (slot, load) in [(0u8, 5u64), (1, 0), (2, 2)] {
        control::set_load(&mut dp.maps, 12, slot, load).unwrap();
    }
    let go =
        |dp: &Loaded, i: u64| dispatch(dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 12, i))).0;
    // B until it catches up with C (its load grows by one per request) ...
    assert_eq!(go(&dp, 1), addr("10.0.0.11:9000"));
    assert_eq!(go(&dp, 2), addr("10.0.0.11:9000"));
    // ... B=2, C=2: the tie goes to the better-ranked, B; then C.
    assert_eq!(go(&dp, 3), addr("10.0.0.11:9000"));
    assert_eq!(go(&dp, 4), addr("10.0.0.12:9000"));
    // Over many, A (loaded 5) gets fewest.
    let counts = count_by_worker((0..30).map(|i| go(&dp, i)));
    assert!(
        counts.get(&addr("10.0.0.10:9000")).copied().unwrap_or(0) < counts[&addr("10.0.0.11:9000")],
        "{counts:?}"
    );
}

/// Least-loaded ranks load relative to weight: a worker of weight 2 may
/// carry twice the requests of one of weight 1.
#[test]
fn least_loaded_weighs_load_by_weight() {
    let mut dp = tests::xdp::data_plane(
        r#"
        [service]
        addresses = ["10.0.0.1"]

        [[functions]]
        id = 30
        policy = "least-loaded"
        workers = [
          { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10", weight = 2 },
          { addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" },
        ]
    "#,
    );
    // A (weight 2) carries 3, B (weight 1) carries 2: relative to weight,
    // A is the less loaded (1.5 against 2), raw counts say B.
    control::set_load(&mut dp.maps, 30, 0, 3).unwrap();
    control::set_load(&mut dp.maps, 30, 1, 2).unwrap();
    let go =
        |dp: &Loaded, i: u64| dispatch(dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 30, i))).0;
    assert_eq!(go(&dp, 1), addr("10.0.0.10:9000"), "A: 3/2 < 2/1");
    // A now carries 4 (4/2 = 2/1): a tie, which goes to the better ranked;
    // after that A at 5/2 > 2: B.
    go(&dp, 2);
    assert_eq!(go(&dp, 3), addr("10.0.0.11:9000"), "A: 5/2 > B: 2/1");
    // Over many requests from equal loads, A takes about two in three.
    control::set_load(&mut dp.maps, 30, 0, 0).unwrap();
    control::set_load(&mut dp.maps, 30, 1, 0).unwrap();
    let counts = count_by_worker((0..90).map(|i| go(&dp, i)));
    let a = counts[&addr("10.0.0.10:9000")];
    assert!(
        (58..=62).contains(&a),
        "weight 2 of 3 takes 60 of 90: {counts:?}"
    );
    // The offload variant ranks the same way (it does not count its own
    // dispatches: the loads move with reports only).
    control::set_load(&mut dp.maps, 30, 0, 3).unwrap();
    control::set_load(&mut dp.maps, 30, 1, 2).unwrap();
    let (verdict, out) = run(
        dp.named(HW_PROGRAM),
        &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 30, 1)),
    );
    assert_eq!(verdict, XDP_TX);
    assert_eq!(destination_and_header(&out).0, addr("10.0.0.10:9000"));
}

#[test]
fn p2c_avoids_the_loaded_worker() {
    let mut dp = data_plane();
    control::set_load(&mut dp.maps, 13, 0, 1_000_000).unwrap();
    let counts = count_by_worker(
        (0..900u64).map(|i| dispatch(&dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 13, i))).0),
    );
    // A wins only when both samples hit it: about 1/9 of the time.
    let a = counts.get(&addr("10.0.0.10:9000")).copied().unwrap_or(0);
    assert!(a < 180, "the loaded worker got {a} of 900: {counts:?}");
    assert!(
        counts[&addr("10.0.0.11:9000")] > 250 && counts[&addr("10.0.0.12:9000")] > 250,
        "{counts:?}"
    );
}

#[test]
fn a_workflow_request_starts_step_zero_with_reply_fields_filled() {
    let dp = data_plane();
    let mut hdr = FaasHdr::new(kind::REQUEST, 100, 77);
    hdr.key = 5u64.to_be_bytes();
    let before = dp.maps.counters().unwrap();
    let (to, out) = dispatch(&dp, &frame(CLIENT, &hdr));
    assert_counted(
        &before,
        &dp.maps.counters().unwrap(),
        Counter::DispatchedWorkflow,
        "workflow request",
    );
    assert_eq!(to, addr("10.0.0.21:9000"), "step 0 runs function 1");
    assert_eq!(out.kind, kind::REQUEST);
    assert_eq!(out.function_id(), 1);
    assert_eq!(out.workflow_id(), 100);
    assert_eq!(out.step, 0);
    assert_eq!(out.flags, flags::REPLY_SET, "not the last step");
    assert_eq!(out.reply_port(), 40000);
    assert_eq!(
        out.reply_addr,
        std::net::Ipv4Addr::new(10, 0, 0, 2)
            .to_ipv6_mapped()
            .octets()
    );
    assert_eq!(out.request_id(), 77);
    assert_eq!(out.key(), 5);

    // A one-step workflow is also its last step.
    let (to, out) = dispatch(&dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 101, 1)));
    assert_eq!(to, addr("10.0.0.22:9000"));
    assert_eq!(out.flags, flags::REPLY_SET | flags::LAST_STEP);
}

/// What the step-0 worker sends back to the service address.
fn step_from_worker(step: u8) -> FaasHdr {
    let mut hdr = FaasHdr::new(kind::STEP, 1, 77);
    hdr.workflow_id = 100u32.to_be_bytes();
    hdr.step = step;
    hdr.flags = flags::REPLY_SET;
    hdr.reply_port = 40000u16.to_be_bytes();
    hdr.reply_addr = std::net::Ipv4Addr::new(10, 0, 0, 2)
        .to_ipv6_mapped()
        .octets();
    hdr
}

#[test]
fn a_step_from_a_registered_worker_goes_to_the_next_function() {
    let dp = data_plane();
    let before = dp.maps.counters().unwrap();
    let (to, out) = dispatch(&dp, &frame("10.0.0.21:9000", &step_from_worker(1)));
    assert_counted(
        &before,
        &dp.maps.counters().unwrap(),
        Counter::DispatchedStep,
        "step",
    );
    assert_eq!(to, addr("10.0.0.22:9000"), "step 1 runs function 2");
    assert_eq!(out.kind, kind::STEP);
    assert_eq!(out.function_id(), 2);
    assert_eq!(
        out.flags,
        flags::REPLY_SET | flags::LAST_STEP,
        "step 1 is the last"
    );
    assert_eq!(out.reply_port(), 40000);
}

#[test]
fn steps_from_strangers_are_dropped_and_bad_steps_passed() {
    let dp = data_plane();
    for (case, from, hdr, verdict, counter) in [
        (
            "STEP from a stranger",
            CLIENT,
            step_from_worker(1),
            XDP_DROP,
            Counter::DropNotRegistered,
        ),
        (
            "STEP past the last step",
            "10.0.0.21:9000",
            step_from_worker(2),
            XDP_PASS,
            Counter::PassBadStep,
        ),
        (
            "STEP from the right address, wrong port",
            "10.0.0.21:9001",
            step_from_worker(1),
            XDP_DROP,
            Counter::DropNotRegistered,
        ),
    ] {
        let input = frame(from, &hdr);
        let before = dp.maps.counters().unwrap();
        let (got, out) = run(dp.named(PROGRAM), &input);
        assert_eq!(got, verdict, "{case}");
        if verdict == XDP_PASS {
            assert_eq!(out, input, "{case}: untouched");
        }
        assert_counted(&before, &dp.maps.counters().unwrap(), counter, case);
    }
}

fn busy_from(worker: &str, function_id: u32, resteers: u8) -> Vec<u8> {
    let mut hdr = FaasHdr::new(kind::BUSY, function_id, 9);
    hdr.flags = flags::REPLY_SET | (resteers << flags::RESTEER_SHIFT);
    hdr.reply_port = 40000u16.to_be_bytes();
    hdr.reply_addr = std::net::Ipv4Addr::new(10, 0, 0, 2)
        .to_ipv6_mapped()
        .octets();
    frame(worker, &hdr)
}

#[test]
fn busy_is_resteered_to_another_worker_and_counted() {
    let dp = data_plane();
    for i in 0..20 {
        let before = dp.maps.counters().unwrap();
        let (to, out) = dispatch(&dp, &busy_from("10.0.0.31:9000", 20, 0));
        assert_counted(
            &before,
            &dp.maps.counters().unwrap(),
            Counter::Resteered,
            "busy",
        );
        assert_eq!(
            to,
            addr("10.0.0.32:9000"),
            "round {i}: never back to the busy worker"
        );
        assert_eq!(out.kind, kind::REQUEST);
        assert_eq!((out.flags & flags::RESTEER_MASK) >> flags::RESTEER_SHIFT, 1);
        assert_eq!(out.flags & flags::REPLY_SET, flags::REPLY_SET);
    }
    let (_, out) = dispatch(&dp, &busy_from("10.0.0.32:9000", 20, 2));
    assert_eq!((out.flags & flags::RESTEER_MASK) >> flags::RESTEER_SHIFT, 3);

    for (case, input, counter) in [
        (
            "after three re-steers",
            busy_from("10.0.0.31:9000", 20, 3),
            Counter::PassBusyExhausted,
        ),
        (
            "no other worker",
            busy_from("10.0.0.33:9000", 21, 0),
            Counter::PassBusyExhausted,
        ),
    ] {
        let before = dp.maps.counters().unwrap();
        let (verdict, out) = run(dp.named(PROGRAM), &input);
        assert_eq!(verdict, XDP_PASS, "{case}");
        assert_eq!(
            out, input,
            "{case}: untouched, for the host to answer ERROR 7"
        );
        assert_counted(&before, &dp.maps.counters().unwrap(), counter, case);
    }
}

/// Weights of 20:1 fill most ring positions with the heavy worker: when it
/// says BUSY, the next ring positions are often all its own, and the
/// re-steer falls back to the least-loaded candidates: another worker,
/// every time, in both variants.
#[test]
fn busy_finds_the_other_worker_whatever_the_weights() {
    let dp = tests::xdp::data_plane(
        r#"
        [service]
        addresses = ["10.0.0.1"]
        [[functions]]
        id = 30
        workers = [
          { addr = "10.0.0.41:9000", mac = "02:00:00:00:00:41", weight = 20 },
          { addr = "10.0.0.42:9000", mac = "02:00:00:00:00:42" },
        ]
        "#,
    );
    for program in [PROGRAM, HW_PROGRAM] {
        for i in 0..50 {
            let before = dp.maps.counters().unwrap();
            let (verdict, out) = run(dp.named(program), &busy_from("10.0.0.41:9000", 30, 0));
            assert_eq!(verdict, XDP_TX, "{program} round {i}: not re-steered");
            assert_counted(
                &before,
                &dp.maps.counters().unwrap(),
                Counter::Resteered,
                "busy",
            );
            assert_eq!(
                destination_and_header(&out).0,
                addr("10.0.0.42:9000"),
                "{program} round {i}"
            );
        }
    }
}

#[test]
fn traffic_is_counted_per_function_and_worker() {
    let dp = data_plane();
    let input = frame(CLIENT, &FaasHdr::new(kind::REQUEST, 1, 1));
    for _ in 0..3 {
        dispatch(&dp, &input);
    }
    let f = dp.maps.functions.get(&1, 0).unwrap();
    let by_function = dp.maps.function_traffic(f.index).unwrap();
    assert_eq!(
        (by_function.packets, by_function.bytes),
        (3, 3 * input.len() as u64)
    );
    let by_worker = dp.maps.worker_traffic(f.worker_index(0)).unwrap();
    assert_eq!(by_worker.packets, 3);
}

#[test]
fn a_new_worker_set_takes_effect_in_one_step() {
    let mut dp = data_plane();
    let config = Config::parse(CONFIG).unwrap();
    let rr = &config.functions[0];
    // Replace the three workers of function 10 with two new ones.
    let new: Vec<_> = ["10.0.9.1:9000", "10.0.9.2:9000"]
        .iter()
        .map(|a| {
            dispatcher::config::WorkerConfig {
                addr: addr(a),
                mac: rr.workers[0].mac,
                weight: 1,
            }
            .to_map(10)
            .unwrap()
        })
        .collect();
    control::set_function(
        &mut dp.maps,
        10,
        dispatcher_common::maps::policy::ROUND_ROBIN,
        &new,
    )
    .unwrap();
    let counts = count_by_worker(
        (0..10u64).map(|i| dispatch(&dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 10, i))).0),
    );
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts[&addr("10.0.9.1:9000")], 5);
    // Workers that left every function are no longer registered: they may
    // not send STEP or BUSY any more. (10.0.0.10 still serves 12 and 13.)
    control::set_function(
        &mut dp.maps,
        20,
        dispatcher_common::maps::policy::ROUND_ROBIN,
        &new,
    )
    .unwrap();
    let (verdict, _) = run(dp.named(PROGRAM), &busy_from("10.0.0.31:9000", 20, 0));
    assert_eq!(verdict, XDP_DROP);
    let (to, _) = dispatch(&dp, &busy_from("10.0.0.10:9000", 10, 0));
    assert!(
        to == addr("10.0.9.1:9000") || to == addr("10.0.9.2:9000"),
        "{to}"
    );
}

/// A NIC's geometry (netdevsim's two entries per map: one function of two
/// workers, 32-slot tables, two SERVICES slots), on the host: both variants
/// dispatch by every policy within it, and the control plane refuses what
/// does not fit with the limit named.
#[test]
fn a_two_entry_geometry_dispatches_and_refuses_what_does_not_fit() {
    let geometry = Geometry::fitting(2).unwrap();
    let config = |policy: &str| {
        format!(
            r#"
            [service]
            addresses = ["10.0.0.1"]
            [[functions]]
            id = 7
            policy = "{policy}"
            workers = [
              {{ addr = "10.0.0.10:9000", mac = "02:00:00:00:00:10" }},
              {{ addr = "10.0.0.11:9000", mac = "02:00:00:00:00:11" }},
            ]
            "#
        )
    };
    for policy in ["round-robin", "hash", "least-loaded", "p2c"] {
        let mut dp = tests::xdp::data_plane_with(&config(policy), geometry);
        for program in [PROGRAM, HW_PROGRAM] {
            let counts = count_by_worker((0..64u64).map(|i| {
                let mut hdr = FaasHdr::new(kind::REQUEST, 7, i);
                hdr.key = (i + 1).to_be_bytes();
                let (verdict, out) = run(dp.named(program), &frame(CLIENT, &hdr));
                assert_eq!(verdict, XDP_TX, "{policy} {program}: not dispatched");
                assert_checksums_verify(&out, false);
                destination_and_header(&out).0
            }));
            assert!(
                counts
                    .keys()
                    .all(|a| [addr("10.0.0.10:9000"), addr("10.0.0.11:9000")].contains(a)),
                "{policy} {program}: {counts:?}"
            );
            if policy == "round-robin" || policy == "hash" {
                assert_eq!(
                    counts.len(),
                    2,
                    "{policy} {program}: both workers get requests: {counts:?}"
                );
            }
        }
        // A third worker (10.0.0.12) and a second function do not fit.
        let mut worker = Config::parse(&config(policy)).unwrap().functions[0].workers[0]
            .to_map(7)
            .unwrap();
        worker.addr[3] = 12;
        let err = control::add_worker(&mut dp.maps, 7, worker).unwrap_err();
        assert!(
            format!("{err:#}").contains("the most the data plane holds per function"),
            "{err:#}"
        );
        let err = control::add_function(&mut dp.maps, 8, 0).unwrap_err();
        assert!(
            format!("{err:#}").contains("all 1 function rows"),
            "{err:#}"
        );
    }
    // A config that does not fit is refused before anything is written.
    let mut dp = tests::xdp::data_plane_with(&config("hash"), geometry);
    let err = control::apply(&mut dp.maps, &Config::parse(CONFIG).unwrap()).unwrap_err();
    assert!(
        format!("{err:#}").contains("functions: the config has 8, the data plane's maps hold 1"),
        "{err:#}"
    );
}

/// A STEP (and a re-steered BUSY) comes from a worker and may go back to
/// that very worker: a workflow whose steps share one worker. It must leave
/// from the service address and port, not the worker's own (its kernel
/// would drop a packet from itself as a martian), with checksums right, in
/// both variants, IPv4 and IPv6.
#[test]
fn steps_and_resteers_leave_from_the_service_address() {
    let dp = tests::xdp::data_plane(
        r#"
        [service]
        addresses = ["10.0.0.1", "fd00::1"]
        [[functions]]
        id = 1
        workers = [{ addr = "10.0.0.21:9000", mac = "02:00:00:00:00:21" }]
        [[functions]]
        id = 2
        workers = [{ addr = "10.0.0.21:9000", mac = "02:00:00:00:00:21" }]
        [[functions]]
        id = 3
        workers = [{ addr = "[fd00::21]:9000", mac = "02:00:00:00:00:21" }]
        [[functions]]
        id = 4
        workers = [{ addr = "[fd00::21]:9000", mac = "02:00:00:00:00:21" }]
        [[functions]]
        id = 5
        workers = [
          { addr = "10.0.0.31:9000", mac = "02:00:00:00:00:31" },
          { addr = "10.0.0.32:9000", mac = "02:00:00:00:00:32" },
        ]
        [[workflows]]
        id = 100
        steps = [1, 2]
        [[workflows]]
        id = 101
        steps = [3, 4]
        "#,
    );
    let step = |workflow: u32, reply: std::net::Ipv6Addr| {
        let mut hdr = FaasHdr::new(kind::STEP, 1, 77);
        hdr.workflow_id = workflow.to_be_bytes();
        hdr.step = 1;
        hdr.flags = flags::REPLY_SET;
        hdr.reply_port = 40000u16.to_be_bytes();
        hdr.reply_addr = reply.octets();
        hdr
    };
    let client_v4 = std::net::Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped();
    let mut busy = FaasHdr::new(kind::BUSY, 5, 9);
    busy.flags = flags::REPLY_SET;
    busy.reply_port = 40000u16.to_be_bytes();
    busy.reply_addr = client_v4.octets();
    let cases = [
        (
            "IPv4 STEP back to its own worker",
            "10.0.0.21:9000",
            VIP,
            step(100, client_v4),
            "10.0.0.21:9000",
            Counter::DispatchedStep,
        ),
        (
            "IPv6 STEP back to its own worker",
            "[fd00::21]:9000",
            "[fd00::1]:7770",
            step(101, "fd00::2".parse().unwrap()),
            "[fd00::21]:9000",
            Counter::DispatchedStep,
        ),
        (
            "IPv4 BUSY re-steered",
            "10.0.0.31:9000",
            VIP,
            busy,
            "10.0.0.32:9000",
            Counter::Resteered,
        ),
    ];
    for (case, from, to, hdr, worker, counter) in cases {
        let input = udp_frame(
            CLIENT_MAC,
            IFACE_MAC,
            &[],
            addr(from),
            addr(to),
            &faas_payload(&hdr, b"step input"),
        );
        for program in [PROGRAM, HW_PROGRAM] {
            let before = dp.maps.counters().unwrap();
            let (verdict, out) = run(dp.named(program), &input);
            assert_eq!(verdict, XDP_TX, "{case} ({program})");
            assert_counted(&before, &dp.maps.counters().unwrap(), counter, case);
            assert_checksums_verify(&out, false);
            assert_eq!(
                destination_and_header(&out).0,
                addr(worker),
                "{case} ({program})"
            );
            assert_eq!(
                source_of(&out),
                addr(to),
                "{case} ({program}): leaves from the service address and port"
            );
            assert_eq!(
                destination_and_header(&out).1.reply_port(),
                40000,
                "{case}: the answer still goes to the client"
            );
        }
    }
    // A REQUEST keeps the client's source: the worker answers it directly.
    let request = udp_frame(
        CLIENT_MAC,
        IFACE_MAC,
        &[],
        addr(CLIENT),
        addr(VIP),
        &faas_payload(&FaasHdr::new(kind::REQUEST, 1, 1), b"x"),
    );
    let (_, out) = run(dp.named(PROGRAM), &request);
    assert_eq!(source_of(&out), addr(CLIENT));
}

/// The source address and port of a frame.
fn source_of(frame: &[u8]) -> SocketAddr {
    let headers = etherparse::PacketHeaders::from_ethernet_slice(frame).expect("parsable frame");
    let Some(etherparse::TransportHeader::Udp(udp)) = headers.transport else {
        panic!("not UDP")
    };
    let ip: std::net::IpAddr = match headers.net.expect("IP") {
        etherparse::NetHeaders::Ipv4(h, _) => h.source.into(),
        etherparse::NetHeaders::Ipv6(h, _) => h.source.into(),
        etherparse::NetHeaders::Arp(_) => panic!("not IP"),
    };
    SocketAddr::new(ip, udp.source_port)
}

/// 256 workers per function (an operator's geometry: `dispatcher run
/// --max-workers-per-function 256 --ring-size 1024`):
/// round-robin walks all of them, slot 255 included, and the hash policy
/// spreads keys over them.
#[test]
fn a_function_of_256_workers() {
    let geometry = Geometry {
        functions: 4,
        workers_per_function: 256,
        ring_size: 1024,
        ..Geometry::HOST
    };
    let workers: Vec<String> = (0..256)
        .map(|k| {
            format!(
                "{{ addr = \"10.7.{}.{}:9000\", mac = \"02:00:00:00:00:10\" }}",
                k / 200,
                k % 200 + 1
            )
        })
        .collect();
    let config = format!(
        "[service]\naddresses = [\"10.0.0.1\"]\n\
         [[functions]]\nid = 1\nworkers = [{w}]\n\
         [[functions]]\nid = 2\npolicy = \"hash\"\nworkers = [{w}]\n",
        w = workers.join(", ")
    );
    let dp = tests::xdp::data_plane_with(&config, geometry);
    let f = dp.maps.functions.get(&1, 0).unwrap();
    assert_eq!((f.up_count, f.slot_end), (256, 256));
    // 1,024 requests walk the ring once: four each.
    let counts = count_by_worker(
        (0..1024u64).map(|i| dispatch(&dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 1, i))).0),
    );
    assert_eq!(counts.len(), 256, "every worker took turns");
    assert!(counts.values().all(|n| *n == 4), "{counts:?}");
    assert_eq!(counts[&addr("10.7.1.56:9000")], 4, "slot 255 too");
    // Keys spread over the workers by a 16,384-slot Maglev table.
    assert_eq!(dp.maps.functions.get(&2, 0).unwrap().maglev_size(), 16384);
    let spread = count_by_worker((0..2048u64).map(|key| {
        let mut hdr = FaasHdr::new(kind::REQUEST, 2, key);
        hdr.key = (key + 1).to_be_bytes();
        dispatch(&dp, &frame(CLIENT, &hdr)).0
    }));
    assert!(
        spread.len() > 240,
        "{} workers of 256 got keys",
        spread.len()
    );
}

/// Maglev tables come from a pool: only functions with the hash policy
/// hold one, sized by their workers. With room for two of the smallest
/// tables (256 slots, two generations), a third hash function is refused
/// by name; a function that leaves the hash policy frees its table for
/// another, and both keep dispatching by key.
#[test]
fn maglev_tables_are_a_pool_for_hash_functions() {
    let geometry = Geometry {
        functions: 8,
        // Two 1,024-slot tables (two workers each), two generations each.
        maglev_pool_chunks: 2 * (2 * 1024 / 32),
        ..Geometry::HOST
    };
    let config = r#"
        [service]
        addresses = ["10.0.0.1"]

        [[functions]]
        id = 1
        policy = "hash"
        workers = [
          { addr = "10.0.1.1:9000", mac = "02:00:00:00:01:01" },
          { addr = "10.0.1.2:9000", mac = "02:00:00:00:01:02" },
        ]

        [[functions]]
        id = 2
        policy = "round-robin"
        workers = [
          { addr = "10.0.2.1:9000", mac = "02:00:00:00:02:01" },
          { addr = "10.0.2.2:9000", mac = "02:00:00:00:02:02" },
        ]

        [[functions]]
        id = 3
        policy = "hash"
        workers = [
          { addr = "10.0.3.1:9000", mac = "02:00:00:00:03:01" },
          { addr = "10.0.3.2:9000", mac = "02:00:00:00:03:02" },
        ]
    "#;
    let mut dp = tests::xdp::data_plane_with(config, geometry);
    let hash_policy = dispatcher_common::maps::policy::HASH;
    let rr_policy = dispatcher_common::maps::policy::ROUND_ROBIN;
    let err = control::set_function(&mut dp.maps, 2, hash_policy, &[])
        .expect_err("a third Maglev table is refused");
    assert!(
        format!("{err:#}")
            .contains("the Maglev pool (4096 slots) has no room for its 256-slot table"),
        "{err:#}"
    );
    let before: Vec<SocketAddr> = (1..50).map(|k| by_key(&dp, 3, k)).collect();
    // Function 1 leaves the hash policy; function 2 takes its table.
    let (w1, w2) = (workers_of(&dp, 1), workers_of(&dp, 2));
    control::set_function(&mut dp.maps, 1, rr_policy, &w1).unwrap();
    control::set_function(&mut dp.maps, 2, hash_policy, &w2).unwrap();
    let extent = |id: u32| dp.maps.functions.get(&id, 0).unwrap().maglev_extent();
    assert_ne!(extent(2), extent(3), "two hash functions, two tables");
    // Function 3's keys did not move; function 2 spreads keys by hash.
    let after: Vec<SocketAddr> = (1..50).map(|k| by_key(&dp, 3, k)).collect();
    assert_eq!(before, after);
    let spread = count_by_worker((1..50).map(|k| by_key(&dp, 2, k)));
    assert_eq!(spread.len(), 2, "{spread:?}");
    // Round-robin needs no table.
    let counts = count_by_worker(
        (0..4u64).map(|i| dispatch(&dp, &frame(CLIENT, &FaasHdr::new(kind::REQUEST, 1, i))).0),
    );
    assert_eq!(counts.len(), 2, "{counts:?}");
}

fn by_key(dp: &Loaded, id: u32, key: u64) -> SocketAddr {
    let mut hdr = FaasHdr::new(kind::REQUEST, id, key);
    hdr.key = key.to_be_bytes();
    dispatch(dp, &frame(CLIENT, &hdr)).0
}

fn workers_of(dp: &Loaded, id: u32) -> Vec<dispatcher_common::maps::Worker> {
    let f = dp.maps.functions.get(&id, 0).unwrap();
    control::function_workers(&dp.maps, &f)
        .unwrap()
        .into_iter()
        .map(|(_, w)| w)
        .collect()
}

/// `n` workers of function `id`, 10.0.9.1:9000 on.
fn numbered_workers(id: u32, n: usize) -> Vec<dispatcher_common::maps::Worker> {
    let list: Vec<String> = (1..=n)
        .map(|k| format!("{{ addr = \"10.0.9.{k}:9000\", mac = \"02:00:00:00:09:{k:02x}\" }}"))
        .collect();
    let config = format!(
        "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = {id}\nworkers = [{}]\n",
        list.join(", ")
    );
    Config::parse(&config).unwrap().functions[0]
        .workers
        .iter()
        .map(|w| w.to_map(id).unwrap())
        .collect()
}

/// A function's Maglev table follows its worker count: 2 workers hold a
/// 256-slot table, 9 a 1,024-slot one (a new extent of the pool; the old
/// one goes back), and where the pool has no room for a larger table the
/// function keeps the one it has and still reaches every worker. The data
/// plane reads each table at its own length: every key goes where the
/// table user space computed says.
#[test]
fn a_functions_maglev_table_is_sized_by_its_workers() {
    let geometry = Geometry {
        functions: 4,
        // A 1,024-slot table and a 256-slot one, two generations each.
        maglev_pool_chunks: 2 * 1024 / 32 + 2 * 256 / 32,
        ..Geometry::HOST
    };
    let mut dp = tests::xdp::data_plane_with("[service]\naddresses = [\"10.0.0.1\"]\n", geometry);
    let hash_policy = dispatcher_common::maps::policy::HASH;
    let follows_its_table = |dp: &Loaded, n: usize| {
        let f = dp.maps.functions.get(&1, 0).unwrap();
        let members: Vec<Member> = control::function_workers(&dp.maps, &f)
            .unwrap()
            .into_iter()
            .map(|(slot, w)| Member {
                slot,
                weight: 1,
                key: Member::key_of(dispatcher::endpoints::worker_socket_addr(&w)),
            })
            .collect();
        assert_eq!(members.len(), n);
        let table = tables::hash_table(&members, f.maglev_size());
        let mut seen = HashMap::new();
        for key in 1..=400u64 {
            let slot = table[(hash::key_hash(key) & f.maglev_mask as u32) as usize];
            let to = by_key(dp, 1, key);
            assert_eq!(to, addr(&format!("10.0.9.{}:9000", slot + 1)), "key {key}");
            *seen.entry(to).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), n, "{seen:?}");
        f.maglev_size()
    };
    control::set_function(&mut dp.maps, 1, hash_policy, &numbered_workers(1, 1)).unwrap();
    assert_eq!(follows_its_table(&dp, 1), 256);
    let small = dp.maps.functions.get(&1, 0).unwrap().maglev_extent();
    control::set_function(&mut dp.maps, 1, hash_policy, &numbered_workers(1, 3)).unwrap();
    assert_eq!(follows_its_table(&dp, 3), 1024);
    assert_ne!(dp.maps.functions.get(&1, 0).unwrap().maglev_extent(), small);
    // The small extent went back: another function can hold it.
    control::set_function(&mut dp.maps, 2, hash_policy, &numbered_workers(2, 1)).unwrap();
    assert_eq!(dp.maps.functions.get(&2, 0).unwrap().maglev_extent(), small);
    // 5 workers want 4,096 slots; the pool has none: it keeps 1,024 (a
    // Maglev table then: too short for a rendezvous table's balance).
    control::set_function(&mut dp.maps, 1, hash_policy, &numbered_workers(1, 5)).unwrap();
    assert_eq!(follows_its_table(&dp, 5), 1024);
    // Back to 1 worker: 256 slots would do, but the pool's 256-slot room
    // is function 2's, so it keeps 1,024 again; once 2 leaves, 1 shrinks.
    control::set_function(&mut dp.maps, 1, hash_policy, &numbered_workers(1, 1)).unwrap();
    assert_eq!(follows_its_table(&dp, 1), 1024);
    control::remove_function(&mut dp.maps, 2).unwrap();
    control::set_function(&mut dp.maps, 1, hash_policy, &numbered_workers(1, 1)).unwrap();
    assert_eq!(follows_its_table(&dp, 1), 256);
}

/// A whole config applied at once (`control::apply`, one scan of the pool
/// for all its functions) hands a grown function's old extent back to the
/// pool it allocates from: here the only room for function 3's table.
#[test]
fn a_bulk_apply_reuses_the_extent_a_grown_function_left() {
    let geometry = Geometry {
        functions: 4,
        // One 1,024-slot table and two 256-slot ones, two generations each.
        maglev_pool_chunks: 2 * 1024 / 32 + 2 * (2 * 256 / 32),
        ..Geometry::HOST
    };
    let config = |workers_of_1: usize, with_3: bool| {
        let list = |id: u32, n: usize| -> String {
            (1..=n)
                .map(|k| {
                    format!("{{ addr = \"10.0.{id}.{k}:9000\", mac = \"02:00:00:00:09:01\" }}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!(
            "[service]\naddresses = [\"10.0.0.1\"]\n\
             [[functions]]\nid = 1\npolicy = \"hash\"\nworkers = [{}]\n\
             [[functions]]\nid = 2\npolicy = \"hash\"\nworkers = [{}]\n",
            list(1, workers_of_1),
            list(2, 1)
        );
        if with_3 {
            text += &format!(
                "[[functions]]\nid = 3\npolicy = \"hash\"\nworkers = [{}]\n",
                list(3, 1)
            );
        }
        Config::parse(&text).unwrap()
    };
    let mut dp = tests::xdp::data_plane_with("[service]\naddresses = [\"10.0.0.1\"]\n", geometry);
    control::apply(&mut dp.maps, &config(1, false)).unwrap();
    let small = dp.maps.functions.get(&1, 0).unwrap().maglev_extent();
    control::apply(&mut dp.maps, &config(3, true)).unwrap();
    let size = |id: u32| dp.maps.functions.get(&id, 0).unwrap().maglev_size();
    assert_eq!((size(1), size(2), size(3)), (1024, 256, 256));
    assert_eq!(dp.maps.functions.get(&3, 0).unwrap().maglev_extent(), small);
    assert_eq!(count_by_worker((1..60).map(|k| by_key(&dp, 3, k))).len(), 1);
}

/// The host variant finds a function through its FUNCTION_SLOTS slot (id &
/// mask) and falls back to FUNCTIONS when another id holds that slot. With
/// four slots, ids 1, 5 and 9 share slot 1: the first written holds it,
/// the others are found by hash; every one reaches its own worker, before
/// and after changes, in both variants; a removed function is not found
/// through a slot it left (its row is still there), and a new id takes the
/// freed slot.
#[test]
fn ids_that_share_a_direct_slot_each_reach_their_own_function() {
    let geometry = Geometry {
        functions: 4,
        ..Geometry::HOST
    };
    let function = |id: u32, worker: u8| {
        format!(
            "[[functions]]\nid = {id}\nworkers = [{{ addr = \"10.0.5.{worker}:9000\", mac = \"02:00:00:00:05:{worker:02x}\" }}]\n"
        )
    };
    let config = format!(
        "[service]\naddresses = [\"10.0.0.1\"]\n{}{}{}",
        function(1, 1),
        function(5, 5),
        function(9, 9)
    );
    let mut dp = tests::xdp::data_plane_with(&config, geometry);
    let slot = |dp: &Loaded, s: u32| dp.maps.function_slots.get(&s, 0).unwrap();
    assert_eq!(slot(&dp, 1).id, 1, "the first id written holds the slot");
    assert_eq!(slot(&dp, 1).hashed, 2, "5 and 9 live in FUNCTIONS alone");
    let reaches = |dp: &Loaded, id: u32, worker: &str| {
        for program in [PROGRAM, HW_PROGRAM] {
            let (verdict, out) = run(
                dp.named(program),
                &frame(CLIENT, &FaasHdr::new(kind::REQUEST, id, 1)),
            );
            assert_eq!(verdict, XDP_TX, "function {id} ({program}): not dispatched");
            assert_eq!(
                destination_and_header(&out).0,
                addr(worker),
                "function {id} ({program})"
            );
        }
    };
    let unknown = |dp: &Loaded, id: u32| {
        let before = dp.maps.counters().unwrap();
        let (verdict, _) = run(
            dp.named(PROGRAM),
            &frame(CLIENT, &FaasHdr::new(kind::REQUEST, id, 1)),
        );
        assert_eq!(verdict, XDP_PASS, "function {id} should be unknown");
        assert_counted(
            &before,
            &dp.maps.counters().unwrap(),
            Counter::PassUnknownFunction,
            &format!("function {id}"),
        );
    };
    reaches(&dp, 1, "10.0.5.1:9000");
    reaches(&dp, 5, "10.0.5.5:9000");
    reaches(&dp, 9, "10.0.5.9:9000");
    // Slot 0 is empty and slot 2 too: ids 0, 4 and 2 are nobody's.
    for id in [0, 4, 2] {
        unknown(&dp, id);
    }

    // New workers for the slot's holder (a row flip) and for a hashed id.
    let worker = |id: u32, w: u8| {
        dispatcher::config::WorkerConfig {
            addr: addr(&format!("10.0.6.{w}:9000")),
            mac: Some([2, 0, 0, 0, 6, w].into()),
            weight: 1,
        }
        .to_map(id)
        .unwrap()
    };
    let rr = dispatcher_common::maps::policy::ROUND_ROBIN;
    for round in 0..3u8 {
        control::set_function(&mut dp.maps, 1, rr, &[worker(1, 10 + round)]).unwrap();
        control::set_function(&mut dp.maps, 5, rr, &[worker(5, 50 + round)]).unwrap();
        reaches(&dp, 1, &format!("10.0.6.{}:9000", 10 + round));
        reaches(&dp, 5, &format!("10.0.6.{}:9000", 50 + round));
        reaches(&dp, 9, "10.0.5.9:9000");
    }

    // The holder goes: its slot is emptied, the others are still found.
    control::remove_function(&mut dp.maps, 1).unwrap();
    assert!(slot(&dp, 1).is_empty());
    unknown(&dp, 1);
    reaches(&dp, 5, "10.0.6.52:9000");
    reaches(&dp, 9, "10.0.5.9:9000");
    // A new id of the same slot takes it (and the row 1 left).
    control::set_function(&mut dp.maps, 13, rr, &[worker(13, 130)]).unwrap();
    assert_eq!(slot(&dp, 1).id, 13);
    assert_eq!(slot(&dp, 1).hashed, 2);
    reaches(&dp, 13, "10.0.6.130:9000");
    reaches(&dp, 5, "10.0.6.52:9000");
    unknown(&dp, 1);
    // 13 goes too; 5's next change moves it into the free slot.
    control::remove_function(&mut dp.maps, 13).unwrap();
    control::set_function(&mut dp.maps, 5, rr, &[worker(5, 60)]).unwrap();
    assert_eq!((slot(&dp, 1).id, slot(&dp, 1).hashed), (5, 1));
    reaches(&dp, 5, "10.0.6.60:9000");
    reaches(&dp, 9, "10.0.5.9:9000");
    // 9 leaves FUNCTIONS: no id of slot 1 is hashed any more, and an id
    // the slot does not hold is answered unknown without asking FUNCTIONS.
    control::remove_function(&mut dp.maps, 9).unwrap();
    assert_eq!((slot(&dp, 1).id, slot(&dp, 1).hashed), (5, 0));
    for id in [9, 13, 1] {
        unknown(&dp, id);
    }
    reaches(&dp, 5, "10.0.6.60:9000");
}
