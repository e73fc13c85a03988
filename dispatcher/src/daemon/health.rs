//! Worker health and load, kept current from heartbeats (see heartbeat.rs):
//! a heartbeat writes the worker's in-flight count into LOADS (re-ranking
//! least-loaded candidates) and marks it up if health had marked it down;
//! a worker silent for `down_after` is marked down, which takes it out of
//! its functions' live tables (no new requests) until heartbeats resume.
//! Drained workers stay drained.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use dispatcher_common::maps::worker_state;
use serde::Serialize;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::{
    config::HealthConfig,
    control,
    daemon::metrics::Telemetry,
    data_plane::Maps,
    heartbeat::{self, Heartbeat, Refused},
};

/// What the health listener saw; for logs and tests.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub accepted: u64,
    pub dropped_network: u64,
    pub dropped_malformed: u64,
    pub dropped_auth: u64,
    pub dropped_stale_or_replayed: u64,
    pub unknown_worker: u64,
    pub marked_down: u64,
    pub marked_up: u64,
}

/// Where the workers are: each address's (function, slot, state), and
/// each function's up slots. Rebuilt at every sweep (the CLI may have
/// changed things) and when a heartbeat names a worker it does not know.
#[derive(Default)]
struct Index {
    by_worker: HashMap<SocketAddr, Vec<(u32, u8, u8)>>,
    up_slots: HashMap<u32, Vec<u8>>,
}

pub struct Health {
    config: HealthConfig,
    index: Index,
    /// Last accepted heartbeat per worker: when, and its send time.
    seen: HashMap<SocketAddr, (Instant, u64)>,
    started: Instant,
    pub counters: Counters,
}

impl Health {
    pub fn new(config: HealthConfig) -> Health {
        Health {
            config,
            index: Index::default(),
            seen: HashMap::new(),
            started: Instant::now(),
            counters: Counters::default(),
        }
    }

    fn rebuild_index(&mut self, maps: &Maps) -> Result<()> {
        let mut index = Index::default();
        for f in crate::control::inspect::functions(maps)? {
            let up = index.up_slots.entry(f.id).or_default();
            for (slot, w) in control::function_workers(maps, &f.entry)? {
                let addr = crate::endpoints::worker_socket_addr(&w);
                index
                    .by_worker
                    .entry(addr)
                    .or_default()
                    .push((f.id, slot, w.state));
                if w.state == worker_state::UP {
                    up.push(slot);
                }
            }
        }
        self.index = index;
        Ok(())
    }

    /// Handles one datagram from `from`; the worker whose heartbeat it
    /// accepted, if it did.
    pub fn on_datagram(
        &mut self,
        maps: &mut Maps,
        datagram: &[u8],
        from: SocketAddr,
    ) -> Result<Option<SocketAddr>> {
        if !self
            .config
            .networks
            .iter()
            .any(|n| n.contains(&from.ip().to_canonical()))
        {
            self.counters.dropped_network += 1;
            return Ok(None);
        }
        let hb = match Heartbeat::decode(datagram, self.config.key.as_bytes(), heartbeat::now_ns())
        {
            Ok(hb) => hb,
            Err(Refused::Malformed) => {
                self.counters.dropped_malformed += 1;
                return Ok(None);
            }
            Err(Refused::Auth) => {
                self.counters.dropped_auth += 1;
                warn!(%from, "heartbeat with a bad MAC dropped (wrong key?)");
                return Ok(None);
            }
            Err(Refused::Stale) => {
                self.counters.dropped_stale_or_replayed += 1;
                warn!(%from, "heartbeat dropped: sent too far from this clock (stale, or the clocks disagree)");
                return Ok(None);
            }
        };
        if self
            .seen
            .get(&hb.worker)
            .is_some_and(|(_, last)| hb.sent_ns <= *last)
        {
            self.counters.dropped_stale_or_replayed += 1;
            warn!(%from, worker = %hb.worker, "heartbeat dropped: not later than the last one accepted (a replay)");
            return Ok(None);
        }
        if !self.index.by_worker.contains_key(&hb.worker) {
            self.rebuild_index(maps)?;
        }
        let Some(slots) = self.index.by_worker.get(&hb.worker).cloned() else {
            self.counters.unknown_worker += 1;
            debug!(worker = %hb.worker, "heartbeat from a worker no function has");
            return Ok(None);
        };
        self.seen.insert(hb.worker, (Instant::now(), hb.sent_ns));
        self.counters.accepted += 1;
        let mut changed = false;
        for (function, slot, state) in slots {
            let Ok(f) = maps.functions.get(&function, 0) else {
                continue;
            };
            control::write_load(maps, f.worker_index(slot as u32), hb.in_flight)?;
            if state == worker_state::DOWN {
                control::set_worker_state(maps, function, hb.worker, worker_state::UP)?;
                self.counters.marked_up += 1;
                changed = true;
                info!(worker = %hb.worker, function, "heartbeats resumed: worker up");
            } else if let Some(up) = self.index.up_slots.get(&function) {
                control::rank_least_loaded(maps, function, up)?;
            }
        }
        if changed {
            self.rebuild_index(maps)?;
        }
        Ok(Some(hb.worker))
    }

    /// Marks down every up worker silent for longer than `down_after`
    /// (counting from the daemon's start for workers never heard from).
    pub fn sweep(&mut self, maps: &mut Maps) -> Result<()> {
        self.rebuild_index(maps)?;
        let down_after = Duration::from_millis(self.config.down_after_ms);
        let mut changed = false;
        for (addr, slots) in &self.index.by_worker {
            let last = self.seen.get(addr).map_or(self.started, |(t, _)| *t);
            if last.elapsed() <= down_after {
                continue;
            }
            for &(function, _, state) in slots {
                if state == worker_state::UP {
                    control::set_worker_state(maps, function, *addr, worker_state::DOWN)?;
                    self.counters.marked_down += 1;
                    changed = true;
                    warn!(worker = %addr, function, silent_ms = last.elapsed().as_millis() as u64, "missed heartbeats: worker down");
                }
            }
        }
        if changed {
            self.rebuild_index(maps)?;
        }
        Ok(())
    }
}

/// A running health task: its config, to tell whether a reload changes it.
pub struct Running {
    pub config: HealthConfig,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the task and waits until it is gone, so that its socket is
    /// closed and a successor can bind the same address.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Binds the health address (failing here, with the reason, if it cannot)
/// and runs the listener and the sweeps on a task of their own.
pub async fn start(config: HealthConfig, maps: Maps, telemetry: Arc<Telemetry>) -> Result<Running> {
    let socket = UdpSocket::bind(config.listen).await.with_context(|| {
        format!(
            "health.listen: cannot bind {} (in use, or not an address of this host?)",
            config.listen
        )
    })?;
    info!(listen = %config.listen, down_after_ms = config.down_after_ms, "health: listening for worker heartbeats");
    let counters = telemetry.heartbeat_counters();
    telemetry.heartbeat(&counters, None);
    let task = tokio::spawn(serve(socket, config.clone(), maps, telemetry));
    Ok(Running {
        config,
        task: Some(task),
    })
}

/// Listens for heartbeats and sweeps for silent workers until aborted.
async fn serve(socket: UdpSocket, config: HealthConfig, mut maps: Maps, telemetry: Arc<Telemetry>) {
    let mut sweep =
        tokio::time::interval(Duration::from_millis((config.down_after_ms / 4).max(20)));
    let mut health = Health::new(config);
    health.counters = telemetry.heartbeat_counters();
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                    let accepted = health.on_datagram(&mut maps, &buf[..n], from).unwrap_or_else(|e| {
                        warn!("health: {e:#}");
                        None
                    });
                    telemetry.heartbeat(&health.counters, accepted);
                }
                Err(e) => warn!("health: receive failed: {e}"),
            },
            _ = sweep.tick() => {
                if let Err(e) = health.sweep(&mut maps) {
                    warn!("health: {e:#}");
                }
                telemetry.heartbeat(&health.counters, None);
            }
        }
    }
}
