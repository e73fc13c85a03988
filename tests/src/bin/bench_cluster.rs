//! `cargo xtask bench-cluster`: how fast a membership change in etcd
//! reaches the maps of every dispatcher. A benchmark, not a test.
//!
//! On a namespace testbed: a real etcd, three dispatchers in cluster mode,
//! one real worker. The bench writes worker entries into etcd (as the
//! operator's CLI or a registering worker would) from the client's
//! namespace and polls the three dispatchers' pinned maps.
//!
//! 1. Registration: from the put (its RPC included) until the worker is in
//!    all three dispatchers' maps; removal likewise, until it is gone
//!    from all three.
//! 2. Lease expiry: from etcd's delete event (seen by a watch of the
//!    bench's own, as the dispatchers see it) until the worker is gone
//!    from all three.
//! 3. Churn: puts and deletes of workers across 64 functions at a target
//!    rate for 10 s over 8 connections; then the same while pktgen sends 1000 req/s to a function of its
//!    own through one dispatcher; then how long until all three hold
//!    exactly what etcd holds.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use dispatcher::{
    cluster::{Admin, Etcd, WorkerValue},
    control::inspect,
    data_plane::Maps,
};
use hdrhistogram::Histogram;
use tests::cluster::{ClusterBed, CLUSTER};

const SAMPLES: u64 = 200;
const EXPIRIES: u64 = 10;
const CHURN_RATE: u64 = 1000;
const CHURN_SECONDS: u64 = 10;

fn fake(k: u64) -> SocketAddr {
    format!("10.1.{}.{}:9000", k / 200, k % 200 + 1)
        .parse()
        .unwrap()
}

fn value() -> WorkerValue {
    WorkerValue {
        weight: 1,
        mac: Some("02:00:00:00:00:01".into()),
        state: Default::default(),
    }
}

/// The (function, worker) pairs of one dispatcher's maps.
fn members(maps: &Maps) -> BTreeSet<(u32, SocketAddr)> {
    inspect::workers(maps, None)
        .map(|ws| ws.iter().map(|w| (w.function, w.addr)).collect())
        .unwrap_or_default()
}

/// Polls until `done` holds for every dispatcher's maps; the time it took
/// from `since`.
fn until_all(
    maps: &[Maps],
    since: Instant,
    done: impl Fn(&BTreeSet<(u32, SocketAddr)>) -> bool,
) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if maps.iter().all(|m| done(&members(m))) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "a change did not reach every dispatcher in 30 s"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Parallel streams of changes: one etcd put takes a few ms (its WAL is
/// synced), so one stream of sequential puts tops out at a few hundred a
/// second.
const STREAMS: u64 = 8;

/// Adds and removes workers of functions `base..base + 64` (16 addresses
/// each, from `first_addr`) at `rate` changes a second for `seconds`, over
/// STREAMS connections; the changes made, the time taken, how many left
/// more than 10 ms late, and what is present at the end.
async fn churn(
    etcd: &Etcd,
    base: u32,
    first_addr: u64,
    rate: u64,
    seconds: u64,
) -> (u64, Duration, u64, BTreeSet<(u32, SocketAddr)>) {
    let total = rate * seconds;
    let start = Instant::now();
    let streams = (0..STREAMS).map(|stream| async move {
        let mut admin = Admin::connect(etcd, CLUSTER).await.unwrap();
        let mut present: BTreeSet<(u32, SocketAddr)> = BTreeSet::new();
        let mut late = 0u64;
        // Stream `stream` takes every STREAMS-th change, and its own
        // functions, so that no two streams touch one key.
        for i in (stream..total).step_by(STREAMS as usize) {
            let due = start + Duration::from_micros(i * 1_000_000 / rate);
            match due.checked_duration_since(Instant::now()) {
                Some(wait) => tokio::time::sleep(wait).await,
                None if Instant::now() - due > Duration::from_millis(10) => late += 1,
                None => {}
            }
            let f = base + (i % 64) as u32;
            let addr = fake(first_addr + (i / 64) % 16);
            if present.remove(&(f, addr)) {
                admin.remove_worker(f, addr).await.unwrap();
            } else {
                admin.set_worker(f, addr, value()).await.unwrap();
                present.insert((f, addr));
            }
        }
        (late, present)
    });
    let results = futures::future::join_all(streams).await;
    let elapsed = start.elapsed();
    let late = results.iter().map(|(l, _)| l).sum();
    let present = results.into_iter().flat_map(|(_, p)| p).collect();
    (total, elapsed, late, present)
}

fn row(name: &str, h: &Histogram<u64>) -> String {
    format!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} |",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

fn main() {
    let bed = ClusterBed::new("bcluster", 3, 1);
    let _dispatchers: Vec<_> = (0..3).map(|i| bed.start_dispatcher(i, &[])).collect();
    let real = bed.workers[0].worker_addr();
    let _worker = bed.register(0, "1=echo", &[]);
    bed.wait_for_members(&[0, 1, 2], &[(1, real)], Duration::from_secs(10));
    let pins: Vec<PathBuf> = (0..3)
        .map(|i| bed.bpffs(i).join("dispatcher").join("eth0"))
        .collect();
    let etcd = Etcd {
        endpoints: vec![bed.etcd_url()],
        tls: None,
    };
    let ns = PathBuf::from("/run/netns").join(&bed.client.ns);

    // The etcd side runs on a thread in the client's namespace (etcd is
    // reachable only there); the maps are read through the pins.
    let (registration, removal, expiry, churned) = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(
                std::fs::File::open(&ns).unwrap(),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .expect("enter the client's namespace");
            let maps: Vec<Maps> = pins.iter().map(|p| Maps::from_pins(p).unwrap()).collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = Admin::connect(&etcd, CLUSTER).await.unwrap();
                let mut registration = Histogram::<u64>::new(3).unwrap();
                let mut removal = Histogram::<u64>::new(3).unwrap();
                for k in 0..SAMPLES {
                    let addr = fake(k);
                    let t0 = Instant::now();
                    admin.set_worker(2, addr, value()).await.unwrap();
                    let took = until_all(&maps, t0, |m| m.contains(&(2, addr)));
                    registration.record(took.as_micros() as u64).unwrap();
                    let t0 = Instant::now();
                    admin.remove_worker(2, addr).await.unwrap();
                    let took = until_all(&maps, t0, |m| !m.contains(&(2, addr)));
                    removal.record(took.as_micros() as u64).unwrap();
                }
                let mut expiry = Histogram::<u64>::new(3).unwrap();
                for k in 0..EXPIRIES {
                    let addr = fake(1000 + k);
                    admin.set_worker_leased(3, addr, value(), 1).await.unwrap();
                    until_all(&maps, Instant::now(), |m| m.contains(&(3, addr)));
                    let mut watcher = Admin::connect(&etcd, CLUSTER).await.unwrap();
                    watcher.deleted(3, addr).await.unwrap();
                    let t0 = Instant::now();
                    let took = until_all(&maps, t0, |m| !m.contains(&(3, addr)));
                    expiry.record(took.as_micros() as u64).unwrap();
                }
                // Churn: each change adds or removes one worker of
                // functions 100..164.
                let (total, churn_time, late, present) =
                    churn(&etcd, 100, 2000, CHURN_RATE, CHURN_SECONDS).await;
                let mut expected = present.clone();
                expected.insert((1, real));
                let t0 = Instant::now();
                let converged = until_all(&maps, t0, |m| *m == expected);
                (
                    registration,
                    removal,
                    expiry,
                    (total, churn_time, late, converged),
                )
            })
        })
        .join()
        .unwrap()
    });

    // The churn again, with pktgen through dsp1: is anything lost?
    let (report, ()) = bed.under_load(0, 1000, CHURN_SECONDS as f64, || {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(
                    std::fs::File::open(&ns).unwrap(),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .unwrap();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(churn(&etcd, 200, 3000, CHURN_RATE, CHURN_SECONDS - 1));
            });
        });
    });

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (total, churn_time, late, converged) = churned;
    println!("# bench-cluster: membership changes from etcd to the maps of three dispatchers");
    println!("# {cpus} CPUs shared by etcd, three daemons, the worker and the bench; ms");
    println!();
    println!("| change | samples | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "{}",
        row("worker added (put) -> in all three", &registration)
    );
    println!(
        "{}",
        row("worker removed (delete) -> gone from all three", &removal)
    );
    println!(
        "{}",
        row(
            "lease expired (delete event) -> gone from all three",
            &expiry
        )
    );
    println!();
    println!(
        "churn: {total} changes in {:.2} s over {STREAMS} connections ({:.0}/s of {CHURN_RATE}/s offered, {late} more than 10 ms late); all three matched etcd {:.1} ms after the last",
        churn_time.as_secs_f64(),
        total as f64 / churn_time.as_secs_f64(),
        converged.as_secs_f64() * 1000.0
    );
    println!(
        "churn under pktgen (1000 req/s through dsp1): sent {}, answered {}, errors {}, lost {}",
        report.sent, report.answered, report.errors, report.lost
    );
}
