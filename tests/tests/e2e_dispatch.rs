//! End to end on a namespace testbed: a client sends REQUESTs to the
//! dispatcher's service address; the XDP program on the dispatcher's veth
//! rewrites them toward the worker and transmits them; the worker answers
//! the client directly.
//!
//! Needs root: run through `cargo xtask test`.

use std::time::Duration;

use dispatcher::stats::Snapshot;
use dispatcher_common::stats::Counter;
use tests::testbed::{dispatcher_bin, Testbed};

#[test]
fn request_is_dispatched_by_xdp_and_answered_directly_by_the_worker() {
    let bin = dispatcher_bin();
    let mut tb = Testbed::new("e2e");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let worker = tb.add_host("worker", 10);
    tb.enable_xdp_tx(&dsp);

    let config = tb.write_file(
        "dispatcher.toml",
        &format!(
            "[service]\naddresses = [\"{}\"]\nport = 7770\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\", mac = \"{}\" }}]\n",
            dsp.ip,
            worker.ip,
            worker.mac_string()
        ),
    );
    let _worker_proc = tb.spawn(&worker, "worker", &bin, &["serve", "--listen", &format!("{}:9000", worker.ip), "--functions", "echo"]);
    let mut dispatcher = tb.spawn(&dsp, "dispatcher", &bin, &["run", "--iface", "eth0", "--config", config.to_str().unwrap()]);
    tb.wait_for_udp_port(&worker, 9000, Duration::from_secs(10));
    tb.wait_for_data_plane(&dsp, &mut dispatcher, Duration::from_secs(20));

    let to = format!("{}:7770", dsp.ip);
    for i in 0..5 {
        let payload = format!("hello-{i}");
        let out = tb.exec(&client, &bin, &["invoke", "--to", &to, "1", &payload]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "invoke {i} failed: {stderr}\ndispatcher log:\n{}", dispatcher.log());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), payload);
        // The answer came from the worker itself, not through the dispatcher.
        assert!(stderr.contains(&format!("RESPONSE from {}:9000", worker.ip)), "{stderr}");
    }

    // Every request went through the XDP program.
    let stats = Snapshot::read(&tb.pin_dir(&dsp)).expect("read pinned stats");
    assert_eq!(stats.get(Counter::DispatchedRequest), 5, "{stats:?}");

    // The CLI reads the same counters.
    let out = tb.exec(&dsp, &bin, &["stats", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["counters"].as_array().unwrap().iter().any(|c| c[0] == "dispatched_request" && c[1] == 5), "{json}");

    // SIGTERM detaches and removes the pins.
    assert!(dispatcher.stop(), "dispatcher did not exit cleanly:\n{}", dispatcher.log());
    assert!(!tb.pin_dir(&dsp).exists(), "pins left behind after SIGTERM");
    let link = tb.exec(&dsp, std::path::Path::new("ip"), &["link", "show", "eth0"]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP still attached after SIGTERM");
}

/// What the data plane passes up gets the answer PROTOCOL.md promises:
/// ERRORs for requests nobody can serve, and a dispatch of a fragmented
/// (reassembled) request through the daemon's slow path.
#[test]
fn the_slow_path_answers_errors_and_dispatches_fragmented_requests() {
    let bin = dispatcher_bin();
    let mut tb = Testbed::new("slow");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let worker = tb.add_host("worker", 10);
    tb.enable_xdp_tx(&dsp);
    let config = tb.write_file(
        "dispatcher.toml",
        &format!(
            "[service]\naddresses = [\"{}\"]\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\", mac = \"{}\" }}]\n\n[[functions]]\nid = 3\n",
            dsp.ip,
            worker.ip,
            worker.mac_string()
        ),
    );
    let _worker_proc = tb.spawn(&worker, "worker", &bin, &["serve", "--listen", &format!("{}:9000", worker.ip), "--functions", "echo"]);
    let mut dispatcher = tb.spawn(&dsp, "dispatcher", &bin, &["run", "--iface", "eth0", "--config", config.to_str().unwrap()]);
    tb.wait_for_udp_port(&worker, 9000, Duration::from_secs(10));
    tb.wait_for_data_plane(&dsp, &mut dispatcher, Duration::from_secs(20));
    tb.wait_for_udp_port(&dsp, 7770, Duration::from_secs(10));
    let to = format!("{}:7770", dsp.ip);

    for (function, expected) in [("99", "ERROR 1 "), ("3", "ERROR 2 ")] {
        let out = tb.exec(&client, &bin, &["invoke", "--to", &to, function, "x"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "function {function}: {stderr}\n{}", dispatcher.log());
        assert!(stderr.contains(expected), "function {function}: {stderr}");
    }

    // 4,000 bytes do not fit a 1,500-byte MTU: the request arrives in
    // fragments, which XDP passes up and the host reassembles.
    let big = "f".repeat(4000);
    let out = tb.exec(&client, &bin, &["invoke", "--to", &to, "1", &big]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", dispatcher.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), big);
    assert!(stderr.contains(&format!("RESPONSE from {}:9000", worker.ip)), "{stderr}");
    let stats = Snapshot::read(&tb.pin_dir(&dsp)).expect("read pinned stats");
    assert!(stats.get(Counter::PassFragment) >= 3, "{stats:?}");
    assert_eq!(stats.get(Counter::PassUnknownFunction), 1, "{stats:?}");
    assert_eq!(stats.get(Counter::PassNoWorker), 1, "{stats:?}");
}

/// Two-arm egress: requests arrive on eth0 and leave, redirected by XDP
/// through a devmap, on eth1.
#[test]
fn two_arm_egress_redirects_out_of_another_interface() {
    let bin = dispatcher_bin();
    let mut tb = Testbed::new("twoarm");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let worker = tb.add_host("worker", 10);
    tb.add_interface(&dsp, "eth1");
    let config = tb.write_file(
        "dispatcher.toml",
        &format!(
            "[service]\naddresses = [\"{}\"]\n\n[egress]\nredirect_to = \"eth1\"\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\", mac = \"{}\" }}]\n",
            dsp.ip,
            worker.ip,
            worker.mac_string()
        ),
    );
    let _worker_proc = tb.spawn(&worker, "worker", &bin, &["serve", "--listen", &format!("{}:9000", worker.ip), "--functions", "echo"]);
    let mut dispatcher = tb.spawn(&dsp, "dispatcher", &bin, &["run", "--iface", "eth0", "--config", config.to_str().unwrap()]);
    tb.wait_for_udp_port(&worker, 9000, Duration::from_secs(10));
    tb.wait_for_data_plane(&dsp, &mut dispatcher, Duration::from_secs(20));

    let before = tb.exec(&dsp, std::path::Path::new("cat"), &["/sys/class/net/eth1/statistics/tx_packets"]);
    let to = format!("{}:7770", dsp.ip);
    for i in 0..3 {
        let out = tb.exec(&client, &bin, &["invoke", "--to", &to, "1", &format!("two-arm {i}")]);
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), dispatcher.log());
    }
    let stats = Snapshot::read(&tb.pin_dir(&dsp)).expect("read pinned stats");
    assert_eq!(stats.get(Counter::DispatchedRequest), 3, "{stats:?}");
    let after = tb.exec(&dsp, std::path::Path::new("cat"), &["/sys/class/net/eth1/statistics/tx_packets"]);
    let n = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().unwrap_or(0);
    assert!(n(&after) >= n(&before) + 3, "eth1 sent {} -> {}", n(&before), n(&after));
}

/// Speedo's orchestrator in the kernel: a three-step workflow invoked by a
/// client runs step by step, each STEP dispatched by the XDP program, and
/// the last worker answers the client.
#[test]
fn a_three_step_workflow_runs_through_the_kernel() {
    let bin = dispatcher_bin();
    let mut tb = Testbed::new("flow");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let workers = [tb.add_host("w1", 10), tb.add_host("w2", 11), tb.add_host("w3", 12)];
    tb.enable_xdp_tx(&dsp);
    let mut config = format!("[service]\naddresses = [\"{}\"]\n", dsp.ip);
    for (i, w) in workers.iter().enumerate() {
        config += &format!("\n[[functions]]\nid = {}\nworkers = [{{ addr = \"{}:9000\", mac = \"{}\" }}]\n", i + 1, w.ip, w.mac_string());
    }
    config += "\n[[workflows]]\nid = 100\nsteps = [1, 2, 3]\n";
    let config = tb.write_file("dispatcher.toml", &config);
    let service = format!("{}:7770", dsp.ip);
    let _procs: Vec<_> = workers
        .iter()
        .zip(["upper", "reverse", "echo"])
        .map(|(w, f)| tb.spawn(w, &w.role, &bin, &["serve", "--listen", &format!("{}:9000", w.ip), "--functions", f, "--dispatcher", &service]))
        .collect();
    let mut dispatcher = tb.spawn(&dsp, "dispatcher", &bin, &["run", "--iface", "eth0", "--config", config.to_str().unwrap()]);
    for w in &workers {
        tb.wait_for_udp_port(w, 9000, Duration::from_secs(10));
    }
    tb.wait_for_data_plane(&dsp, &mut dispatcher, Duration::from_secs(20));

    let out = tb.exec(&client, &bin, &["invoke", "--to", &service, "100", "hello workflow"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", dispatcher.log());
    // upper, then reverse, then echo.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "WOLFKROW OLLEH");
    assert!(stderr.contains(&format!("RESPONSE from {}:9000", workers[2].ip)), "the last worker answers: {stderr}");
    let stats = Snapshot::read(&tb.pin_dir(&dsp)).expect("read pinned stats");
    assert_eq!(stats.get(Counter::DispatchedWorkflow), 1, "{stats:?}");
    assert_eq!(stats.get(Counter::DispatchedStep), 2, "{stats:?}");
    assert_eq!(stats.get(Counter::PassNotService) + stats.get(Counter::PassFragment), 0, "{stats:?}");
}

/// The data plane outlives its daemon: stopped with --keep-attached, or
/// killed outright, requests keep flowing through XDP, and the next
/// `dispatcher run` adopts the pinned state. A plain SIGTERM detaches.
#[test]
fn the_data_plane_outlives_the_daemon_and_is_adopted() {
    let bin = dispatcher_bin();
    let mut tb = Testbed::new("adopt");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let worker = tb.add_host("worker", 10);
    tb.enable_xdp_tx(&dsp);
    let config = tb.write_file(
        "dispatcher.toml",
        &format!(
            "[service]\naddresses = [\"{}\"]\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\", mac = \"{}\" }}]\n",
            dsp.ip,
            worker.ip,
            worker.mac_string()
        ),
    );
    let config = config.to_str().unwrap().to_string();
    let _worker_proc = tb.spawn(&worker, "worker", &bin, &["serve", "--listen", &format!("{}:9000", worker.ip), "--functions", "echo"]);
    tb.wait_for_udp_port(&worker, 9000, Duration::from_secs(10));
    let to = format!("{}:7770", dsp.ip);
    let dispatched = || Snapshot::read(&tb.pin_dir(&dsp)).expect("pinned stats").get(Counter::DispatchedRequest);
    let invoke_ok = |what: &str| {
        let out = tb.exec(&client, &bin, &["invoke", "--to", &to, "1", what]);
        assert!(out.status.success(), "{what}: {}\n{}", String::from_utf8_lossy(&out.stderr), tb.logs());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), what);
    };

    // 1. Stopped with --keep-attached: still dispatching in the kernel.
    let mut first = tb.spawn(&dsp, "first", &bin, &["run", "--iface", "eth0", "--config", &config, "--keep-attached"]);
    tb.wait_for_data_plane(&dsp, &mut first, Duration::from_secs(20));
    invoke_ok("before");
    assert!(first.stop(), "{}", first.log());
    invoke_ok("no daemon");
    assert_eq!(dispatched(), 2);

    // 2. A second daemon adopts it (counters continue), and a second one at
    //    the same time is refused.
    let mut second = tb.spawn(&dsp, "second", &bin, &["run", "--iface", "eth0", "--config", &config]);
    tb.wait_for_udp_port(&dsp, 7770, Duration::from_secs(20));
    assert!(second.log().contains("adopted"), "{}", second.log());
    let out = tb.exec(&dsp, &bin, &["run", "--iface", "eth0", "--config", &config]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another `dispatcher run` manages"), "{}", String::from_utf8_lossy(&out.stderr));
    invoke_ok("adopted");
    assert_eq!(dispatched(), 3);

    // 3. Killed outright: still dispatching.
    let pid = second.pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    invoke_ok("after kill -9");
    assert_eq!(dispatched(), 4);

    // 4. Adopted again, then a plain SIGTERM detaches and removes the pins.
    let mut third = tb.spawn(&dsp, "third", &bin, &["run", "--iface", "eth0", "--config", &config]);
    tb.wait_for_udp_port(&dsp, 7770, Duration::from_secs(20));
    invoke_ok("third");
    assert!(third.stop(), "{}", third.log());
    assert!(!tb.pin_dir(&dsp).exists(), "pins left after SIGTERM");
    let link = tb.exec(&dsp, std::path::Path::new("ip"), &["link", "show", "eth0"]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "XDP still attached");
}
