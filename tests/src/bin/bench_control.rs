//! `cargo xtask bench-control`: how fast the control plane changes the data
//! plane's maps. A benchmark, not a test.
//!
//! 1. Report to visible: a heartbeat's bytes go through the daemon's
//!    handler (`health::Health::on_datagram`: network check, MAC, freshness,
//!    finding the worker's slots, writing LOADS, re-ranking least-loaded
//!    candidates); the time until the new load is readable in the map.
//!    In-process: the UDP hop is not counted.
//! 2. Worker add/remove throughput: `control::add_worker` and
//!    `control::remove_worker` alternately on a loaded (not attached) data
//!    plane, each a one-step change (idle-generation tables, then the
//!    FUNCTIONS flip).
//! 3. At a platform's size: a data plane loaded with an operator's
//!    geometry of 65,536 functions (16 workers each, 64-slot rings, a
//!    64 MiB hash-table pool for the 16,384 with the hash policy): the time to
//!    load it, to apply a config of
//!    65,536 functions, to reload that config with one function changed
//!    (`control::reconcile`, what SIGHUP runs), the consistent-hash change
//!    rate there, and the memory its maps take.

use std::time::Instant;

use dispatcher::{
    config::{Config, HealthConfig, WorkerConfig},
    control::{
        self,
        tables::{self, Member},
    },
    daemon::health::Health,
    data_plane::Loaded,
    heartbeat::{self, Heartbeat},
};
use dispatcher_common::maps::{egress, policy, Geometry, TABLE_CHUNK};
use hdrhistogram::Histogram;

const KEY: &str = "bench-key-0123456789";

fn main() {
    let workers = 16usize;
    let mut functions = String::new();
    for id in 1..=4 {
        let list: Vec<String> = (0..workers)
            .map(|k| {
                format!(
                    "{{ addr = \"10.1.0.{}:9000\", mac = \"02:00:00:00:00:01\" }}",
                    k + 1
                )
            })
            .collect();
        functions += &format!(
            "\n[[functions]]\nid = {id}\npolicy = \"least-loaded\"\nworkers = [{}]\n",
            list.join(", ")
        );
    }
    let config = Config::parse(&format!(
        "[service]\naddresses = [\"10.0.0.1\"]\n{functions}"
    ))
    .unwrap();
    let mut dp = Loaded::new().expect("load the data plane (run as root)");
    dp.maps
        .set_settings([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 1], egress::TX)
        .unwrap();
    control::apply(&mut dp.maps, &config).unwrap();
    println!(
        "# bench-control: 4 functions x {workers} workers (least-loaded), in-process, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. Report to visible.
    let health_config = HealthConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        key: KEY.into(),
        networks: vec!["10.0.0.0/8".parse().unwrap()],
        down_after_ms: 60_000,
    };
    let mut health = Health::new(health_config);
    let from = "10.1.0.3:9000".parse().unwrap();
    let f1 = dp.maps.functions.get(&1, 0).unwrap();
    let slot_index = f1.worker_index(2);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let reports = 5_000u32;
    for i in 1..=reports {
        let hb = Heartbeat {
            worker: from,
            in_flight: i,
            capacity: 0,
            sent_ns: heartbeat::now_ns(),
        };
        let bytes = hb.encode(KEY.as_bytes());
        let start = Instant::now();
        health.on_datagram(&mut dp.maps, &bytes, from).unwrap();
        while dp.maps.loads.get(&slot_index, 0).unwrap().in_flight != i {}
        hist.record(start.elapsed().as_micros().max(1) as u64)
            .unwrap();
    }
    assert_eq!(
        health.counters.accepted, reports as u64,
        "every report accepted"
    );
    println!(
        "report to visible ({reports} heartbeats): p50 {} us, p90 {} us, p99 {} us, max {} us (target: p99 under 1,000 us)",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        hist.max()
    );

    // 2. Add/remove throughput: five rounds, median and spread; then the
    // same on a consistent-hash function, whose rendezvous table (sized by
    // its workers) is updated in place and copied out on every change.
    let extra = WorkerConfig {
        addr: "10.1.0.200:9000".parse().unwrap(),
        mac: Some([2, 0, 0, 0, 0, 2].into()),
        weight: 1,
    }
    .to_map(1)
    .unwrap();
    let removed: std::net::SocketAddr = "10.1.0.200:9000".parse().unwrap();
    let round = |maps: &mut dispatcher::data_plane::Maps, functions: &[u32], changes: u32| {
        let start = Instant::now();
        for i in 0..changes {
            let function = functions[i as usize % functions.len()];
            if (i / functions.len() as u32).is_multiple_of(2) {
                control::add_worker(maps, function, extra).unwrap();
            } else {
                control::remove_worker(maps, function, removed).unwrap();
            }
        }
        changes as f64 / start.elapsed().as_secs_f64()
    };
    let mut rates: Vec<f64> = (0..5)
        .map(|_| round(&mut dp.maps, &[1, 2, 3, 4], 4_000))
        .collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "worker add/remove, least-loaded: 5 rounds of 4000 changes: median {:.0} changes/s (min {:.0}, max {:.0}) (target: 25,000/s)",
        rates[2], rates[0], rates[4]
    );
    // Function 1 takes the hash policy with `n` workers; changes take it
    // to n + 1 and back. At 15 and 63 its table keeps its size (4,096 and
    // 16,384 slots: Geometry::maglev_size_for); at 16 every change crosses
    // a size (4,096 <-> 16,384 slots: a new extent of the pool and a table
    // built anew each time, and all keys remap).
    println!(
        "(the hash table's passes run as {} code on this CPU)",
        dispatcher::control::tables::vector_code()
    );
    // The last row weighs one worker 2 (weighted scores: a table read per
    // score).
    for (n, what, weighted) in [
        (15, "rendezvous, 15-16 workers, 4,096 slots", false),
        (63, "rendezvous, 63-64 workers, 16,384 slots", false),
        (
            16,
            "16-17 workers: every change resizes 4,096 <-> 16,384 slots",
            false,
        ),
        (
            63,
            "rendezvous, 63-64 workers of which one has weight 2, 16,384 slots",
            true,
        ),
    ] {
        let workers: Vec<_> = (1..=n)
            .map(|k| {
                WorkerConfig {
                    addr: format!("10.1.{}.{}:9000", k / 200, k % 200 + 1)
                        .parse()
                        .unwrap(),
                    mac: Some([2, 0, 0, 0, 0, 2].into()),
                    weight: if weighted && k == 1 { 2 } else { 1 },
                }
                .to_map(1)
                .unwrap()
            })
            .collect();
        control::set_function(&mut dp.maps, 1, policy::HASH, &workers).unwrap();
        let mut rates: Vec<f64> = (0..5).map(|_| round(&mut dp.maps, &[1], 2_000)).collect();
        // What a change moves, from the tables themselves: the share of
        // entries whose worker changed, against the ideal 1/(n + 1).
        let members: Vec<Member> = workers
            .iter()
            .chain([&extra])
            .enumerate()
            .map(|(slot, w)| Member {
                slot: slot as u8,
                weight: w.weight,
                key: Member::key_of(dispatcher::endpoints::worker_socket_addr(w)),
            })
            .collect();
        // (Over every hash value a table of up to 65,536 entries tells
        // apart, so that a change of length compares like for like.)
        let (m0, m1) = (
            Geometry::HOST.maglev_size_for(n as u32) - 1,
            Geometry::HOST.maglev_size_for(n as u32 + 1) - 1,
        );
        let (before, after) = (
            tables::hash_table(&members[..n], m0 + 1),
            tables::hash_table(&members, m1 + 1),
        );
        let moved = (0..65_536u32)
            .filter(|h| before[(h & m0) as usize] != after[(h & m1) as usize])
            .count() as f64
            / 65_536.0;
        rates.sort_by(f64::total_cmp);
        println!(
            "worker add/remove, consistent hash ({what}): 5 rounds of 2000 changes: median {:.0} changes/s (min {:.0}, max {:.0}) (target: 25,000/s); adding the {}th worker moves {:.2}% of the keys (ideal {:.2}%)",
            rates[2], rates[0], rates[4], n + 1, moved * 100.0, 100.0 / (n as f64 + 1.0)
        );
    }

    platform_size();
}

/// Section 3: load, apply, reload and change at 65,536 functions.
fn platform_size() {
    let geometry = Geometry {
        functions: 65_536,
        workers_per_function: 16,
        ring_size: 64,
        // A quarter of the functions use the hash policy: a 64 MiB pool,
        // where each holds its 4-worker (1,024-slot) table and a quarter of
        // them can grow to 16 workers (4,096 slots).
        maglev_pool_chunks: 16_384 * 2 * 2048 / TABLE_CHUNK,
        ..Geometry::HOST
    };
    let start = Instant::now();
    let mut dp = Loaded::with_geometry(geometry).expect("load the data plane (run as root)");
    dp.maps
        .set_settings([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 1], egress::TX)
        .unwrap();
    let loaded = start.elapsed();
    let config_text = |changed: bool| {
        let mut text = String::from("[service]\naddresses = [\"10.0.0.1\"]\n");
        for id in 1..=geometry.functions {
            let policy = ["round-robin", "least-loaded", "p2c", "hash"][id as usize % 4];
            let last = if changed && id == 1 { 5 } else { 4 };
            let workers: Vec<String> = (1..=last)
                .map(|k| format!("{{ addr = \"10.2.0.{k}:9000\", mac = \"02:00:00:00:00:01\" }}"))
                .collect();
            text += &format!(
                "[[functions]]\nid = {id}\npolicy = \"{policy}\"\nworkers = [{}]\n",
                workers.join(", ")
            );
        }
        Config::parse(&text).unwrap()
    };
    let (config, changed) = (config_text(false), config_text(true));
    let start = Instant::now();
    control::apply(&mut dp.maps, &config).unwrap();
    let applied = start.elapsed();
    let start = Instant::now();
    control::reconcile(&mut dp.maps, &changed).unwrap();
    let reloaded = start.elapsed();
    // Consistent-hash changes on a function of 16 workers at this size.
    let extra = WorkerConfig {
        addr: "10.2.1.200:9000".parse().unwrap(),
        mac: Some([2, 0, 0, 0, 0, 2].into()),
        weight: 1,
    }
    .to_map(4)
    .unwrap();
    for k in 5..=16 {
        let w = WorkerConfig {
            addr: format!("10.2.0.{k}:9000").parse().unwrap(),
            mac: Some([2, 0, 0, 0, 0, 2].into()),
            weight: 1,
        }
        .to_map(4)
        .unwrap();
        if k < 16 {
            control::add_worker(&mut dp.maps, 4, w).unwrap();
        }
    }
    let removed: std::net::SocketAddr = "10.2.1.200:9000".parse().unwrap();
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            for i in 0..2_000 {
                if i % 2 == 0 {
                    control::add_worker(&mut dp.maps, 4, extra).unwrap();
                } else {
                    control::remove_worker(&mut dp.maps, 4, removed).unwrap();
                }
            }
            2_000.0 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let memory = dispatcher::control::inspect::geometry(&dp.maps).unwrap();
    let mib = |b: &serde_json::Value| b.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64;
    println!(
        "\n# at a platform's size: --max-functions 65536 --max-workers-per-function 16 --ring-size 64 --maglev-pool 67108864"
    );
    println!(
        "load the data plane (create its maps): {:.2} s",
        loaded.as_secs_f64()
    );
    println!(
        "apply 65,536 functions of 4 workers (a quarter each round-robin, least-loaded, p2c, hash): {:.1} s ({:.0} functions/s)",
        applied.as_secs_f64(),
        65_536.0 / applied.as_secs_f64()
    );
    println!(
        "reload that config with one function changed (control::reconcile, as SIGHUP): {:.2} s",
        reloaded.as_secs_f64()
    );
    println!(
        "worker add/remove, consistent hash (rendezvous, 15-16 workers, 4,096 slots): 5 rounds of 2000 changes: median {:.0} changes/s (min {:.0}, max {:.0}) (target: 25,000/s)",
        rates[2], rates[0], rates[4]
    );
    println!(
        "memory of the maps: {:.0} MiB (MAGLEV {:.0}, REGISTERED {:.0}, WORKERS {:.0}, WORKER_STATS {:.0}, RING {:.0})",
        mib(&memory["memory_bytes"]),
        mib(&memory["memory_bytes_by_map"]["MAGLEV"]),
        mib(&memory["memory_bytes_by_map"]["REGISTERED"]),
        mib(&memory["memory_bytes_by_map"]["WORKERS"]),
        mib(&memory["memory_bytes_by_map"]["WORKER_STATS"]),
        mib(&memory["memory_bytes_by_map"]["RING"]),
    );
}
