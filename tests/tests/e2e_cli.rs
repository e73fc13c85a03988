//! The operator's CLI against a running data plane on a namespace testbed:
//! functions, workers (add, drain, rm), workflows, maps dump, each taking
//! effect on the very next request. Needs root: run through
//! `cargo xtask test`.

use std::{collections::HashMap, time::Duration};

use tests::testbed::{config, dispatcher_bin, Host, Testbed};

struct Bed {
    tb: Testbed,
    dsp: Host,
    client: Host,
    bin: std::path::PathBuf,
}

impl Bed {
    /// `dispatcher ARGS` in the dispatcher's namespace: (success, stdout, stderr).
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.tb.exec(&self.dsp, &self.bin, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.cli(args);
        assert!(ok, "dispatcher {args:?} failed: {stderr}");
        stdout
    }

    /// Sends `n` requests for `function`; counts answers by worker address.
    fn invoke(&self, function: u32, n: usize) -> HashMap<String, usize> {
        let mut by = HashMap::new();
        for i in 0..n {
            let out = self.tb.exec(
                &self.client,
                &self.bin,
                &[
                    "invoke",
                    "--to",
                    &format!("{}:7770", self.dsp.ip),
                    &function.to_string(),
                    &format!("r{i}"),
                ],
            );
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "invoke: {stderr}");
            let from = stderr
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_string();
            *by.entry(from).or_default() += 1;
        }
        by
    }
}

#[test]
fn cli_changes_workers_functions_and_workflows_of_a_running_data_plane() {
    let mut tb = Testbed::new("cli");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let w1 = tb.add_host("w1", 10);
    let w2 = tb.add_host("w2", 11);
    tb.enable_xdp_tx(&dsp);
    let conf = tb.write_file("dispatcher.toml", &config(dsp.ip, &[(1, &[&w1])], ""));
    let _workers = [tb.serve(&w1, "echo", &[]), tb.serve(&w2, "echo", &[])];
    let dispatcher = tb.run_dispatcher(&dsp, "dispatcher", &conf, &[]);
    let bin = dispatcher_bin();
    let bed = Bed {
        tb,
        dsp,
        client,
        bin,
    };
    let a1 = format!("{}:9000", w1.ip);
    let a2 = format!("{}:9000", w2.ip);

    assert_eq!(bed.invoke(1, 4), HashMap::from([(a1.clone(), 4)]));

    // Add a second worker: round-robin over both from the next request.
    bed.ok(&[
        "workers",
        "add",
        "--function",
        "1",
        "--addr",
        &a2,
        "--mac",
        &w2.mac_string(),
    ]);
    assert_eq!(
        bed.invoke(1, 4),
        HashMap::from([(a1.clone(), 2), (a2.clone(), 2)])
    );

    let list: serde_json::Value =
        serde_json::from_str(&bed.ok(&["workers", "list", "--function", "1", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "up" && w["packets"].as_u64().unwrap() >= 2),
        "{list}"
    );

    // Drain the first: no new requests to it, and the list says so.
    bed.ok(&["workers", "drain", "--function", "1", "--addr", &a1]);
    assert_eq!(bed.invoke(1, 4), HashMap::from([(a2.clone(), 4)]));
    assert!(bed.ok(&["workers", "list"]).contains("draining"));

    // Remove it; a second removal is a clear error.
    bed.ok(&["workers", "rm", "--function", "1", "--addr", &a1]);
    let (ok, _, stderr) = bed.cli(&["workers", "rm", "--function", "1", "--addr", &a1]);
    assert!(!ok && stderr.contains("has no worker"), "{stderr}");

    // Functions and workflows.
    bed.ok(&["functions", "add", "2", "--policy", "hash"]);
    bed.ok(&[
        "workers",
        "add",
        "--function",
        "2",
        "--addr",
        &a1,
        "--mac",
        &w1.mac_string(),
    ]);
    bed.ok(&["workflows", "add", "100", "--steps", "1,2"]);
    let functions: serde_json::Value =
        serde_json::from_str(&bed.ok(&["functions", "list", "--json"])).unwrap();
    assert_eq!(
        functions
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(functions[1]["policy"], "hash");
    let (ok, _, stderr) = bed.cli(&["workflows", "add", "101", "--steps", "1,7"]);
    assert!(
        !ok && stderr.contains("function 7, which does not exist"),
        "{stderr}"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&bed.ok(&["maps", "dump", "--json"])).unwrap();
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
    let out = bed.tb.exec(
        &bed.client,
        &bed.bin,
        &[
            "invoke",
            "--to",
            &format!("{}:7770", bed.dsp.ip),
            "100",
            "x",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("ERROR 6 from {a2}")) && stderr.contains("--dispatcher"),
        "{stderr}"
    );
    bed.ok(&["workflows", "rm", "100"]);
    bed.ok(&["functions", "rm", "2"]);
    assert!(!bed.ok(&["functions", "list"]).contains("hash"));

    // A function with no worker: the host answers ERROR 2, and the data
    // plane's own log (aya-log, read by the daemon) names the reason.
    bed.ok(&["functions", "add", "3"]);
    for _ in 0..3 {
        let out = bed.tb.exec(
            &bed.client,
            &bed.bin,
            &["invoke", "--to", &format!("{}:7770", bed.dsp.ip), "3", "x"],
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("ERROR 2"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
    let mut tb = Testbed::new("reload");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let w1 = tb.add_host("w1", 10);
    let w2 = tb.add_host("w2", 11);
    tb.enable_xdp_tx(&dsp);
    let vip = dsp.ip;
    let conf = move |workers: &[&Host], extra: &str| config(vip, &[(1, workers)], extra);
    let path = tb.write_file("dispatcher.toml", &conf(&[&w1], ""));
    let _workers = [tb.serve(&w1, "echo", &[]), tb.serve(&w2, "echo", &[])];
    let dispatcher = tb.run_dispatcher(&dsp, "dispatcher", &path, &[]);
    let bin = dispatcher_bin();
    let bed = Bed {
        tb,
        dsp,
        client,
        bin,
    };
    let a1 = format!("{}:9000", w1.ip);
    let a2 = format!("{}:9000", w2.ip);
    assert_eq!(bed.invoke(1, 2), HashMap::from([(a1.clone(), 2)]));

    let hup = |pid: u32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap()
    };
    let wait_for_log = |needle: &str, count: usize| {
        dispatcher.wait_for_log(needle, count, Duration::from_secs(10))
    };

    // Function 1 moves to w2; function 2 appears.
    bed.tb.write_file(
        "dispatcher.toml",
        &conf(&[&w2], "\n[[functions]]\nid = 2\n"),
    );
    hup(dispatcher.pid());
    wait_for_log("configuration reloaded", 1);
    assert_eq!(bed.invoke(1, 2), HashMap::from([(a2.clone(), 2)]));
    assert!(bed
        .ok(&["functions", "list"])
        .lines()
        .any(|l| l.starts_with("2 ")));

    // A broken config: reported, nothing changes.
    bed.tb
        .write_file("dispatcher.toml", "[service]\naddresses = []\n");
    hup(dispatcher.pid());
    wait_for_log("configuration not reloaded", 1);
    assert_eq!(bed.invoke(1, 1), HashMap::from([(a2.clone(), 1)]));

    // `dispatcher reload --config`: function 2 goes, function 1 back to w1.
    let other = bed.tb.write_file("other.toml", &conf(&[&w1], ""));
    bed.ok(&["reload", "--config", other.to_str().unwrap()]);
    assert_eq!(bed.invoke(1, 2), HashMap::from([(a1.clone(), 2)]));
    assert!(!bed
        .ok(&["functions", "list"])
        .lines()
        .any(|l| l.starts_with("2 ")));
}

/// SIGHUP follows every part of the config, not just functions: a new
/// service port (the data plane and the slow path's socket both move), a
/// new service address, and a new `[egress]`.
#[test]
fn sighup_moves_the_service_port_addresses_and_egress() {
    let mut tb = Testbed::new("hupall");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let worker = tb.add_host("worker", 10);
    tb.enable_xdp_tx(&dsp);
    tb.add_interface(&dsp, "eth1");
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
    let base = config(dsp.ip, &[(1, &[&worker])], "");
    let path = tb.write_file("dispatcher.toml", &base);
    let _worker = tb.serve(&worker, "echo", &[]);
    let dispatcher = tb.run_dispatcher(&dsp, "dispatcher", &path, &[]);
    tb.wait_for_udp_port(&dsp, 7770, Duration::from_secs(10));
    let bin = dispatcher_bin();
    let invoke = |to: &str, function: &str| {
        let out = tb.exec(
            &client,
            &bin,
            &["invoke", "--timeout-ms", "500", "--to", to, function, "hup"],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dispatched = || {
        dispatcher::control::stats::Snapshot::read(&tb.pin_dir(&dsp))
            .unwrap()
            .get(dispatcher_common::stats::Counter::DispatchedRequest)
    };
    let hup_and_wait = |count: usize| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dispatcher.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        dispatcher.wait_for_log("configuration reloaded", count, Duration::from_secs(10));
    };
    let old = format!("{}:7770", dsp.ip);
    assert_eq!(invoke(&old, "1").0, Some(0));

    // Port 7771 and a second address.
    let moved = base.replace("port = 7770", "").replace(
        &format!("addresses = [\"{}\"]", dsp.ip),
        &format!("addresses = [\"{}\", \"10.99.0.100\"]\nport = 7771", dsp.ip),
    );
    tb.write_file("dispatcher.toml", &moved);
    hup_and_wait(1);
    tb.wait_for_udp_port(&dsp, 7771, Duration::from_secs(10));
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
        let out = tb.exec(
            &dsp,
            std::path::Path::new("cat"),
            &["/sys/class/net/eth1/statistics/tx_packets"],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    tb.write_file(
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
