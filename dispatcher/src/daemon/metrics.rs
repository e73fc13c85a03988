//! The Prometheus endpoint (`[metrics] listen`): at every scrape, the data
//! plane's statistics maps and what the daemon's own tasks counted (the slow
//! path's ERROR answers, the health listener's heartbeats) are read into one
//! snapshot and encoded by `prometheus-client` in the Prometheus text
//! format. Names follow Prometheus conventions (`dispatcher_` prefix, base
//! units, `_total` counters); docs/operations.md lists them, and the shipped
//! dashboard and alert rules (packaging/) use them.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Instant,
};

use anyhow::{anyhow, Context as _, Result};
use dispatcher_common::{maps::TABLE_CHUNK, protocol::error_code, stats::Counter};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use tracing::{info, warn};

use crate::{
    control::{inspect, inspect::WorkerState},
    daemon::{health, membership::Status},
    data_plane::Maps,
};

/// What the daemon's tasks count outside the maps, for the scrape to read.
/// One per daemon; the slow path and the health listener write into it.
#[derive(Default)]
pub struct Telemetry {
    /// ERRORs the slow path sent, by (code, function). The function is
    /// kept only for codes that name a configured function (2: no up
    /// worker, 7: overloaded), so that a stranger's made-up function ids
    /// cannot grow the label set.
    errors_sent: Mutex<BTreeMap<(u16, Option<u32>), u64>>,
    heartbeats: Mutex<Heartbeats>,
}

#[derive(Default)]
struct Heartbeats {
    /// Health checking runs (`[health]`): the heartbeat metrics are shown.
    on: bool,
    counters: health::Counters,
    last_accepted: HashMap<SocketAddr, Instant>,
}

impl Telemetry {
    /// The slow path answered ERROR `code` to a request for `function`.
    pub fn error_sent(&self, code: u16, function: u32) {
        let function =
            matches!(code, error_code::NO_UP_WORKER | error_code::OVERLOADED).then_some(function);
        *self
            .errors_sent
            .lock()
            .expect("not poisoned")
            .entry((code, function))
            .or_default() += 1;
    }

    /// The health listener's counters after a datagram (and the worker
    /// whose heartbeat it accepted, if it did) or after a sweep (None).
    pub fn heartbeat(&self, counters: &health::Counters, accepted_from: Option<SocketAddr>) {
        let mut h = self.heartbeats.lock().expect("not poisoned");
        h.on = true;
        h.counters = counters.clone();
        match accepted_from {
            Some(worker) => {
                h.last_accepted.insert(worker, Instant::now());
            }
            // A sweep: forget workers silent for an hour (gone, in a
            // cluster whose workers come and go), or the table only grows.
            None => h
                .last_accepted
                .retain(|_, t| t.elapsed() < std::time::Duration::from_secs(3600)),
        }
    }

    /// The health listener's counters as last reported: where a listener
    /// restarted by a SIGHUP starts counting, so the counters stay
    /// monotonic for Prometheus.
    pub fn heartbeat_counters(&self) -> health::Counters {
        self.heartbeats
            .lock()
            .expect("not poisoned")
            .counters
            .clone()
    }
}

/// The name operators read for an ERROR code (PROTOCOL.md).
fn error_reason(code: u16) -> &'static str {
    match code {
        error_code::UNKNOWN_FUNCTION => "unknown_function",
        error_code::NO_UP_WORKER => "no_up_worker",
        error_code::UNSUPPORTED_VERSION => "unsupported_version",
        error_code::MALFORMED_REQUEST => "malformed_request",
        error_code::PAYLOAD_TOO_LARGE => "payload_too_large",
        error_code::WORKER_FAILURE => "worker_failure",
        error_code::OVERLOADED => "overloaded",
        _ => "other",
    }
}

/// Everything one scrape reports, read before any of it is encoded (so a
/// map that cannot be read is a 500 with the reason, not half a page).
#[derive(Debug)]
struct Snapshot {
    counters: Vec<(Counter, u64)>,
    functions: Vec<inspect::FunctionInfo>,
    workers: Vec<inspect::WorkerInfo>,
    workflows: usize,
    geometry: dispatcher_common::maps::Geometry,
    errors_sent: Vec<((u16, Option<u32>), u64)>,
    heartbeat_counters: Option<health::Counters>,
    heartbeat_age: Vec<(SocketAddr, f64)>,
    cluster: Option<(bool, i64)>,
}

impl Snapshot {
    fn read(maps: &Maps, telemetry: &Telemetry, cluster: Option<&Status>) -> Result<Snapshot> {
        // The maps first, without holding the health listener's lock.
        let counters = maps.counters()?;
        let functions = inspect::functions(maps)?;
        let workers = inspect::workers(maps, None)?;
        let workflows = inspect::workflows(maps)?.len();
        let geometry = maps.geometry()?;
        let errors_sent = telemetry
            .errors_sent
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        // Ages only for workers still in the maps: a removed worker's age
        // would grow forever and page someone.
        let placed: std::collections::HashSet<SocketAddr> =
            workers.iter().map(|w| w.addr).collect();
        let heartbeats = telemetry.heartbeats.lock().expect("not poisoned");
        let heartbeat_counters = heartbeats.on.then(|| heartbeats.counters.clone());
        let heartbeat_age = heartbeats
            .last_accepted
            .iter()
            .filter(|(w, _)| placed.contains(*w))
            .map(|(w, t)| (*w, t.elapsed().as_secs_f64()))
            .collect();
        drop(heartbeats);
        Ok(Snapshot {
            counters,
            functions,
            workers,
            workflows,
            geometry,
            errors_sent,
            heartbeat_counters,
            heartbeat_age,
            cluster: cluster.map(|s| {
                (
                    s.connected.load(Ordering::Relaxed),
                    s.applied.load(Ordering::Relaxed),
                )
            }),
        })
    }
}

/// One metric family: its descriptor, then a sample per label set.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in samples {
        sample(metric.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

fn sample(mut m: MetricEncoder, kind: MetricType, value: f64) -> Result<(), std::fmt::Error> {
    // Counts are whole numbers: written as integers (`5`, not `5.0`), so
    // that they read the same as `dispatcher stats` prints them.
    let whole = value.fract() == 0.0 && (0.0..9.0e15).contains(&value);
    match (kind, whole) {
        (MetricType::Counter, true) => {
            m.encode_counter::<NoLabelSet, _, f64>(&(value as u64), None)
        }
        (MetricType::Counter, false) => m.encode_counter::<NoLabelSet, _, f64>(&value, None),
        (_, true) => m.encode_gauge(&(value as u64)),
        (_, false) => m.encode_gauge(&value),
    }
}

type Labels = Vec<(&'static str, String)>;

fn function_label(id: u32) -> Labels {
    vec![("function", id.to_string())]
}

fn worker_labels(w: &inspect::WorkerInfo) -> Labels {
    vec![
        ("function", w.function.to_string()),
        ("worker", w.addr.to_string()),
    ]
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter as C, Gauge as G};
        family(
            &mut e,
            "dispatcher_build_info",
            "The dispatcher's version (always 1)",
            None,
            G,
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        )?;
        if let Some((connected, revision)) = self.cluster {
            family(&mut e, "dispatcher_etcd_connected",
                "1 while the dispatcher follows the cluster's membership in etcd; 0 while etcd is unreachable (the last membership keeps serving)",
                None, G, [(Labels::new(), connected as u8 as f64)])?;
            family(
                &mut e,
                "dispatcher_membership_revision",
                "The etcd revision of the cluster membership applied to the maps",
                None,
                G,
                [(Labels::new(), revision as f64)],
            )?;
        }
        family(&mut e, "dispatcher_packets",
            "Packets the XDP data plane handled, by outcome: dispatched_* and resteered (BUSY re-steers) were dispatched in the kernel, pass_* went to the host stack, drop_* were dropped",
            None, C,
            self.counters.iter().map(|(c, n)| (vec![("outcome", c.name().to_string())], *n as f64)))?;
        family(
            &mut e,
            "dispatcher_errors_sent",
            "ERROR answers the daemon's slow path sent for requests the data plane could not dispatch, by ERROR code",
            None,
            C,
            self.errors_sent.iter().fold(
                BTreeMap::<u16, u64>::new(),
                |mut by_code, ((code, _), n)| {
                    *by_code.entry(*code).or_default() += n;
                    by_code
                },
            ).into_iter().map(|(code, n)| {
                (vec![("code", code.to_string()), ("reason", error_reason(code).to_string())], n as f64)
            }),
        )?;
        family(
            &mut e,
            "dispatcher_function_errors_sent",
            "ERROR answers for a function's requests: no_up_worker (2) and overloaded (7, every worker BUSY)",
            None,
            C,
            self.errors_sent.iter().filter_map(|((code, f), n)| {
                f.map(|f| {
                    let mut l = function_label(f);
                    l.push(("code", code.to_string()));
                    l.push(("reason", error_reason(*code).to_string()));
                    (l, *n as f64)
                })
            }),
        )?;
        family(
            &mut e,
            "dispatcher_function_packets",
            "Requests (and workflow steps, and re-steered BUSYs) the data plane dispatched to a function's workers",
            None,
            C,
            self.functions.iter().map(|f| (function_label(f.id), f.packets as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_function",
            "Bytes the data plane dispatched to a function's workers",
            Some(&Unit::Bytes),
            C,
            self.functions
                .iter()
                .map(|f| (function_label(f.id), f.bytes as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_function_workers",
            "Workers placed for a function, in any state",
            None,
            G,
            self.functions
                .iter()
                .map(|f| (function_label(f.id), f.workers as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_function_up_workers",
            "Workers of a function that get new requests",
            None,
            G,
            self.functions
                .iter()
                .map(|f| (function_label(f.id), f.up as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_worker_packets",
            "Requests the data plane dispatched to a worker",
            None,
            C,
            self.workers
                .iter()
                .map(|w| (worker_labels(w), w.packets as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_worker",
            "Bytes the data plane dispatched to a worker",
            Some(&Unit::Bytes),
            C,
            self.workers
                .iter()
                .map(|w| (worker_labels(w), w.bytes as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_worker_inflight_requests",
            "A worker's in-flight estimate: its last reported load plus requests sent since (what least-loaded and p2c rank)",
            None,
            G,
            self.workers.iter().map(|w| (worker_labels(w), w.load as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_worker_weight",
            "A worker's weight (its share of round-robin and hash, its capacity for least-loaded)",
            None,
            G,
            self.workers
                .iter()
                .map(|w| (worker_labels(w), w.weight as f64)),
        )?;
        family(
            &mut e,
            "dispatcher_worker_up",
            "1 if the worker gets new requests, 0 if down or draining",
            None,
            G,
            self.workers.iter().map(|w| {
                (
                    worker_labels(w),
                    if w.state == WorkerState::Up { 1.0 } else { 0.0 },
                )
            }),
        )?;
        family(
            &mut e,
            "dispatcher_worker_state",
            "A worker's state: 1 for the state it is in (up, draining, down), 0 for the others",
            None,
            G,
            self.workers.iter().flat_map(|w| {
                [WorkerState::Up, WorkerState::Draining, WorkerState::Down].map(|s| {
                    let mut l = worker_labels(w);
                    l.push(("state", format!("{s:?}").to_lowercase()));
                    (l, (w.state == s) as u8 as f64)
                })
            }),
        )?;
        if let Some(c) = &self.heartbeat_counters {
            family(
                &mut e,
                "dispatcher_heartbeats",
                "Worker heartbeats the health listener received, by result: accepted, or why it was dropped",
                None,
                C,
                [
                    ("accepted", c.accepted),
                    ("dropped_network", c.dropped_network),
                    ("dropped_malformed", c.dropped_malformed),
                    ("dropped_auth", c.dropped_auth),
                    ("dropped_stale_or_replayed", c.dropped_stale_or_replayed),
                    ("unknown_worker", c.unknown_worker),
                ]
                .map(|(result, n)| (vec![("result", result.to_string())], n as f64)),
            )?;
            family(
                &mut e,
                "dispatcher_health_transitions",
                "Workers the health listener marked down (silent for down_after) or back up",
                None,
                C,
                [("down", c.marked_down), ("up", c.marked_up)]
                    .map(|(to, n)| (vec![("to", to.to_string())], n as f64)),
            )?;
        }
        family(
            &mut e,
            "dispatcher_worker_heartbeat_age",
            "Time since the last heartbeat accepted from a worker (health checking on)",
            Some(&Unit::Seconds),
            G,
            self.heartbeat_age
                .iter()
                .map(|(w, age)| (vec![("worker", w.to_string())], *age)),
        )?;
        let g = &self.geometry;
        let hash_slots: u64 = self
            .functions
            .iter()
            .filter(|f| f.entry.policy == dispatcher_common::maps::policy::HASH)
            .map(|f| f.entry.maglev_extent().1 as u64 * TABLE_CHUNK as u64)
            .sum();
        let occupancy = [
            ("functions", self.functions.len() as f64, g.functions as f64),
            ("workflows", self.workflows as f64, g.workflows as f64),
            (
                "maglev_pool_slots",
                hash_slots as f64,
                g.maglev_pool_chunks as f64 * TABLE_CHUNK as f64,
            ),
        ];
        family(
            &mut e,
            "dispatcher_map_entries",
            "Entries in use in a data plane table: function rows, workflows, Maglev pool slots (both generations of every hash function's table)",
            None,
            G,
            occupancy.map(|(m, used, _)| (vec![("map", m.to_string())], used)),
        )?;
        family(
            &mut e,
            "dispatcher_map_capacity_entries",
            "How many entries a data plane table holds (the geometry it was loaded with)",
            None,
            G,
            occupancy.map(|(m, _, cap)| (vec![("map", m.to_string())], cap)),
        )?;
        family(
            &mut e,
            "dispatcher_function_worker_capacity",
            "Worker slots a function may hold (the geometry's workers per function)",
            None,
            G,
            [(Labels::new(), g.workers_per_function as f64)],
        )?;
        Ok(())
    }
}

/// The exposition text for a data plane: Prometheus text format 0.0.4.
pub fn render(maps: &Maps, telemetry: &Telemetry, cluster: Option<&Status>) -> Result<String> {
    let snapshot = Snapshot::read(maps, telemetry, cluster)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .context("cannot encode the metrics")?;
    Ok(out)
}

/// Serves GET /metrics on `listen` from the maps pinned at `pin_dir`, on a
/// thread of its own, until the process ends.
pub fn spawn(
    listen: SocketAddr,
    pin_dir: PathBuf,
    telemetry: Arc<Telemetry>,
    cluster: Option<Arc<Status>>,
) -> Result<()> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow!("metrics.listen: cannot listen on {listen}: {e} (in use, or not an address of this host?)"))?;
    info!(%listen, "metrics: Prometheus text at /metrics");
    std::thread::spawn(move || {
        let maps = match Maps::from_pins(&pin_dir) {
            Ok(m) => m,
            Err(e) => return warn!("metrics: {e:#}"),
        };
        for request in server.incoming_requests() {
            let response = if request.url() != "/metrics" {
                tiny_http::Response::from_string("not found: the metrics are at /metrics\n")
                    .with_status_code(404)
            } else {
                match render(&maps, &telemetry, cluster.as_deref()) {
                    Ok(text) => tiny_http::Response::from_string(text).with_header(
                        "Content-Type: text/plain; version=0.0.4; charset=utf-8"
                            .parse::<tiny_http::Header>()
                            .expect("valid header"),
                    ),
                    Err(e) => {
                        tiny_http::Response::from_string(format!("{e:#}\n")).with_status_code(500)
                    }
                }
            };
            let _ = request.respond(response);
        }
    });
    Ok(())
}
