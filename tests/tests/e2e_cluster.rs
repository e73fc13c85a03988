//! Cluster mode end to end, against a real etcd: dispatchers that share
//! one membership, workers that register themselves, and the faults a
//! cluster lives through (a worker killed, etcd killed, a dispatcher cut
//! off from etcd, a dispatcher that joins late).
//!
//! Needs root: run through `cargo xtask test`.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use dispatcher::{cluster, control::inspect::WorkerState};
use tests::{bed::assert_nothing_lost, cluster::ClusterBed};

/// Which worker answered `n` requests through dispatcher `i`.
fn answered_by(bed: &ClusterBed, i: usize, function: u32, n: usize) -> BTreeSet<SocketAddr> {
    (0..n)
        .map(|k| {
            let a = bed.invoke_via(i, function, 0, &format!("r{k}"));
            assert_eq!(
                a.code,
                Some(0),
                "via dsp{}: {a:?}\n{}",
                i + 1,
                bed.tb.logs()
            );
            a.from().expect("who answered")
        })
        .collect()
}

#[test]
fn dispatchers_share_one_membership_and_ride_out_faults() {
    let bed = ClusterBed::new("cluster", 3, 3);
    let (a1, a2, a3) = (
        bed.workers[0].worker_addr(),
        bed.workers[1].worker_addr(),
        bed.workers[2].worker_addr(),
    );
    // The operator declares function 2 with the hash policy; function 1
    // comes into being when its first worker registers.
    bed.cluster_ok(&["functions", "add", "2", "--policy", "hash"]);
    let bad = bed.cluster_cli(&["workflows", "add", "100", "--steps", "1,9"]);
    assert!(
        !bad.ok && bad.stderr.contains("function 1, which does not exist"),
        "{bad:?}"
    );
    let _d1 = bed.start_dispatcher(0, &[]);
    let _d2 = bed.start_dispatcher(1, &[]);

    // A worker registered on one host is used by every dispatcher.
    let mut w1 = bed.register(0, "1=echo,2=echo", &[]);
    let mut w2 = bed.register(1, "1=echo,2=echo", &["--lease-ttl", "2"]);
    let both = [(1, a1), (1, a2), (2, a1), (2, a2)];
    bed.wait_for_members(&[0, 1], &both, Duration::from_secs(10));
    for i in [0, 1] {
        assert_eq!(
            answered_by(&bed, i, 1, 6),
            BTreeSet::from([a1, a2]),
            "dsp{} uses both workers",
            i + 1
        );
    }

    // A cluster's maps are changed through etcd: the local CLI refuses,
    // since the next membership change would undo it.
    let local = bed.cli(
        0,
        &[
            "workers",
            "rm",
            "--function",
            "1",
            "--addr",
            &a1.to_string(),
        ],
    );
    assert!(
        !local.ok
            && local
                .stderr
                .contains("follows a cluster's membership in etcd"),
        "{local:?}"
    );
    assert!(bed.cli(0, &["workers", "list"]).ok, "reading stays allowed");

    // Heartbeats reach every registered dispatcher: well past the health
    // grace period (1 s), both still hold both workers up.
    std::thread::sleep(Duration::from_millis(1500));
    for i in [0, 1] {
        for w in bed.workers_on(i) {
            assert_eq!(w.state, WorkerState::Up, "dsp{}: {w:?}", i + 1);
        }
    }

    // The same affinity key lands on the same worker through either
    // dispatcher (the tables are a function of the membership alone).
    for key in 1..=20u64 {
        let via: Vec<_> = [0, 1]
            .iter()
            .map(|i| bed.invoke_via(*i, 2, key, "k").from())
            .collect();
        assert!(via[0].is_some() && via[0] == via[1], "key {key}: {via:?}");
    }

    // A worker killed outright: once its lease expires no dispatcher has
    // it, and every request is answered by the other.
    w2.kill_hard();
    bed.wait_for_members(&[0, 1], &[(1, a1), (2, a1)], Duration::from_secs(10));
    for i in [0, 1] {
        assert_eq!(answered_by(&bed, i, 1, 4), BTreeSet::from([a1]));
    }

    // etcd killed: nothing on the request path notices; the CLI says what
    // is wrong, the metrics too. Back, and a new worker reaches every
    // dispatcher.
    assert_eq!(bed.metric(0, "dispatcher_etcd_connected"), Some(1.0));
    assert!(bed.metric(0, "dispatcher_membership_revision").unwrap() > 0.0);
    bed.kill_etcd();
    for i in [0, 1] {
        assert_eq!(answered_by(&bed, i, 1, 4), BTreeSet::from([a1]));
    }
    let down = bed.cluster_cli(&["functions", "list"]);
    assert!(
        !down.ok && down.stderr.contains("cannot reach etcd"),
        "{down:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(bed.members_on(0), vec![(1, a1), (2, a1)], "nothing flushed");
    assert_eq!(bed.metric(0, "dispatcher_etcd_connected"), Some(0.0));
    bed.start_etcd();
    let _w3 = bed.register(2, "1=echo", &[]);
    bed.wait_for_members(
        &[0, 1],
        &[(1, a1), (1, a3), (2, a1)],
        Duration::from_secs(15),
    );

    // A dispatcher cut off from etcd alone keeps serving what it has, and
    // catches up once it reaches etcd again.
    bed.cut_from_etcd(1, true);
    bed.cluster_ok(&[
        "workers",
        "add",
        "--function",
        "2",
        "--addr",
        &a3.to_string(),
        "--mac",
        &bed.workers[2].mac_string(),
    ]);
    bed.wait_for_members(
        &[0],
        &[(1, a1), (1, a3), (2, a1), (2, a3)],
        Duration::from_secs(10),
    );
    assert_eq!(
        bed.members_on(1),
        vec![(1, a1), (1, a3), (2, a1)],
        "cut off: the old state, untouched"
    );
    assert_eq!(answered_by(&bed, 1, 1, 6), BTreeSet::from([a1, a3]));
    bed.cut_from_etcd(1, false);
    bed.wait_for_members(
        &[0, 1],
        &[(1, a1), (1, a3), (2, a1), (2, a3)],
        Duration::from_secs(15),
    );

    // A dispatcher that joins late reads the same membership and makes
    // the same decisions.
    let _d3 = bed.start_dispatcher(2, &[]);
    bed.wait_for_members(
        &[0, 1, 2],
        &[(1, a1), (1, a3), (2, a1), (2, a3)],
        Duration::from_secs(10),
    );
    for key in 1..=20u64 {
        let via: Vec<_> = [0, 1, 2]
            .iter()
            .map(|i| bed.invoke_via(*i, 2, key, "k").from())
            .collect();
        assert!(
            via[0].is_some() && via.iter().all(|v| *v == via[0]),
            "key {key}: {via:?}"
        );
    }

    // cluster status: three dispatchers, none behind; the workers with
    // their leases (the operator's entry has none).
    let status: cluster::Status =
        serde_json::from_str(&bed.cluster_ok(&["cluster", "status", "--json"])).unwrap();
    assert_eq!(status.dispatchers.len(), 3, "{status:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: cluster::Status =
            serde_json::from_str(&bed.cluster_ok(&["cluster", "status", "--json"])).unwrap();
        if status.dispatchers.iter().all(|d| d.lag == 0) {
            let operator = status
                .workers
                .iter()
                .find(|w| w.function == 2 && w.addr == a3)
                .expect("listed");
            assert_eq!(operator.lease_left_s, None);
            assert!(status
                .workers
                .iter()
                .filter(|w| w.addr == a1)
                .all(|w| w.lease_left_s.is_some_and(|s| s > 0)));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a dispatcher stays behind: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A worker stopped gracefully drains, then deregisters: every
    // dispatcher drops it, with nothing lost meanwhile.
    assert!(w1.stop(), "{}", w1.log());
    assert!(w1.log().contains("deregistered"), "{}", w1.log());
    bed.wait_for_members(&[0, 1, 2], &[(1, a3), (2, a3)], Duration::from_secs(10));
    for i in [0, 1, 2] {
        assert_eq!(answered_by(&bed, i, 1, 3), BTreeSet::from([a3]));
    }
}

/// etcd is not on the request path: under steady load, etcd stopped for
/// 10 s and restarted loses nothing; one dispatcher cut off from etcd for
/// 10 s while the membership changes keeps answering every request, and
/// catches up once it reaches etcd again.
#[test]
fn etcd_failures_under_load_lose_no_request() {
    let bed = ClusterBed::new("clload", 2, 3);
    let (a1, a2, a3) = (
        bed.workers[0].worker_addr(),
        bed.workers[1].worker_addr(),
        bed.workers[2].worker_addr(),
    );
    let _d1 = bed.start_dispatcher(0, &[]);
    let _d2 = bed.start_dispatcher(1, &[]);
    let _w1 = bed.register(0, "1=echo", &[]);
    let _w2 = bed.register(1, "1=echo", &[]);
    bed.wait_for_members(&[0, 1], &[(1, a1), (1, a2)], Duration::from_secs(10));

    let (report, ()) = bed.under_load(0, 500, 13.0, || {
        bed.kill_etcd();
        std::thread::sleep(Duration::from_secs(10));
        bed.start_etcd();
    });
    assert_nothing_lost(&report, "etcd stopped for 10 s");

    // dsp2 cut off; meanwhile w3 registers and the operator removes w2's
    // key (w2 keeps serving, so what dsp2 still sends it is answered).
    let (report, _w3) = bed.under_load(1, 500, 13.0, || {
        bed.cut_from_etcd(1, true);
        let w3 = bed.register(2, "1=echo", &[]);
        bed.cluster_ok(&[
            "workers",
            "rm",
            "--function",
            "1",
            "--addr",
            &a2.to_string(),
        ]);
        bed.wait_for_members(&[0], &[(1, a1), (1, a3)], Duration::from_secs(10));
        assert_eq!(
            bed.members_on(1),
            vec![(1, a1), (1, a2)],
            "cut off: unchanged"
        );
        std::thread::sleep(Duration::from_secs(8));
        bed.cut_from_etcd(1, false);
        bed.wait_for_members(&[0, 1], &[(1, a1), (1, a3)], Duration::from_secs(15));
        w3
    });
    assert_nothing_lost(&report, "a dispatcher cut off from etcd");
}

/// Three dispatchers behind a router's ECMP route to one service address,
/// under steady load from a client behind the router: every dispatcher
/// takes a share; a worker killed with SIGKILL costs only what was sent
/// to it before the dispatchers' health noticed (and no dispatcher sends
/// it anything once its lease expired); a dispatcher host lost (its link
/// down, its route withdrawn) costs only the requests on their way to it.
#[test]
fn ecmp_spreads_over_dispatchers_and_a_lost_host_costs_only_its_requests_in_flight() {
    let bed = ClusterBed::with_router("ecmp", 3, 3);
    let addrs: Vec<SocketAddr> = bed.workers.iter().map(|w| w.worker_addr()).collect();
    let dispatchers = bed
        .dispatchers
        .iter()
        .enumerate()
        .map(|(i, _)| bed.start_dispatcher(i, &[]))
        .collect::<Vec<_>>();
    let workers: Vec<_> = (0..3)
        .map(|w| bed.register(w, "1=echo", &["--lease-ttl", "2"]))
        .collect();
    let all: Vec<_> = addrs.iter().map(|a| (1, *a)).collect();
    bed.wait_for_members(&[0, 1, 2], &all, Duration::from_secs(10));

    // Steady load: every dispatcher gets a share, nothing is lost.
    let before: Vec<u64> = (0..3).map(|i| bed.dispatched(i)).collect();
    let (report, ()) = bed.through_router(1000, 2.0, || {});
    assert_nothing_lost(&report, "steady load through ECMP");
    // (32 flows over 3 dispatchers: that one gets none is a 1 in 10^5
    // chance.)
    for (i, before) in before.iter().enumerate() {
        let took = bed.dispatched(i) - before;
        assert!(took > 50, "dsp{} took {took} of 2000 requests", i + 1);
    }

    // A worker killed: lost are only requests already sent to it before
    // health marked it down (down_after_ms = 1000, a third of the load).
    let mut workers = workers;
    let (report, ()) = bed.through_router(1000, 4.0, || {
        workers[2].kill_hard();
        bed.wait_for_members(&[0, 1, 2], &all[..2], Duration::from_secs(10));
    });
    eprintln!(
        "worker killed under 1000 req/s: {} of {} lost, {} ERRORs",
        report.lost, report.sent, report.errors
    );
    assert!(
        report.lost + report.errors <= 600,
        "more lost than a third of 1.5 s of load: {report:?}"
    );

    // A dispatcher host lost: its link down, and 200 ms later (a routing
    // protocol noticing) its route withdrawn. Lost are only the requests
    // hashed to it meanwhile, its share of 200 ms of load; the flows move
    // to the others, which make the same decisions. (The bridge floods
    // frames for the lost host to every port meanwhile: the other
    // dispatchers must pass them, not dispatch them a second time.)
    let lost_host = bed.dispatched(1);
    let counts_before: Vec<u64> = (0..3).map(|i| bed.dispatched(i)).collect();
    let (report, ()) = bed.through_router(1000, 4.0, || {
        std::thread::sleep(Duration::from_millis(500));
        bed.lose_dispatcher_host(1, &[0, 2]);
    });
    eprintln!(
        "dispatcher host lost under 1000 req/s: {} of {} lost, {} ERRORs; dispatched by each: {:?}",
        report.lost,
        report.sent,
        report.errors,
        (0..3)
            .map(|i| bed.dispatched(i) - counts_before[i])
            .collect::<Vec<_>>()
    );
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(
        report.lost > 0 && report.lost <= 150,
        "lost should be the requests sent to the host in its 200 ms gone: {report:?}"
    );
    let took = bed.dispatched(1) - lost_host;
    assert!(
        took < 700,
        "the lost host took {took} of its share: it was not lost"
    );
    drop(dispatchers);
}

/// Only who may, writes membership: etcd with TLS client certificates and
/// roles. A worker writes its own registration and nothing else; a worker
/// without credentials, or with another worker's, is refused, and no
/// dispatcher changes.
#[test]
fn only_who_may_writes_membership() {
    let bed = ClusterBed::with_auth("clauth", 1, 2, &[1]);
    let (a1, a2) = (bed.workers[0].worker_addr(), bed.workers[1].worker_addr());
    bed.cluster_ok(&["functions", "add", "1"]);
    let _d1 = bed.start_dispatcher(0, &[]);
    let _w1 = bed.register(0, "1=echo", &[]);
    bed.wait_for_members(&[0], &[(1, a1)], Duration::from_secs(10));
    assert_eq!(answered_by(&bed, 0, 1, 2), BTreeSet::from([a1]));

    // w2 with w1's certificate: w1's role does not cover w2's key.
    let borrowed = bed.identity("worker-w1");
    let borrowed: Vec<&str> = borrowed.iter().map(String::as_str).collect();
    let mut w2 = bed.register_as(1, "w2-borrowed", "1=echo", &borrowed);
    w2.wait_for_log("permission denied", 1, Duration::from_secs(10));
    w2.kill_hard();
    // w2 with no certificate at all: etcd refuses the connection.
    let ca = bed.identity("worker-w2")[..2].to_vec();
    let ca: Vec<&str> = ca.iter().map(String::as_str).collect();
    let anonymous = bed.register_as(1, "w2-anonymous", "1=echo", &ca);
    anonymous.wait_for_log("registration failed", 1, Duration::from_secs(10));
    // A worker's certificate cannot change functions, nor the dispatchers'.
    let as_worker = bed.cluster_cli_as("worker-w1", &["functions", "add", "7"]);
    assert!(
        !as_worker.ok && as_worker.stderr.contains("permission denied"),
        "{as_worker:?}"
    );
    let as_dispatcher = bed.cluster_cli_as(
        "dispatcher",
        &[
            "workers",
            "rm",
            "--function",
            "1",
            "--addr",
            &a1.to_string(),
        ],
    );
    assert!(!as_dispatcher.ok, "{as_dispatcher:?}");
    // Nothing changed anywhere.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bed.members_on(0), vec![(1, a1)]);
    let functions = bed.cluster_ok(&["functions", "list", "--json"]);
    let functions: Vec<cluster::FunctionStatus> = serde_json::from_str(&functions).unwrap();
    assert_eq!(functions.iter().map(|f| f.id).collect::<Vec<_>>(), vec![1]);
    assert!(!bed.members_on(0).contains(&(1, a2)));
}

/// A dispatcher started while etcd is down says so and waits (nothing
/// attached, nothing served empty), and attaches once etcd is back. One
/// that was cut off while etcd compacted the revisions it missed reads the
/// membership afresh instead of failing.
#[test]
fn a_dispatcher_waits_for_etcd_and_reads_afresh_after_compaction() {
    let bed = ClusterBed::new("clwait", 1, 2);
    let (a1, a2) = (bed.workers[0].worker_addr(), bed.workers[1].worker_addr());
    let _w1 = bed.register(0, "1=echo", &[]);
    bed.kill_etcd();
    let mut d1 = bed.spawn_dispatcher(0, &[]);
    d1.wait_for_log(
        "waiting for etcd before attaching",
        1,
        Duration::from_secs(10),
    );
    assert!(
        !bed.bpffs(0).join("dispatcher").join("eth0").exists(),
        "attached before the membership was read"
    );
    bed.start_etcd();
    bed.wait_for_dispatcher(0, &mut d1);
    bed.wait_for_members(&[0], &[(1, a1)], Duration::from_secs(15));

    // Cut off; meanwhile w2 registers and the store is compacted past
    // every revision the dispatcher has not seen.
    let said = d1.log().matches("etcd unreachable").count();
    bed.cut_from_etcd(0, true);
    // Once it knows (within three lease renewals).
    d1.wait_for_log("etcd unreachable", said + 1, Duration::from_secs(30));
    let _w2 = bed.register(1, "1=echo", &[]);
    let revision = |bed: &ClusterBed| -> String {
        let out = bed.etcdctl(&["endpoint", "status", "--write-out=json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl JSON");
        status[0]["Status"]["header"]["revision"].to_string()
    };
    // Once w2's key is in etcd (it registers a moment after it listens).
    let key = format!(
        "{}/{}/workers/1/{a2}",
        cluster::ROOT,
        tests::cluster::CLUSTER
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bed
        .etcdctl(&["get", &key, "--print-value-only"])
        .stdout
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "w2 never registered");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another write, so that the compaction covers the first revision the
    // dispatcher has not seen, whatever it is.
    bed.cluster_ok(&["functions", "add", "1", "--policy", "hash"]);
    let out = bed.etcdctl(&["compact", &revision(&bed)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bed.cut_from_etcd(0, false);
    d1.wait_for_log("reading the membership afresh", 1, Duration::from_secs(20));
    bed.wait_for_members(&[0], &[(1, a1), (1, a2)], Duration::from_secs(15));
    d1.assert_running();
}

/// Workers report their load to every dispatcher, so least-loaded ranks a
/// worker by its own in-flight count whichever dispatcher the requests
/// came through: with a slow worker kept busy through dsp1, dsp2 sends
/// its own requests to the idle one.
#[test]
fn least_loaded_sees_the_load_other_dispatchers_put_on_a_worker() {
    let bed = ClusterBed::new("clload2", 2, 2);
    let (a1, a2) = (bed.workers[0].worker_addr(), bed.workers[1].worker_addr());
    bed.cluster_ok(&["functions", "add", "1", "--policy", "least-loaded"]);
    let _d1 = bed.start_dispatcher(0, &[]);
    let _d2 = bed.start_dispatcher(1, &[]);
    // w1 holds each request 100 ms; w2 answers at once. Both report their
    // in-flight count every 100 ms.
    let _w1 = bed.register(0, "1=echo", &["--delay-us", "100000"]);
    let _w2 = bed.register(1, "1=echo", &[]);
    bed.wait_for_members(&[0, 1], &[(1, a1), (1, a2)], Duration::from_secs(10));
    let (_, picks) = bed.under_load(0, 400, 3.0, || {
        // Let w1's load build up and be reported.
        std::thread::sleep(Duration::from_millis(800));
        (0..20)
            .map(|k| bed.invoke_via(1, 1, 0, &format!("via dsp2 {k}")).from())
            .collect::<Vec<_>>()
    });
    let to_w2 = picks.iter().filter(|p| **p == Some(a2)).count();
    assert!(
        to_w2 >= 18,
        "dsp2 sent {} of 20 to the idle worker: {picks:?}",
        to_w2
    );
}

#[test]
fn a_registered_worker_hosts_every_kind_of_function() {
    let bed = ClusterBed::new("clhost", 1, 1);
    let addr = bed.workers[0].worker_addr();
    let _d1 = bed.start_dispatcher(0, &[]);
    let host = &bed.workers[0];
    let script = tests::testbed::repo_file("examples/functions/http_function.py");
    let _http = bed.tb.spawn(
        host,
        "http-function",
        std::path::Path::new("/usr/bin/python3"),
        &[script.to_str().unwrap(), "--port", "8080"],
    );
    bed.tb
        .wait_for_tcp_port(host, 8080, Duration::from_secs(10));
    let warm = format!(
        "3=warm:/usr/bin/python3 {}",
        tests::testbed::repo_file("examples/functions/wordcount.py").display()
    );
    let _w1 = bed.register(
        0,
        "1=echo",
        &[
            "--function",
            "2=exec:tr a-z A-Z",
            "--function",
            &warm,
            "--function",
            "4=http:http://127.0.0.1:8080/",
            "--run-as",
            "nobody",
        ],
    );
    // One key per function id, whatever its kind.
    bed.wait_for_members(
        &[0],
        &[(1, addr), (2, addr), (3, addr), (4, addr)],
        Duration::from_secs(10),
    );
    let answers: Vec<String> = [(1, "echo"), (2, "exec"), (3, "warm words"), (4, "http")]
        .iter()
        .map(|(f, p)| {
            let a = bed.invoke_via(0, *f, 0, p);
            assert_eq!(a.code, Some(0), "function {f}: {}", a.stderr);
            a.body
        })
        .collect();
    assert_eq!(answers[..2], ["echo", "EXEC"]);
    assert!(answers[2].contains("\"words\": 2"), "{}", answers[2]);
    assert_eq!(answers[3], "ptth");
}
