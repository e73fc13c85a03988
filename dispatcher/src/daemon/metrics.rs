//! A Prometheus text endpoint (`[metrics] listen`), built from the data
//! plane's statistics maps at every scrape: packets by outcome, packets and
//! bytes per function and per worker, worker load and state.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
};

use anyhow::{anyhow, Result};
use tracing::{info, warn};

use crate::{
    control::{inspect, inspect::WorkerState},
    daemon::membership::Status,
    data_plane::Maps,
};

/// Writes one metric family: HELP, TYPE, then a sample per (labels, value).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// The exposition text for a data plane (and, in cluster mode, how it
/// stands with etcd).
pub fn render(maps: &Maps, cluster: Option<&Status>) -> Result<String> {
    let mut out = String::new();
    if let Some(status) = cluster {
        family(
            &mut out,
            "dispatcher_etcd_connected",
            "gauge",
            "1 while the dispatcher follows the cluster's membership in etcd; 0 while etcd is unreachable (the last membership keeps serving).",
            [(String::new(), status.connected.load(Ordering::Relaxed) as u8 as f64)],
        );
        family(
            &mut out,
            "dispatcher_membership_revision",
            "gauge",
            "The etcd revision of the cluster membership applied to the maps.",
            [(String::new(), status.applied.load(Ordering::Relaxed) as f64)],
        );
    }
    family(
        &mut out,
        "dispatcher_packets_total",
        "counter",
        "Packets the XDP data plane handled, by outcome.",
        maps.counters()?
            .into_iter()
            .map(|(c, n)| (format!("outcome=\"{}\"", c.name()), n as f64)),
    );
    let functions = inspect::functions(maps)?;
    let label = |f: &inspect::FunctionInfo| format!("function=\"{}\"", f.id);
    family(
        &mut out,
        "dispatcher_function_packets_total",
        "counter",
        "Requests dispatched per function.",
        functions.iter().map(|f| (label(f), f.packets as f64)),
    );
    family(
        &mut out,
        "dispatcher_function_bytes_total",
        "counter",
        "Bytes dispatched per function.",
        functions.iter().map(|f| (label(f), f.bytes as f64)),
    );
    family(
        &mut out,
        "dispatcher_function_up_workers",
        "gauge",
        "Workers of a function that get new requests.",
        functions.iter().map(|f| (label(f), f.up as f64)),
    );
    let workers = inspect::workers(maps, None)?;
    let label =
        |w: &inspect::WorkerInfo| format!("function=\"{}\",worker=\"{}\"", w.function, w.addr);
    family(
        &mut out,
        "dispatcher_worker_packets_total",
        "counter",
        "Requests dispatched to a worker.",
        workers.iter().map(|w| (label(w), w.packets as f64)),
    );
    family(
        &mut out,
        "dispatcher_worker_bytes_total",
        "counter",
        "Bytes dispatched to a worker.",
        workers.iter().map(|w| (label(w), w.bytes as f64)),
    );
    family(
        &mut out,
        "dispatcher_worker_load",
        "gauge",
        "A worker's in-flight estimate (reported, plus requests sent since).",
        workers.iter().map(|w| (label(w), w.load as f64)),
    );
    family(
        &mut out,
        "dispatcher_worker_up",
        "gauge",
        "1 if the worker gets new requests, 0 if down or draining.",
        workers
            .iter()
            .map(|w| (label(w), if w.state == WorkerState::Up { 1.0 } else { 0.0 })),
    );
    Ok(out)
}

/// Serves GET /metrics on `listen` from the maps pinned at `pin_dir`, on a
/// thread of its own, until the process ends.
pub fn spawn(listen: SocketAddr, pin_dir: PathBuf, cluster: Option<Arc<Status>>) -> Result<()> {
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
                match render(&maps, cluster.as_deref()) {
                    Ok(text) => tiny_http::Response::from_string(text).with_header(
                        "Content-Type: text/plain; version=0.0.4"
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
