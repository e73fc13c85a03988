//! A veth whose peer runs no XDP program, as a container's eth0 is (its
//! host side belongs to the CNI): in drv mode every XDP_TX frame would be
//! lost. The default mode chooses skb there and says why; an explicit drv
//! is refused with the fix named; skb works; and with an XDP program on
//! the peer the default is drv again.
//!
//! Needs root: run through `cargo xtask test`.

use std::{path::Path, time::Duration};

use dispatcher_common::stats::Counter;
use tests::{
    bed::Bed,
    testbed::{config, dispatcher_bin},
};

/// Three requests from `client` to function 1 over IPv4 and two to
/// function 2 at `to6`, all answered by the worker; returns how many were
/// dispatched by XDP.
fn requests_are_answered(bed: &Bed, to6: &str, case: &str) -> u64 {
    let before = bed.stats().get(Counter::DispatchedRequest);
    let mut targets = vec![(bed.service(), "1"); 3];
    targets.extend([(to6.to_string(), "2"), (to6.to_string(), "2")]);
    for (i, (to, function)) in targets.iter().enumerate() {
        let out = bed.exec(
            &bed.client,
            &dispatcher_bin(),
            &["invoke", "--to", to, function, &format!("veth {i}")],
        );
        assert!(
            out.status.success(),
            "{case}: request {i} to {to} not answered: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            bed.logs()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("veth {i}"),
            "{case}"
        );
    }
    bed.stats().get(Counter::DispatchedRequest) - before
}

#[test]
fn a_veth_whose_peer_runs_no_xdp_gets_skb_mode_and_drv_is_refused() {
    let bed = Bed::with_plain_peer("veth", 1);
    let Bed {
        tb, dsp, workers, ..
    } = &bed;
    let worker = &workers[0];
    let (dsp6, worker6) = bed.add_ipv6();
    // Deliberately no `enable_xdp_tx(dsp)`: the peer runs nothing.
    let conf = config(dsp.ip, &[], "");
    let conf = conf.replace(
        &format!("addresses = [\"{}\"]", dsp.ip),
        &format!(
            "addresses = [\"{}\", \"{dsp6}\"]\n\n[[functions]]\nid = 1\nworkers = [{{ addr = \"{}:9000\", mac = \"{m}\" }}]\n\n[[functions]]\nid = 2\nworkers = [{{ addr = \"[{worker6}]:9000\", mac = \"{m}\" }}]",
            dsp.ip,
            worker.ip,
            m = worker.mac_string()
        ),
    );
    let conf = tb.write_file("dispatcher.toml", &conf);
    let _worker = tb.serve(worker, "echo", &[]);
    let _worker6 = tb.serve_ipv6(worker, worker6, "echo", &[]);
    let to6 = format!("[{dsp6}]:7770");

    // The default: skb, with the reason in the log; every request answered.
    let mut dispatcher = bed.start("default", &conf, &[]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));
    assert_eq!(
        bed.xdp_mode(),
        "skb",
        "{}\n{}",
        String::from_utf8_lossy(
            &tb.exec(dsp, Path::new("ip"), &["link", "show", "eth0"])
                .stdout
        ),
        dispatcher.log()
    );
    assert!(
        dispatcher
            .log()
            .contains("veth whose peer runs no XDP program: skb mode"),
        "{}",
        dispatcher.log()
    );
    assert_eq!(
        requests_are_answered(&bed, &to6, "default mode"),
        5,
        "all through XDP"
    );
    assert!(dispatcher.stop(), "{}", dispatcher.log());

    // An explicit drv: refused, the fix named, nothing left behind.
    let stderr = bed.run_refused(&conf, &["--mode", "drv"]);
    assert!(
        stderr.contains("runs no XDP program")
            && stderr.contains("--mode skb")
            && stderr.contains("xdpdrv"),
        "{stderr}"
    );

    // An explicit skb: works.
    let mut dispatcher = bed.start("skb", &conf, &["--mode", "skb"]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));
    assert_eq!(bed.xdp_mode(), "skb");
    assert_eq!(requests_are_answered(&bed, &to6, "skb mode"), 5);
    assert!(dispatcher.stop(), "{}", dispatcher.log());

    // With an XDP program on the peer (found in the switch's namespace by
    // its namespace id), the default is drv, and drv works.
    tb.enable_xdp_tx(dsp);
    let mut dispatcher = bed.start("drv", &conf, &[]);
    tb.wait_for_udp_port(dsp, 7770, Duration::from_secs(10));
    assert_eq!(bed.xdp_mode(), "drv", "{}", dispatcher.log());
    assert!(
        dispatcher
            .log()
            .contains("peer runs an XDP program in driver mode"),
        "{}",
        dispatcher.log()
    );
    assert_eq!(requests_are_answered(&bed, &to6, "drv mode"), 5);
    assert!(dispatcher.stop(), "{}", dispatcher.log());
    let mut dispatcher = bed.start("drv-explicit", &conf, &["--mode", "drv"]);
    assert_eq!(bed.xdp_mode(), "drv", "{}", dispatcher.log());
    assert!(dispatcher.stop(), "{}", dispatcher.log());
}
