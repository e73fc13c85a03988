//! Changes under load, on a namespace testbed: while pktgen offers a steady
//! request rate through the XDP dispatcher, workers are added, drained and
//! removed, the config is reloaded, and the daemon is killed and restarted.
//! Every request must be answered: no change may lose one. Needs root: run
//! through `cargo xtask test`.

use std::{thread, time::Duration};

use tests::{
    bed::{assert_nothing_lost, Bed},
    testbed::{config, dispatcher_bin},
};

#[test]
fn workers_change_and_the_daemon_restarts_without_losing_a_request() {
    let bed = Bed::new("load", 2);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let (w1, w2) = (&workers[0], &workers[1]);
    let conf = bed.write_config(&[(1, &[w1])], "");
    let _workers = [tb.serve(w1, "echo", &[]), tb.serve(w2, "echo", &[])];
    let first = bed.start("first", &conf, &[]);
    let cli = |args: &[&str]| {
        bed.cli_ok(args);
    };
    let a2 = format!("{}:9000", w2.ip);

    // Add, drain, remove, re-add a worker, ten times, under load.
    let (report, ()) = bed.under_load(1000, 3.0, || {
        for _ in 0..10 {
            cli(&[
                "workers",
                "add",
                "--function",
                "1",
                "--addr",
                &a2,
                "--mac",
                &w2.mac_string(),
            ]);
            thread::sleep(Duration::from_millis(50));
            cli(&["workers", "drain", "--function", "1", "--addr", &a2]);
            thread::sleep(Duration::from_millis(50));
            cli(&["workers", "rm", "--function", "1", "--addr", &a2]);
            thread::sleep(Duration::from_millis(50));
        }
    });
    assert_nothing_lost(&report, "worker changes");

    // Reload a config that moves the function to w2, and back.
    let to_w2 = tb.write_file("w2.toml", &config(dsp.ip, &[(1, &[w2])], ""));
    let (report, ()) = bed.under_load(1000, 2.0, || {
        for _ in 0..5 {
            cli(&["reload", "--config", to_w2.to_str().unwrap()]);
            thread::sleep(Duration::from_millis(100));
            cli(&["reload", "--config", conf.to_str().unwrap()]);
            thread::sleep(Duration::from_millis(100));
        }
    });
    assert_nothing_lost(&report, "reloads");

    // Kill the daemon outright and start another, under load: the data
    // plane keeps dispatching, and the new daemon adopts it.
    let pid = first.pid();
    let (report, _second) = bed.under_load(1000, 2.0, || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        thread::sleep(Duration::from_millis(300));
        let second = tb.spawn(
            dsp,
            "second",
            &dispatcher_bin(),
            &["run", "--iface", "eth0", "--config", conf.to_str().unwrap()],
        );
        tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));
        second
    });
    assert_nothing_lost(&report, "daemon killed and restarted");
    drop(first);
}
