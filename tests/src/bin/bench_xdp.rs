//! `cargo xtask bench-xdp`: nanoseconds per packet of the data plane in the
//! kernel (BPF_PROG_TEST_RUN with repeat), per policy, IPv4 and IPv6, beside
//! yardsticks built into the same object, and how the cost grows with the
//! number of functions and of workers per function.
//!
//! Method: every worker address is also a service address, with the
//! service port, so a rewritten packet is again a request: each of the
//! `REPEAT` repetitions takes the whole dispatch path (checked: the
//! dispatched counter must grow by exactly REPEAT). Programs run
//! interleaved, ROUNDS times; the table shows the median and the range.
//! A benchmark, not a test: it asserts only that it measured what it says.

use std::{net::IpAddr, time::Instant};

use aya::programs::{TestRun, TestRunOptions};
use dispatcher::{
    config::{Config, FunctionConfig, Policy, Service, WorkerConfig},
    control,
    data_plane::{
        Loaded, PASS_PROGRAM, PROGRAM, YARDSTICK_FLOOR, YARDSTICK_ONE_ARRAY_LOOKUP,
        YARDSTICK_ONE_LOOKUP,
    },
};
use dispatcher_common::{
    maps::{egress, Geometry},
    protocol::{kind, FaasHdr},
    stats::Counter,
};
use tests::{
    bpf_trace::{Cost, Tracer},
    packets::{faas_payload, udp_frame, CLIENT_MAC, IFACE_MAC},
    xdp::set_trace,
};

const REPEAT: u32 = 200_000;
const ROUNDS: usize = 11;
const SERVICE_PORT: u16 = 7770;

fn worker_ip(v6: bool, k: usize) -> IpAddr {
    if v6 {
        format!("fd00::1:{:x}", k + 1).parse().unwrap()
    } else {
        format!("10.1.{}.{}", k / 250, k % 250 + 1).parse().unwrap()
    }
}

/// `functions` functions (ids 1..=functions) of `workers` workers each,
/// all with `policy`; every worker address is a service address, every
/// worker MAC the interface's.
fn config(policy: Policy, functions: usize, workers: usize, v6: bool) -> Config {
    let ws: Vec<WorkerConfig> = (0..workers)
        .map(|k| WorkerConfig {
            addr: (worker_ip(v6, k), SERVICE_PORT).into(),
            // The interface's own MAC: the rewritten frame is addressed to
            // the dispatcher again, so the next repetition dispatches it.
            mac: Some(IFACE_MAC.into()),
            weight: 1,
        })
        .collect();
    Config {
        service: Service {
            addresses: (0..workers).map(|k| worker_ip(v6, k)).collect(),
            port: SERVICE_PORT,
        },
        functions: (1..=functions as u32)
            .map(|id| FunctionConfig {
                id,
                policy,
                workers: ws.clone(),
            })
            .collect(),
        workflows: Vec::new(),
        egress: Default::default(),
        health: None,
        neighbours: Default::default(),
        metrics: None,
    }
}

/// A data plane of `geometry` with `config` applied.
fn loaded(geometry: Geometry, config: &Config) -> Loaded {
    let mut dp = Loaded::with_geometry(geometry).expect("load the data plane (run as root)");
    dp.maps
        .set_settings(IFACE_MAC, IFACE_MAC, egress::TX)
        .unwrap();
    control::apply(&mut dp.maps, config).unwrap();
    dp
}

/// A data plane of `geometry` with `functions` functions of `workers`
/// workers each, function `id` with policy `POLICIES[(id - 1) % 4]`, so
/// the last four are one of each.
fn setup_mixed(geometry: Geometry, functions: usize, workers: usize) -> Loaded {
    let mut config = config(Policy::RoundRobin, functions, workers, false);
    for f in &mut config.functions {
        f.policy = POLICIES[(f.id as usize - 1) % 4].1;
    }
    loaded(geometry, &config)
}

fn setup(policy: Policy, functions: usize, workers: usize, v6: bool) -> Loaded {
    setup_with(Geometry::HOST, policy, functions, workers, v6)
}

fn setup_with(
    geometry: Geometry,
    policy: Policy,
    functions: usize,
    workers: usize,
    v6: bool,
) -> Loaded {
    loaded(geometry, &config(policy, functions, workers, v6))
}

fn request_frame(function_id: u32, v6: bool) -> Vec<u8> {
    let mut hdr = FaasHdr::new(kind::REQUEST, function_id, 1);
    hdr.key = 42u64.to_be_bytes();
    let payload = faas_payload(&hdr, &[0u8; 64]);
    let client: IpAddr = if v6 {
        "fd00::2".parse().unwrap()
    } else {
        "10.0.0.2".parse().unwrap()
    };
    udp_frame(
        CLIENT_MAC,
        IFACE_MAC,
        &[],
        (client, 40000).into(),
        (worker_ip(v6, 0), SERVICE_PORT).into(),
        &payload,
    )
}

/// ns per packet of `program` over REPEAT repetitions of `frame`, as the
/// kernel measures it (its average, in whole ns). The syscall's wall-clock
/// time is printed with BENCH_XDP_DEBUG=1: it is higher by a steady ~55 ns
/// per packet on this VM, outside the kernel's timed loop.
fn measure(dp: &Loaded, program: &str, frame: &[u8], check_dispatch: bool) -> f64 {
    let before = dp.maps.counters().unwrap()[Counter::DispatchedRequest as usize].1;
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: REPEAT,
        ..Default::default()
    };
    let start = Instant::now();
    let result = dp.named(program).test_run(opts).expect("BPF_PROG_TEST_RUN");
    let wall = start.elapsed();
    if check_dispatch {
        let after = dp.maps.counters().unwrap()[Counter::DispatchedRequest as usize].1;
        assert_eq!(
            after - before,
            REPEAT as u64,
            "{program}: not every repetition was dispatched"
        );
        assert_eq!(result.return_value, 3, "{program}: not XDP_TX");
    }
    if std::env::var_os("BENCH_XDP_DEBUG").is_some() {
        eprintln!(
            "{program}: wall {:.1} ns, kernel {} ns",
            wall.as_nanos() as f64 / REPEAT as f64,
            result.duration.as_nanos()
        );
    }
    result.duration.as_nanos() as f64
}

/// The machine-independent cost of one run of `program` on `frame`.
fn cost(dp: &Loaded, program: &str, frame: &[u8]) -> Cost {
    Tracer::new(dp, program)
        .and_then(|t| t.run(frame))
        .unwrap_or_else(|e| panic!("tracing {program}: {e:#}"))
}

fn median_and_range(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

const POLICIES: [(&str, Policy); 4] = [
    ("round-robin", Policy::RoundRobin),
    ("least-loaded", Policy::LeastLoaded),
    ("p2c", Policy::P2c),
    ("hash", Policy::Hash),
];

fn main() {
    let uname = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("# bench-xdp: ns per packet, BPF_PROG_TEST_RUN, {REPEAT} repetitions x {ROUNDS} interleaved rounds");
    println!(
        "# kernel {uname}, {cpu}, {} CPUs; median [min-max]\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // BENCH_XDP_QUICK=1: IPv4 policies only, for trying out changes.
    let quick = std::env::var_os("BENCH_XDP_QUICK").is_some();
    for v6 in [false, true] {
        if quick && v6 {
            break;
        }
        let family = if v6 { "IPv6" } else { "IPv4" };
        // One data plane per policy (1 function, 4 workers), all measured
        // in the same rounds with the yardsticks.
        let planes: Vec<(&str, Loaded)> = POLICIES
            .iter()
            .map(|(name, p)| (*name, setup(*p, 1, 4, v6)))
            .collect();
        let frame = request_frame(1, v6);
        let yard = &planes[0].1;
        let mut samples: Vec<(String, Vec<f64>)> = [
            "XDP_PASS",
            "floor (L3 forwarder)",
            "one-lookup dispatcher",
            "one-lookup dispatcher (direct table)",
        ]
        .iter()
        .map(|s| (s.to_string(), Vec::new()))
        .chain(POLICIES.iter().map(|(n, _)| (n.to_string(), Vec::new())))
        .collect();
        for _ in 0..ROUNDS {
            samples[0]
                .1
                .push(measure(yard, PASS_PROGRAM, &frame, false));
            samples[1]
                .1
                .push(measure(yard, YARDSTICK_FLOOR, &frame, false));
            samples[2]
                .1
                .push(measure(yard, YARDSTICK_ONE_LOOKUP, &frame, false));
            samples[3]
                .1
                .push(measure(yard, YARDSTICK_ONE_ARRAY_LOOKUP, &frame, false));
            for (i, (_, dp)) in planes.iter().enumerate() {
                samples[4 + i].1.push(measure(dp, PROGRAM, &frame, true));
            }
        }
        // What each program executed for this frame: counts that do not
        // depend on the machine (tests::bpf_trace).
        let mut costs = vec![
            cost(yard, PASS_PROGRAM, &frame),
            cost(yard, YARDSTICK_FLOOR, &frame),
            cost(yard, YARDSTICK_ONE_LOOKUP, &frame),
            cost(yard, YARDSTICK_ONE_ARRAY_LOOKUP, &frame),
        ];
        costs.extend(planes.iter().map(|(_, dp)| cost(dp, PROGRAM, &frame)));
        let stats: Vec<(String, (f64, f64, f64))> = samples
            .into_iter()
            .map(|(n, s)| (n, median_and_range(s)))
            .collect();
        let floor = stats[1].1 .0;
        let one = stats[2].1 .0;
        let one_min = stats[2].1 .1;
        let direct = stats[3].1 .0;
        println!("## {family}: 1 function, 4 workers");
        println!(
            "| program | ns/packet | range | x floor | x one-lookup | x one-lookup (minima) | x one-lookup (direct table) | instructions | calls | hash lookups | array lookups | atomics |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for ((name, (m, lo, hi)), c) in stats.iter().zip(&costs) {
            println!(
                "| {name} | {m:.1} | {lo:.1}-{hi:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
                m / floor,
                m / one,
                lo / one_min,
                m / direct,
                c.instructions,
                c.calls() + c.bpf_calls,
                c.hash_lookups,
                c.array_lookups,
                c.atomics
            );
        }
        println!();
        if std::env::var_os("BENCH_XDP_SOURCES").is_some() {
            for ((name, _), c) in stats.iter().zip(&costs) {
                println!("{name}: {:?}", c.by_source);
                if name == "round-robin" {
                    let mut lines: Vec<_> = c.by_line.iter().collect();
                    lines.sort_by_key(|(_, n)| std::cmp::Reverse(**n));
                    println!("{lines:?}");
                }
            }
        }
    }

    tracing_cost();
    if quick {
        return;
    }
    // Scaling: functions (4 workers each) and workers (1 function). The
    // 65,536-function point needs an operator's geometry (`dispatcher run
    // --max-functions 65536 ...`): one data plane, loaded once, its
    // functions' policies mixed. The worker points use a geometry of 256
    // workers per function (`--max-workers-per-function 256`) whose
    // SERVICES table has room for 256 addresses: each worker address is
    // also a service address here, so a rewritten frame dispatches again.
    let platform = Geometry {
        functions: 65_536,
        workers_per_function: 16,
        ring_size: 64,
        maglev_pool_chunks: 16_384 * 2 * 1024 / dispatcher_common::maps::TABLE_CHUNK,
        ..Geometry::HOST
    };
    let many_functions = setup_mixed(platform, 65_536, 4);
    let wide = Geometry {
        service_slots: 8192,
        functions: 4,
        workers_per_function: 256,
        ring_size: 1024,
        ..Geometry::HOST
    };
    for (what, points) in [
        (
            "functions (4 workers each)",
            &[1usize, 16, 256, 1024, 65_536][..],
        ),
        ("workers (1 function)", &[1usize, 4, 16, 64, 256][..]),
    ] {
        println!(
            "## IPv4 cost by number of {what}: median (min) ns; max/min of medians / of minima"
        );
        print!("| policy |");
        for p in points.iter() {
            print!(" {p} |");
        }
        println!(" growth |");
        println!("|---|{}---:|", "---:|".repeat(points.len()));
        for (k, (name, policy)) in POLICIES.iter().enumerate() {
            let by_functions = what.starts_with("functions");
            let planes: Vec<(Option<Loaded>, Vec<u8>)> = points
                .iter()
                .map(|&n| match (by_functions, n) {
                    // The mixed plane's last function of this policy.
                    (true, 65_536) => (None, request_frame(65_536 - 3 + k as u32, false)),
                    (true, n) => (
                        Some(setup(*policy, n, 4, false)),
                        request_frame(n as u32, false),
                    ),
                    (false, n) => (
                        Some(setup_with(wide, *policy, 1, n, false)),
                        request_frame(1, false),
                    ),
                })
                .collect();
            let plane = |i: usize| -> &Loaded { planes[i].0.as_ref().unwrap_or(&many_functions) };
            let mut samples = vec![Vec::new(); points.len()];
            for _ in 0..ROUNDS {
                for (i, sample) in samples.iter_mut().enumerate() {
                    sample.push(measure(plane(i), PROGRAM, &planes[i].1, true));
                }
            }
            let stats: Vec<(f64, f64, f64)> = samples.into_iter().map(median_and_range).collect();
            print!("| {name} |");
            for (m, lo, _) in &stats {
                print!(" {m:.0} ({lo:.0}) |");
            }
            let spread = |xs: Vec<f64>| {
                xs.iter().cloned().fold(f64::MIN, f64::max)
                    / xs.iter().cloned().fold(f64::MAX, f64::min)
            };
            println!(
                " {:.2} / {:.2} |",
                spread(stats.iter().map(|s| s.0).collect()),
                spread(stats.iter().map(|s| s.1).collect())
            );
        }
        println!();
    }
}

/// `dispatcher trace`'s cost: IPv4 round-robin with nobody tracing, with a
/// tracer sampling 1 in 64, and with every packet traced while a reader
/// thread drains the ring buffer (as `dispatcher trace` does, but without
/// pause).
fn tracing_cost() {
    let mut planes: Vec<(&str, Loaded)> = [
        ("round-robin, nobody tracing", 0),
        ("round-robin, trace --sample 1/64", 64),
        ("round-robin, trace --sample 1 (every packet)", 1),
    ]
    .into_iter()
    .map(|(name, sample)| {
        let mut dp = setup(Policy::RoundRobin, 1, 4, false);
        set_trace(&mut dp, sample, None);
        (name, dp)
    })
    .collect();
    let frame = request_frame(1, false);
    let id = planes[2]
        .1
        .maps
        .map_data(dispatcher_common::maps::names::TRACE)
        .unwrap()
        .info()
        .unwrap()
        .id();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut samples = vec![Vec::new(); planes.len()];
    let read = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let data = aya::maps::MapData::from_id(id).unwrap();
            let mut ring = aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(data)).unwrap();
            let mut read = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                while ring.next().is_some() {
                    read += 1;
                }
                std::thread::yield_now();
            }
            read
        });
        for _ in 0..ROUNDS {
            for (i, (_, dp)) in planes.iter().enumerate() {
                samples[i].push(measure(dp, PROGRAM, &frame, true));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    let off = median_and_range(samples[0].clone()).0;
    println!("## IPv4: what `dispatcher trace` costs (1 function, 4 workers)");
    println!(
        "| program | ns/packet | range | x nobody tracing | instructions | calls | array lookups |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, (name, dp)) in planes.iter_mut().enumerate() {
        let (m, lo, hi) = median_and_range(samples[i].clone());
        // Counted for a packet that is not drawn where 1 in N is (the
        // countdown at 2), for a drawn one where every packet is.
        let sample = dp.maps.settings.get(&0, 0).unwrap().trace_sample;
        set_trace(dp, sample, Some(2));
        let c = cost(dp, PROGRAM, &frame);
        println!(
            "| {name} | {m:.1} | {lo:.1}-{hi:.1} | {:.2} | {} | {} | {} |",
            m / off,
            c.instructions,
            c.calls() + c.bpf_calls,
            c.array_lookups
        );
    }
    let lost: u64 = planes[2].1.maps.trace_lost.get(&0, 0).unwrap().iter().sum();
    let traced = REPEAT as u64 * ROUNDS as u64;
    println!(
        "\nEvery-packet tracing: {traced} records, {read} read by the reader thread, {lost} lost to a full ring buffer (counted in TRACE_LOST). The counts (instructions, calls, array lookups) are the interpreter's for one packet: not drawn in the 1/64 row, drawn (its record written) in the every-packet row.\n"
    );
    for (_, dp) in &mut planes {
        set_trace(dp, 0, None);
    }
}
