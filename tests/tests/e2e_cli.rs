//! The operator's CLI against a running data plane on a namespace testbed:
//! functions, workers (add, drain, rm), workflows, maps dump, each taking
//! effect on the very next request. Needs root: run through
//! `cargo xtask test`.

use std::{collections::HashMap, time::Duration};

use dispatcher::{config::Policy, control::inspect::WorkerState};
use dispatcher_common::stats::Counter;
use tests::{
    bed::Bed,
    testbed::{config, Host},
};

fn hup(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap()
}

#[test]
fn cli_changes_workers_functions_and_workflows_of_a_running_data_plane() {
    let bed = Bed::new("cli", 2);
    let (w1, w2) = (&bed.workers[0], &bed.workers[1]);
    let conf = bed.write_config(&[(1, &[w1])], "");
    let _workers = [bed.serve(w1, "echo", &[]), bed.serve(w2, "echo", &[])];
    let dispatcher = bed.start("dispatcher", &conf, &[]);
    let (a1, a2) = (w1.worker_addr(), w2.worker_addr());

    assert_eq!(bed.answers_by_worker(1, 4), HashMap::from([(a1, 4)]));

    // Add a second worker: round-robin over both from the next request.
    bed.cli_ok(&[
        "workers",
        "add",
        "--function",
        "1",
        "--addr",
        &a2.to_string(),
        "--mac",
        &w2.mac_string(),
    ]);
    assert_eq!(
        bed.answers_by_worker(1, 4),
        HashMap::from([(a1, 2), (a2, 2)])
    );

    let list = bed.workers_list();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list.iter()
            .all(|w| w.state == WorkerState::Up && w.packets >= 2),
        "{list:?}"
    );

    // Drain the first: no new requests to it, and the list says so.
    let a1_text = a1.to_string();
    bed.cli_ok(&["workers", "drain", "--function", "1", "--addr", &a1_text]);
    assert_eq!(bed.answers_by_worker(1, 4), HashMap::from([(a2, 4)]));
    assert!(bed.cli_ok(&["workers", "list"]).contains("draining"));

    // Remove it; a second removal is a clear error.
    bed.cli_ok(&["workers", "rm", "--function", "1", "--addr", &a1_text]);
    let again = bed.cli(&["workers", "rm", "--function", "1", "--addr", &a1_text]);
    assert!(
        !again.ok && again.stderr.contains("has no worker"),
        "{again:?}"
    );

    // Functions and workflows.
    bed.cli_ok(&["functions", "add", "2", "--policy", "hash"]);
    bed.cli_ok(&[
        "workers",
        "add",
        "--function",
        "2",
        "--addr",
        &a1.to_string(),
        "--mac",
        &w1.mac_string(),
    ]);
    bed.cli_ok(&["workflows", "add", "100", "--steps", "1,2"]);
    let functions = bed.functions();
    assert_eq!(
        functions.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(functions[1].policy, Some(Policy::Hash));
    let refused = bed.cli(&["workflows", "add", "101", "--steps", "1,7"]);
    assert!(
        !refused.ok && refused.stderr.contains("function 7, which does not exist"),
        "{refused:?}"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&bed.cli_ok(&["maps", "dump", "--json"])).unwrap();
    assert_eq!(
        dump["workflows"][0]["steps"],
        serde_json::json!([1, 2]),
        "{dump}"
    );
    assert!(
        dump["counters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["counter"] == "dispatched_request" && c["packets"] == 12),
        "{dump}"
    );

    // A workflow invoked through XDP: step 0 runs on function 1's worker
    // (w2), which was started without --dispatcher, so it cannot pass the
    // step on and answers the client with ERROR 6, saying so.
    let answer = bed.invoke("100", "x");
    assert!(
        answer.stderr.contains(&format!("ERROR 6 from {a2}"))
            && answer.stderr.contains("--dispatcher"),
        "{answer:?}"
    );
    bed.cli_ok(&["workflows", "rm", "100"]);
    bed.cli_ok(&["functions", "rm", "2"]);
    assert!(!bed.cli_ok(&["functions", "list"]).contains("hash"));

    // A function with no worker: the host answers ERROR 2, and the data
    // plane's own log (aya-log, read by the daemon) names the reason.
    bed.cli_ok(&["functions", "add", "3"]);
    for _ in 0..3 {
        let answer = bed.invoke("3", "x");
        assert!(answer.stderr.contains("ERROR 2"), "{answer:?}");
    }
    let logged = |n: u32| format!("pass_no_worker: {n} packets so far on this CPU");
    dispatcher.wait_for_log(&logged(1), 1, Duration::from_secs(10));
    let log = dispatcher.log();
    assert!(
        log.contains(&logged(1)),
        "no kernel log line in the daemon's output:\n{log}"
    );
    assert!(
        !log.contains(&logged(3)),
        "only powers of two are logged:\n{log}"
    );
}

/// SIGHUP re-reads the config and applies the difference; a broken config
/// changes nothing; `dispatcher reload --config` applies a file directly.
#[test]
fn reload_applies_only_the_difference() {
    let bed = Bed::new("reload", 2);
    let (w1, w2) = (&bed.workers[0], &bed.workers[1]);
    let vip = bed.dsp.ip;
    let conf = move |workers: &[&Host], extra: &str| config(vip, &[(1, workers)], extra);
    let path = bed.write_file("dispatcher.toml", &conf(&[w1], ""));
    let _workers = [bed.serve(w1, "echo", &[]), bed.serve(w2, "echo", &[])];
    let dispatcher = bed.start("dispatcher", &path, &[]);
    let (a1, a2) = (w1.worker_addr(), w2.worker_addr());
    assert_eq!(bed.answers_by_worker(1, 2), HashMap::from([(a1, 2)]));

    let wait_for_log = |needle: &str, count: usize| {
        dispatcher.wait_for_log(needle, count, Duration::from_secs(10))
    };

    // Function 1 moves to w2; function 2 appears.
    bed.write_file("dispatcher.toml", &conf(&[w2], "\n[[functions]]\nid = 2\n"));
    hup(dispatcher.pid());
    wait_for_log("configuration reloaded", 1);
    assert_eq!(bed.answers_by_worker(1, 2), HashMap::from([(a2, 2)]));
    assert!(bed
        .cli_ok(&["functions", "list"])
        .lines()
        .any(|l| l.starts_with("2 ")));

    // A broken config: reported, nothing changes.
    bed.write_file("dispatcher.toml", "[service]\naddresses = []\n");
    hup(dispatcher.pid());
    wait_for_log("configuration not reloaded", 1);
    assert_eq!(bed.answers_by_worker(1, 1), HashMap::from([(a2, 1)]));

    // `dispatcher reload --config`: function 2 goes, function 1 back to w1.
    let other = bed.write_file("other.toml", &conf(&[w1], ""));
    bed.cli_ok(&["reload", "--config", other.to_str().unwrap()]);
    assert_eq!(bed.answers_by_worker(1, 2), HashMap::from([(a1, 2)]));
    assert!(!bed
        .cli_ok(&["functions", "list"])
        .lines()
        .any(|l| l.starts_with("2 ")));
}

/// SIGHUP follows every part of the config, not just functions: a new
/// service port (the data plane and the slow path's socket both move), a
/// new service address, and a new `[egress]`.
#[test]
fn sighup_moves_the_service_port_addresses_and_egress() {
    let mut bed = Bed::new("hupall", 1);
    let dsp = bed.dsp.clone();
    bed.add_interface(&dsp, "eth1");
    tests::testbed::sh(
        "ip",
        &[
            "-n",
            &dsp.ns,
            "addr",
            "add",
            "10.99.0.100/32",
            "dev",
            "eth0",
        ],
    );
    let worker = &bed.workers[0];
    let base = config(dsp.ip, &[(1, &[worker])], "");
    let path = bed.write_file("dispatcher.toml", &base);
    let _worker = bed.serve(worker, "echo", &[]);
    let dispatcher = bed.start("dispatcher", &path, &[]);
    bed.wait_for_udp_port(&dsp, 7770, Duration::from_secs(10));
    let bin = tests::testbed::dispatcher_bin();
    let invoke = |to: &str, function: &str| {
        let out = bed.exec(
            &bed.client,
            &bin,
            &["invoke", "--timeout-ms", "500", "--to", to, function, "hup"],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dispatched = || bed.stats().get(Counter::DispatchedRequest);
    let hup_and_wait = |count: usize| {
        hup(dispatcher.pid());
        dispatcher.wait_for_log("configuration reloaded", count, Duration::from_secs(10));
    };
    let old = format!("{}:7770", dsp.ip);
    assert_eq!(invoke(&old, "1").0, Some(0));

    // Port 7771 and a second address.
    let moved = base.replace("port = 7770", "").replace(
        &format!("addresses = [\"{}\"]", dsp.ip),
        &format!("addresses = [\"{}\", \"10.99.0.100\"]\nport = 7771", dsp.ip),
    );
    bed.write_file("dispatcher.toml", &moved);
    hup_and_wait(1);
    bed.wait_for_udp_port(&dsp, 7771, Duration::from_secs(10));
    let before = dispatched();
    for to in [format!("{}:7771", dsp.ip), "10.99.0.100:7771".to_string()] {
        let (code, stderr) = invoke(&to, "1");
        assert_eq!(code, Some(0), "{to}: {stderr}\n{}", dispatcher.log());
    }
    assert_eq!(
        dispatched() - before,
        2,
        "both dispatched by XDP on the new port"
    );
    // The slow path moved too: it answers ERROR 1 on the new port...
    let (code, stderr) = invoke(&format!("{}:7771", dsp.ip), "99");
    assert!(code == Some(2) && stderr.contains("ERROR 1 "), "{stderr}");
    // ...and nothing serves the old one any more.
    let (code, stderr) = invoke(&old, "1");
    assert_ne!(code, Some(0), "the old port still answers: {stderr}");
    assert_eq!(
        dispatched() - before,
        2,
        "nothing dispatched on the old port"
    );

    // [egress]: requests now leave by eth1.
    let sent = || {
        let out = bed.exec(
            &dsp,
            std::path::Path::new("cat"),
            &["/sys/class/net/eth1/statistics/tx_packets"],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    bed.write_file(
        "dispatcher.toml",
        &format!("{moved}\n[egress]\nredirect_to = \"eth1\"\n"),
    );
    hup_and_wait(2);
    let before_tx = sent();
    for _ in 0..3 {
        let (code, stderr) = invoke(&format!("{}:7771", dsp.ip), "1");
        assert_eq!(code, Some(0), "{stderr}\n{}", dispatcher.log());
    }
    assert!(
        sent() >= before_tx + 3,
        "eth1 sent {before_tx} -> {}",
        sent()
    );
}

/// The map geometry is the operator's choice in host mode: 65,536
/// functions of up to 8 workers with a 1 MiB Maglev pool, shown with
/// its memory by `maps dump geometry`, enforced by the CLI, and refused
/// with the flag named when it cannot be used.
#[test]
fn the_operator_chooses_the_map_geometry() {
    let bed = Bed::new("geometry", 2);
    let (w1, w2) = (&bed.workers[0], &bed.workers[1]);
    let conf = bed.write_config(&[(1, &[w1, w2])], "");

    // Geometries that cannot be used are refused before anything loads.
    let bad = bed.run_refused(&conf, &["--max-workers-per-function", "48"]);
    assert!(
        bad.contains("workers per function must be a power of two up to 256")
            && bad.contains("--max-workers-per-function 48"),
        "{bad}"
    );
    let bad = bed.run_refused(&conf, &["--maglev-pool", "1000"]);
    assert!(
        bad.contains("--maglev-pool 1000 is not a multiple of 32"),
        "{bad}"
    );
    let bad = bed.run_refused(&conf, &["--max-workers-per-function", "1"]);
    assert!(
        bad.contains(
            "functions.workers of function 1: the config has 2, the data plane's maps hold 1"
        ),
        "{bad}"
    );

    let _workers = [bed.serve(w1, "echo", &[]), bed.serve(w2, "echo", &[])];
    let geometry = [
        "--max-functions",
        "65536",
        "--max-workers-per-function",
        "8",
        "--ring-size",
        "64",
        "--maglev-size",
        "1024",
        "--maglev-pool",
        "1048576",
    ];
    let _dispatcher = bed.start("dispatcher", &conf, &geometry);
    let dump: serde_json::Value =
        serde_json::from_str(&bed.cli_ok(&["maps", "dump", "geometry", "--json"])).unwrap();
    let g = &dump["geometry"][0];
    assert_eq!(g["functions"], 65536, "{dump}");
    assert_eq!(g["workers_per_function"], 8, "{dump}");
    assert_eq!(g["maglev_size"], 1024, "{dump}");
    // MAGLEV: the pool, whatever the function count (1 MiB: 2,048
    // functions of 8 workers, 256-slot tables, two generations each).
    assert_eq!(g["maglev_pool_slots"], 1 << 20, "{dump}");
    assert_eq!(g["memory_bytes_by_map"]["MAGLEV"], 1 << 20, "{dump}");
    assert!(g["memory_bytes"].as_u64().unwrap() > 100 << 20, "{dump}");
    let text = bed.cli_ok(&["maps", "dump", "geometry"]);
    assert!(text.contains("MAGLEV") && text.contains("MiB"), "{text}");

    // It dispatches; a function at a high index works like the first.
    assert_eq!(bed.answers_by_worker(1, 4).len(), 2);
    bed.cli_ok(&["functions", "add", "60000", "--policy", "hash"]);
    bed.cli_ok(&[
        "workers",
        "add",
        "--function",
        "60000",
        "--addr",
        &w1.worker_addr().to_string(),
        "--mac",
        &w1.mac_string(),
    ]);
    assert_eq!(
        bed.answers_by_worker(60000, 3),
        HashMap::from([(w1.worker_addr(), 3)])
    );
    // The geometry's limit holds: a ninth worker is refused, by name.
    for k in 0..7 {
        bed.cli_ok(&[
            "workers",
            "add",
            "--function",
            "60000",
            "--addr",
            &format!("10.99.9.{}:9000", k + 1),
            "--mac",
            "02:00:00:00:09:09",
        ]);
    }
    let ninth = bed.cli(&[
        "workers",
        "add",
        "--function",
        "60000",
        "--addr",
        "10.99.9.100:9000",
        "--mac",
        "02:00:00:00:09:09",
    ]);
    assert!(
        !ninth.ok && ninth.stderr.contains("has 8 workers already"),
        "{ninth:?}"
    );
}
