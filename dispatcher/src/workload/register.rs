//! `dispatcher serve --register`: a worker writes its own membership into
//! the cluster (one key per function it serves, docs/cluster.md) under a
//! lease it keeps alive, and follows the cluster's dispatchers so that its
//! heartbeats reach every one of them.
//!
//! A worker that dies stops renewing its lease; etcd deletes its keys
//! after the lease's TTL and every dispatcher drops it. The TTL is the
//! trade: a short one removes a dead worker sooner (requests sent to it
//! meanwhile are lost), a long one rides out longer pauses (a GC stall, a
//! brief partition from etcd) without the worker being dropped and added
//! back. A worker that stops gracefully marks itself draining (no new
//! requests from any dispatcher), waits for what it holds, then deletes its
//! keys and revokes the lease.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU32, Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use tracing::{info, warn};

use crate::cluster::{self, Key, Keys, Registered, WorkerValue};

/// What a worker registers.
#[derive(Clone, Debug)]
pub struct Registration {
    pub etcd: cluster::Etcd,
    pub cluster: String,
    /// The address dispatchers send its requests to.
    pub advertise: SocketAddr,
    pub functions: Vec<u32>,
    pub weight: u16,
    /// Seconds the registration outlives the worker.
    pub lease_ttl: i64,
    /// How long a graceful stop waits for requests in flight.
    pub drain_timeout: Duration,
}

/// Keeps the registration alive until `stop` resolves, then drains and
/// deregisters. Reconnects (with a fresh lease) whenever etcd goes away.
/// `heartbeat_to` is kept equal to the health addresses of the cluster's
/// dispatchers.
pub async fn run(
    reg: Registration,
    in_flight: Arc<AtomicU32>,
    heartbeat_to: Arc<RwLock<Vec<SocketAddr>>>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let keys = Keys::new(&reg.cluster)?;
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(100);
    let mut health = Dispatchers::default();
    loop {
        let session = std::sync::Mutex::new(None);
        let outcome = tokio::select! {
            r = keep(&reg, &keys, &heartbeat_to, &mut health, &session) => r,
            () = &mut stop => {
                let session = session.lock().expect("not poisoned").take();
                return deregister(&reg, &keys, session, &in_flight).await;
            }
        };
        if let Err(e) = outcome {
            warn!("registration failed or lost ({e:#}); trying again");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = &mut stop => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A connected client and the lease its keys hang on.
struct Session {
    client: Client,
    lease: i64,
}

fn value(reg: &Registration, state: Registered) -> Vec<u8> {
    serde_json::to_vec(&WorkerValue {
        weight: reg.weight,
        mac: None,
        state,
    })
    .expect("JSON")
}

/// Registers and keeps the lease alive; returns on a lost connection.
async fn keep(
    reg: &Registration,
    keys: &Keys,
    heartbeat_to: &RwLock<Vec<SocketAddr>>,
    health: &mut Dispatchers,
    session: &std::sync::Mutex<Option<Session>>,
) -> Result<()> {
    let mut client = cluster::connect(&reg.etcd).await?;
    let lease = client
        .lease_grant(reg.lease_ttl, None)
        .await
        .map_err(|e| anyhow!("cannot take a lease from etcd: {e}"))?
        .id();
    for f in &reg.functions {
        client
            .put(
                keys.worker(*f, reg.advertise),
                value(reg, Registered::Up),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| {
                anyhow!("cannot register (is this worker allowed to write its keys?): {e}")
            })?;
    }
    info!(
        functions = ?reg.functions,
        advertise = %reg.advertise,
        lease_ttl_s = reg.lease_ttl,
        "registered in the cluster"
    );
    let (mut keeper, mut renewals) = client.lease_keep_alive(lease).await?;
    // The dispatchers, then every change to them.
    let dispatchers = client
        .get(keys.dispatchers(), Some(GetOptions::new().with_prefix()))
        .await?;
    // What was registered before this session is kept for a while if the
    // fresh read lacks it (see FORGET_AFTER).
    let now = Instant::now();
    let before = std::mem::take(&mut health.registered);
    for (name, a) in before {
        health.gone.insert(name, (a, now));
    }
    for kv in dispatchers.kvs() {
        note_dispatcher(
            keys,
            kv.key_str().unwrap_or_default(),
            Some(kv.value()),
            health,
        );
    }
    *heartbeat_to.write().expect("not poisoned") = health.targets();
    let start = dispatchers.header().map_or(0, |h| h.revision()) + 1;
    let mut watch = client
        .watch(
            keys.dispatchers(),
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await?;
    *session.lock().expect("not poisoned") = Some(Session {
        client: client.clone(),
        lease,
    });
    let interval = Duration::from_secs((reg.lease_ttl / 3).max(1) as u64);
    let mut tick = tokio::time::interval(interval);
    let mut liveness = cluster::Liveness::new(interval);
    let mut forget = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                liveness.check()?;
                tokio::time::timeout(interval * 3, keeper.keep_alive())
                    .await
                    .map_err(|_| anyhow!("etcd took longer than {:?} to take a lease renewal", interval * 3))??;
            }
            renewed = renewals.message() => match renewed? {
                Some(r) if r.ttl() > 0 => liveness.answered(),
                _ => return Err(anyhow!("the lease expired (was etcd unreachable for longer than its TTL?)")),
            },
            message = watch.message() => {
                let Some(response) = message? else {
                    return Err(anyhow!("etcd closed the watch"));
                };
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let put = event.event_type() == etcd_client::EventType::Put;
                    note_dispatcher(keys, kv.key_str().unwrap_or_default(), put.then(|| kv.value()), health);
                }
                *heartbeat_to.write().expect("not poisoned") = health.targets();
            }
            _ = forget.tick() => {
                *heartbeat_to.write().expect("not poisoned") = health.targets();
            }
        }
    }
}

/// How long a worker keeps sending heartbeats to a dispatcher whose key
/// went away. A dispatcher cut off from etcd loses its key when its lease
/// expires, but it still serves requests (etcd is not on the request
/// path) and still needs this worker's heartbeats, or its health checking
/// would mark every worker down.
const FORGET_AFTER: Duration = Duration::from_secs(120);

/// The dispatchers a worker sends heartbeats to: the registered ones, and
/// for FORGET_AFTER those whose key went away.
#[derive(Default)]
struct Dispatchers {
    registered: std::collections::BTreeMap<String, SocketAddr>,
    gone: std::collections::BTreeMap<String, (SocketAddr, Instant)>,
}

impl Dispatchers {
    fn targets(&mut self) -> Vec<SocketAddr> {
        self.gone
            .retain(|_, (_, since)| since.elapsed() < FORGET_AFTER);
        let mut all: Vec<SocketAddr> = self
            .registered
            .values()
            .chain(self.gone.values().map(|(a, _)| a))
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Keeps `health` up to date with a put (`Some(value)`) or delete of a
/// dispatcher's key.
fn note_dispatcher(keys: &Keys, key: &str, value: Option<&[u8]>, health: &mut Dispatchers) {
    let Some(Key::Dispatcher(name)) = keys.parse(key) else {
        return;
    };
    let addr = value
        .and_then(|v| serde_json::from_slice::<cluster::DispatcherValue>(v).ok())
        .and_then(|d| d.health);
    match addr {
        Some(a) => {
            health.gone.remove(&name);
            health.registered.insert(name, a);
        }
        None => {
            if let Some(a) = health.registered.remove(&name) {
                health.gone.insert(name, (a, Instant::now()));
            }
        }
    }
}

/// Marks the registration draining, waits until nothing is in flight (or
/// the drain timeout), then deletes the keys and revokes the lease.
async fn deregister(
    reg: &Registration,
    keys: &Keys,
    session: Option<Session>,
    in_flight: &AtomicU32,
) -> Result<()> {
    let Some(Session { mut client, lease }) = session else {
        return Ok(());
    };
    for f in &reg.functions {
        client
            .put(
                keys.worker(*f, reg.advertise),
                value(reg, Registered::Draining),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
    }
    info!("draining: no new requests; waiting for the ones in flight");
    // Dispatchers apply the change within milliseconds; a request sent just
    // before it may still be on its way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    crate::workload::worker::finish_in_flight(in_flight, reg.drain_timeout).await;
    for f in &reg.functions {
        client.delete(keys.worker(*f, reg.advertise), None).await?;
    }
    client.lease_revoke(lease).await?;
    info!("deregistered from the cluster");
    Ok(())
}
