//! Heartbeats and health on a namespace testbed: a worker that stops
//! heartbeating is marked down and gets no new requests; it comes back when
//! heartbeats resume; forged heartbeats change nothing; and under load, a
//! worker whose heartbeats are lost stops getting requests without any
//! request being lost. Needs root: run through `cargo xtask test`.

use std::{collections::HashMap, time::Duration};

use dispatcher::control::inspect::WorkerState;
use tests::{
    bed::{assert_nothing_lost, Bed},
    testbed::config,
};

const KEY: &str = "test-key-0123456789abcdef";

#[test]
fn missed_heartbeats_mark_a_worker_down_and_resumed_ones_up() {
    let bed = Bed::new("health", 3);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let (w1, w2, silent) = (&workers[0], &workers[1], &workers[2]);
    let health = format!("\n[health]\nlisten = \"{}:7771\"\nkey = \"{KEY}\"\nnetworks = [\"10.99.0.0/24\"]\ndown_after_ms = 400\n", dsp.ip);
    let conf = tb.write_file(
        "dispatcher.toml",
        &config(dsp.ip, &[(1, &[w1, w2, silent])], &health),
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
    let _w1 = tb.serve(w1, "echo", &hb);
    let mut w2_proc = tb.serve(w2, "echo", &hb);
    let _w3 = tb.serve(silent, "echo", &[]); // serves, but never heartbeats
    let mut dispatcher = bed.start("dispatcher", &conf, &[]);
    let (a1, a2, a3) = (w1.worker_addr(), w2.worker_addr(), silent.worker_addr());

    // The silent worker is marked down once the grace period passes; the
    // other two share the requests.
    bed.wait_for_worker_state(a3, WorkerState::Down);
    assert_eq!(bed.worker(a1).unwrap().state, WorkerState::Up);
    assert_eq!(
        bed.answers_by_worker(1, 4),
        HashMap::from([(a1, 2), (a2, 2)])
    );

    // w2 stops: down within the interval, and no request goes to it.
    assert!(w2_proc.stop());
    bed.wait_for_worker_state(a2, WorkerState::Down);
    assert_eq!(bed.answers_by_worker(1, 4), HashMap::from([(a1, 4)]));

    // w2 comes back: up again, and in the rotation.
    let _w2_again = tb.serve(w2, "echo", &hb);
    bed.wait_for_worker_state(a2, WorkerState::Up);
    assert_eq!(
        bed.answers_by_worker(1, 4),
        HashMap::from([(a1, 2), (a2, 2)])
    );

    // Forged heartbeats in the silent worker's name, from its own address:
    // under a wrong key, stale, and a replay of one it sent. None may bring
    // it up or move its load.
    let hb_to: std::net::SocketAddr = hb_to.parse().unwrap();
    let from: std::net::SocketAddr = format!("{}:0", silent.ip).parse().unwrap();
    let forged = |key: &str, sent_ns: u64| {
        dispatcher::heartbeat::Heartbeat {
            worker: a3,
            in_flight: 77,
            capacity: 0,
            sent_ns,
        }
        .encode(key.as_bytes())
    };
    let send = |bytes: &[u8]| {
        assert!(
            tb.udp_exchange(silent, from, hb_to, bytes, Duration::from_millis(50))
                .is_none(),
            "heartbeats get no answer"
        );
    };
    let wait_for_log = |needle: &str, count: usize| {
        dispatcher.wait_for_log(needle, count, Duration::from_secs(10))
    };
    let load_of = |addr| bed.worker(addr).expect("the worker is listed").load;
    let load_before = load_of(a3);
    let now = dispatcher::heartbeat::now_ns();
    send(&forged("not-the-key-at-all-000", now));
    wait_for_log("heartbeat with a bad MAC dropped", 1);
    send(&forged(KEY, now - 60_000_000_000));
    wait_for_log("sent too far from this clock", 1);
    assert_eq!(
        bed.worker(a3).unwrap().state,
        WorkerState::Down,
        "a forged heartbeat brought the worker up"
    );
    assert_eq!(
        load_of(a3),
        load_before,
        "a forged heartbeat moved the load"
    );
    // A real one (the key leaked, say) brings it up; replayed after it has
    // gone down again, it changes nothing.
    let genuine = forged(KEY, dispatcher::heartbeat::now_ns());
    send(&genuine);
    bed.wait_for_worker_state(a3, WorkerState::Up);
    bed.wait_for_worker_state(a3, WorkerState::Down);
    let load_down = load_of(a3);
    send(&genuine);
    wait_for_log("not later than the last one accepted (a replay)", 1);
    assert_eq!(
        bed.worker(a3).unwrap().state,
        WorkerState::Down,
        "a refused heartbeat brought the worker up"
    );
    assert_eq!(load_of(a3), load_down, "a refused heartbeat moved the load");
    dispatcher.assert_running();

    // SIGHUP with a new key restarts health with it: the workers, still on
    // the old key, are refused and go down.
    let new_health = health.replace(KEY, "a-brand-new-key-0123456789");
    tb.write_file(
        "dispatcher.toml",
        &config(dsp.ip, &[(1, &[w1, w2, silent])], &new_health),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dispatcher.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    bed.wait_for_worker_state(a1, WorkerState::Down);
    assert_eq!(
        dispatcher.log().matches("health: listening").count(),
        2,
        "{}",
        dispatcher.log()
    );
}

#[test]
fn heartbeat_loss_under_load_loses_no_request() {
    let bed = Bed::new("hbload", 2);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let (w1, w2) = (&workers[0], &workers[1]);
    let health = format!("\n[health]\nlisten = \"{}:7771\"\nkey = \"{KEY}\"\nnetworks = [\"10.99.0.0/24\"]\ndown_after_ms = 300\n", dsp.ip);
    let conf = tb.write_file(
        "dispatcher.toml",
        &config(dsp.ip, &[(1, &[w1, w2])], &health),
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
    let _workers = [tb.serve(w1, "echo", &hb), tb.serve(w2, "echo", &hb)];
    let _dispatcher = bed.start("dispatcher", &conf, &[]);
    let (a1, a2) = (w1.worker_addr(), w2.worker_addr());
    bed.wait_for_worker_state(a2, WorkerState::Up);
    bed.wait_for_worker_state(a1, WorkerState::Up);
    let route = |action: &str| {
        let out = tb.exec(
            w2,
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
    let packets_to = |addr| bed.worker(addr).map_or(0, |w| w.packets);
    let (report, (while_down, up_again)) = bed.under_load(1000, 3.0, || {
        route("add");
        bed.wait_for_worker_state(a2, WorkerState::Down);
        let at_down = packets_to(a2);
        std::thread::sleep(Duration::from_millis(500));
        let while_down = packets_to(a2) - at_down;
        route("del");
        bed.wait_for_worker_state(a2, WorkerState::Up);
        let at_up = packets_to(a2);
        std::thread::sleep(Duration::from_millis(500));
        (while_down, packets_to(a2) - at_up)
    });
    assert_nothing_lost(&report, "heartbeat loss and recovery");
    assert_eq!(while_down, 0, "requests went to a worker marked down");
    assert!(
        up_again > 100,
        "w2 got {up_again} requests in 0.5 s after coming back up"
    );
}
