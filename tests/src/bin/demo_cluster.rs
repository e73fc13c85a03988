//! `cargo xtask run --cluster`: cluster mode on a namespace testbed. A real
//! etcd; three dispatchers that follow one membership in it, behind a
//! router whose ECMP route spreads a client's flows over them; workers
//! that register themselves. Then a worker killed and a dispatcher host
//! lost while the load goes on, what each cost, and everything removed.

use std::time::Duration;

use tests::cluster::{ClusterBed, VIP};

fn main() {
    println!("== a testbed: etcd, three dispatchers, a router with an ECMP route to {VIP}, a client behind it, three workers");
    let bed = ClusterBed::with_router("demo", 3, 3);
    println!(
        "   etcd at {}; the cluster's service address {VIP} is its `service` key",
        bed.etcd_url()
    );
    let _dispatchers: Vec<_> = (0..3).map(|i| bed.start_dispatcher(i, &[])).collect();
    println!(
        "== three `dispatcher run --etcd {} --cluster test` are up",
        bed.etcd_url()
    );
    let mut workers: Vec<_> = (0..3)
        .map(|w| bed.register(w, "1=echo", &["--lease-ttl", "2"]))
        .collect();
    let all: Vec<_> = bed.workers.iter().map(|w| (1, w.worker_addr())).collect();
    bed.wait_for_members(&[0, 1, 2], &all, Duration::from_secs(10));
    println!("== three workers ran `dispatcher serve --register`; every dispatcher has them:");
    print!("{}", bed.cluster_ok(&["cluster", "status"]));

    let counts = |bed: &ClusterBed| (0..3).map(|i| bed.dispatched(i)).collect::<Vec<_>>();
    let show = |what: &str, before: &[u64], report: &dispatcher::workload::pktgen::Report| {
        let after = counts(&bed);
        let share: Vec<String> = (0..3)
            .map(|i| format!("dsp{} {}", i + 1, after[i] - before[i]))
            .collect();
        println!(
            "   {what}: sent {}, answered {}, lost {}; dispatched by {}",
            report.sent,
            report.answered,
            report.lost,
            share.join(", ")
        );
    };

    println!("== 3 s of pktgen at 1000 req/s over 32 flows from the client, through the router");
    let before = counts(&bed);
    let (report, ()) = bed.through_router(1000, 3.0, || {});
    show("steady", &before, &report);

    println!("== again, and worker 3 is killed (SIGKILL) a moment in: health marks it down, its lease expires");
    let before = counts(&bed);
    let (report, ()) = bed.through_router(1000, 4.0, || {
        workers[2].kill_hard();
        bed.wait_for_members(&[0, 1, 2], &all[..2], Duration::from_secs(10));
    });
    show("a worker killed", &before, &report);

    println!("== again, and dispatcher 2's host is lost: its link down, its route withdrawn 200 ms later");
    let before = counts(&bed);
    let (report, ()) = bed.through_router(1000, 4.0, || {
        std::thread::sleep(Duration::from_millis(500));
        bed.lose_dispatcher_host(1, &[0, 2]);
    });
    show("a dispatcher host lost", &before, &report);
    print!("{}", bed.cluster_ok(&["cluster", "status"]));
    drop(workers.drain(..));
    println!("== done: the testbed's namespaces, processes, etcd and files are removed");
}
