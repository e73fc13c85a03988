//! Heartbeats and health on a namespace testbed: a worker that stops
//! heartbeating is marked down and gets no new requests; it comes back when
//! heartbeats resume; forged heartbeats change nothing; and under load, a
//! worker whose heartbeats are lost stops getting requests without any
//! request being lost. Needs root: run
//! through `cargo xtask test`.

use std::{collections::HashMap, time::Duration};

use tests::testbed::{assert_nothing_lost, config, dispatcher_bin, under_load, Host, Testbed};

const KEY: &str = "test-key-0123456789abcdef";

fn invoke_counts(tb: &Testbed, client: &Host, dsp: &Host, n: usize) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for i in 0..n {
        let out = tb.exec(
            client,
            &dispatcher_bin(),
            &[
                "invoke",
                "--to",
                &format!("{}:7770", dsp.ip),
                "1",
                &format!("r{i}"),
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "invoke: {stderr}\n{}", tb.logs());
        *by.entry(
            stderr
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_string(),
        )
        .or_default() += 1;
    }
    by
}

fn worker_states(tb: &Testbed, dsp: &Host) -> HashMap<String, String> {
    let out = tb.exec(dsp, &dispatcher_bin(), &["workers", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    list.as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["addr"].as_str().unwrap().to_string(),
                w["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Polls until `addr` has `state` (or panics after 10 s).
fn wait_for_state(tb: &Testbed, dsp: &Host, addr: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if worker_states(tb, dsp).get(addr).map(String::as_str) == Some(state) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{addr} never became {state}: {:?}\n{}",
        worker_states(tb, dsp),
        tb.logs()
    );
}

#[test]
fn missed_heartbeats_mark_a_worker_down_and_resumed_ones_up() {
    let mut tb = Testbed::new("health");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let w1 = tb.add_host("w1", 10);
    let w2 = tb.add_host("w2", 11);
    let silent = tb.add_host("w3", 12);
    tb.enable_xdp_tx(&dsp);
    let health = format!("\n[health]\nlisten = \"{}:7771\"\nkey = \"{KEY}\"\nnetworks = [\"10.99.0.0/24\"]\ndown_after_ms = 400\n", dsp.ip);
    let conf = tb.write_file(
        "dispatcher.toml",
        &config(dsp.ip, &[(1, &[&w1, &w2, &silent])], &health),
    );
    let hb_to = format!("{}:7771", dsp.ip);
    let hb = [
        "--heartbeat-to",
        &hb_to,
        "--heartbeat-key",
        KEY,
        "--heartbeat-ms",
        "50",
    ];
    let _w1 = tb.serve(&w1, "echo", &hb);
    let mut w2_proc = tb.serve(&w2, "echo", &hb);
    let _w3 = tb.serve(&silent, "echo", &[]); // serves, but never heartbeats
    let mut dispatcher = tb.run_dispatcher(&dsp, "dispatcher", &conf, &[]);
    let (a1, a2, a3) = (
        format!("{}:9000", w1.ip),
        format!("{}:9000", w2.ip),
        format!("{}:9000", silent.ip),
    );

    // The silent worker is marked down once the grace period passes; the
    // other two share the requests.
    wait_for_state(&tb, &dsp, &a3, "down");
    assert_eq!(worker_states(&tb, &dsp)[&a1], "up");
    assert_eq!(
        invoke_counts(&tb, &client, &dsp, 4),
        HashMap::from([(a1.clone(), 2), (a2.clone(), 2)])
    );

    // w2 stops: down within the interval, and no request goes to it.
    assert!(w2_proc.stop());
    wait_for_state(&tb, &dsp, &a2, "down");
    assert_eq!(
        invoke_counts(&tb, &client, &dsp, 4),
        HashMap::from([(a1.clone(), 4)])
    );

    // w2 comes back: up again, and in the rotation.
    let _w2_again = tb.serve(&w2, "echo", &hb);
    wait_for_state(&tb, &dsp, &a2, "up");
    assert_eq!(
        invoke_counts(&tb, &client, &dsp, 4),
        HashMap::from([(a1.clone(), 2), (a2.clone(), 2)])
    );

    // Forged heartbeats in the silent worker's name, from its own address:
    // under a wrong key, stale, and a replay of one it sent. None may bring
    // it up or move its load.
    let hb_to: std::net::SocketAddr = hb_to.parse().unwrap();
    let from: std::net::SocketAddr = format!("{}:0", silent.ip).parse().unwrap();
    let forged = |key: &str, sent_ns: u64| {
        dispatcher::heartbeat::Heartbeat {
            worker: a3.parse().unwrap(),
            in_flight: 77,
            capacity: 0,
            sent_ns,
        }
        .encode(key.as_bytes())
    };
    let send = |bytes: &[u8]| {
        assert!(
            tb.udp_exchange(&silent, from, hb_to, bytes, Duration::from_millis(50))
                .is_none(),
            "heartbeats get no answer"
        );
    };
    let wait_for_log = |needle: &str, count: usize| {
        dispatcher.wait_for_log(needle, count, Duration::from_secs(10))
    };
    let load_of = |addr: &str| {
        let out = tb.exec(&dsp, &dispatcher_bin(), &["workers", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        list.as_array()
            .unwrap()
            .iter()
            .find(|w| w["addr"] == addr)
            .map(|w| w["load"].clone())
            .expect("the worker is listed")
    };
    let load_before = load_of(&a3);
    let now = dispatcher::heartbeat::now_ns();
    send(&forged("not-the-key-at-all-000", now));
    wait_for_log("heartbeat with a bad MAC dropped", 1);
    send(&forged(KEY, now - 60_000_000_000));
    wait_for_log("sent too far from this clock", 1);
    assert_eq!(
        worker_states(&tb, &dsp)[&a3],
        "down",
        "a forged heartbeat brought the worker up"
    );
    assert_eq!(
        load_of(&a3),
        load_before,
        "a forged heartbeat moved the load"
    );
    // A real one (the key leaked, say) brings it up; replayed after it has
    // gone down again, it changes nothing.
    let genuine = forged(KEY, dispatcher::heartbeat::now_ns());
    send(&genuine);
    wait_for_state(&tb, &dsp, &a3, "up");
    wait_for_state(&tb, &dsp, &a3, "down");
    let load_down = load_of(&a3);
    send(&genuine);
    wait_for_log("not later than the last one accepted (a replay)", 1);
    assert_eq!(
        worker_states(&tb, &dsp)[&a3],
        "down",
        "a refused heartbeat brought the worker up"
    );
    assert_eq!(
        load_of(&a3),
        load_down,
        "a refused heartbeat moved the load"
    );
    dispatcher.assert_running();

    // SIGHUP with a new key restarts health with it: the workers, still on
    // the old key, are refused and go down.
    let new_health = health.replace(KEY, "a-brand-new-key-0123456789");
    tb.write_file(
        "dispatcher.toml",
        &config(dsp.ip, &[(1, &[&w1, &w2, &silent])], &new_health),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dispatcher.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for_state(&tb, &dsp, &a1, "down");
    assert_eq!(
        dispatcher.log().matches("health: listening").count(),
        2,
        "{}",
        dispatcher.log()
    );
}

/// The packets the data plane has sent to `addr` so far.
fn packets_to(tb: &Testbed, dsp: &Host, addr: &str) -> u64 {
    let out = tb.exec(dsp, &dispatcher_bin(), &["workers", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    list.as_array()
        .unwrap()
        .iter()
        .find(|w| w["addr"] == addr)
        .map_or(0, |w| w["packets"].as_u64().unwrap())
}

#[test]
fn heartbeat_loss_under_load_loses_no_request() {
    let mut tb = Testbed::new("hbload");
    let dsp = tb.add_host("dsp", 1);
    let client = tb.add_host("client", 2);
    let w1 = tb.add_host("w1", 10);
    let w2 = tb.add_host("w2", 11);
    tb.enable_xdp_tx(&dsp);
    let health = format!("\n[health]\nlisten = \"{}:7771\"\nkey = \"{KEY}\"\nnetworks = [\"10.99.0.0/24\"]\ndown_after_ms = 300\n", dsp.ip);
    let conf = tb.write_file(
        "dispatcher.toml",
        &config(dsp.ip, &[(1, &[&w1, &w2])], &health),
    );
    let hb_to = format!("{}:7771", dsp.ip);
    let hb = [
        "--heartbeat-to",
        &hb_to,
        "--heartbeat-key",
        KEY,
        "--heartbeat-ms",
        "50",
    ];
    let _workers = [tb.serve(&w1, "echo", &hb), tb.serve(&w2, "echo", &hb)];
    let _dispatcher = tb.run_dispatcher(&dsp, "dispatcher", &conf, &[]);
    let (a1, a2) = (format!("{}:9000", w1.ip), format!("{}:9000", w2.ip));
    wait_for_state(&tb, &dsp, &a2, "up");
    wait_for_state(&tb, &dsp, &a1, "up");
    let route = |action: &str| {
        let out = tb.exec(
            &w2,
            std::path::Path::new("ip"),
            &["route", action, "blackhole", &format!("{}/32", dsp.ip)],
        );
        assert!(
            out.status.success(),
            "ip route {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // w2's heartbeats (and only they: it answers clients directly) are
    // blackholed, then let through again, while pktgen offers 1000 req/s.
    let (report, (while_down, up_again)) = under_load(&tb, &client, &dsp, 1000, 3.0, || {
        route("add");
        wait_for_state(&tb, &dsp, &a2, "down");
        let at_down = packets_to(&tb, &dsp, &a2);
        std::thread::sleep(Duration::from_millis(500));
        let while_down = packets_to(&tb, &dsp, &a2) - at_down;
        route("del");
        wait_for_state(&tb, &dsp, &a2, "up");
        let at_up = packets_to(&tb, &dsp, &a2);
        std::thread::sleep(Duration::from_millis(500));
        (while_down, packets_to(&tb, &dsp, &a2) - at_up)
    });
    assert_nothing_lost(&report, "heartbeat loss and recovery");
    assert_eq!(while_down, 0, "requests went to a worker marked down");
    assert!(
        up_again > 100,
        "w2 got {up_again} requests in 0.5 s after coming back up"
    );
}
