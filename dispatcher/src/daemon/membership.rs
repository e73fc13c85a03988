//! Cluster mode (`dispatcher run --etcd`): the cluster's membership in etcd,
//! read at a revision and then watched from the next one, handed to the run
//! loop, which applies it through the same difference-applying path as a
//! reload (`control::reconcile`). And this dispatcher's own registration,
//! under a lease, so that workers find it.
//!
//! etcd is never on the request path. While it is unreachable the data
//! plane keeps the last membership applied (nothing is flushed or
//! detached), the log says so once and the `dispatcher_etcd_connected`
//! gauge is 0; on reconnect the watch resumes at the revision after the
//! last one seen, so no event is missed or applied out of order. If etcd
//! has compacted that revision away, the state is read afresh instead.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Result};
use etcd_client::{EventType, PutOptions, WatchOptions};
use macaddr::MacAddr6;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    cluster::{self, DispatcherValue, Keys, Membership},
    config::Config,
    control,
    daemon::neighbours,
    data_plane::Maps,
};

/// `dispatcher run --etcd ...`.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub etcd: cluster::Etcd,
    pub cluster: String,
    /// This dispatcher's name among the cluster's dispatchers.
    pub name: String,
    /// The TTL of this dispatcher's registration, in seconds.
    pub lease_ttl: i64,
}

/// What the follower knows, for the log and metrics.
#[derive(Debug, Default)]
pub struct Status {
    pub connected: AtomicBool,
    /// The etcd revision of the membership last applied to the maps.
    pub applied: AtomicI64,
}

/// Follows the cluster's membership from etcd in a task of its own; the
/// receiver always holds the latest state (intermediate ones may be
/// skipped: each is complete). `health` is where this dispatcher takes
/// heartbeats, registered for workers to find.
pub fn follow(
    opts: ClusterOptions,
    health: Option<SocketAddr>,
    status: Arc<Status>,
) -> Result<watch::Receiver<Option<Arc<Membership>>>> {
    let keys = Keys::new(&opts.cluster)?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut state: Option<Membership> = None;
        let mut backoff = Duration::from_millis(100);
        let mut said_down = false;
        loop {
            let result = session(&opts, &keys, health, &status, &mut state, &tx).await;
            // A session that got as far as watching was a recovery: its
            // loss is news again.
            if status.connected.swap(false, Ordering::Relaxed) {
                said_down = false;
                backoff = Duration::from_millis(100);
            }
            match result {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    if !said_down {
                        let applied = status.applied.load(Ordering::Relaxed);
                        warn!(
                            "cluster: etcd unreachable ({e:#}); serving the last membership applied (revision {applied}) until it is back"
                        );
                        said_down = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
            said_down = false;
        }
    });
    Ok(rx)
}

/// One connection to etcd: read (or resume), register, watch, until the
/// connection fails (Err) or etcd compacted our revision (Ok: read afresh).
async fn session(
    opts: &ClusterOptions,
    keys: &Keys,
    health: Option<SocketAddr>,
    status: &Status,
    state: &mut Option<Membership>,
    tx: &watch::Sender<Option<Arc<Membership>>>,
) -> Result<()> {
    let mut client = cluster::connect(&opts.etcd).await?;
    let start = match state {
        Some(m) => m.revision + 1,
        None => {
            let m = cluster::read(&mut client, keys).await?;
            info!(
                revision = m.revision,
                functions = m.functions.len(),
                workers = m.workers.len(),
                "cluster: membership read from etcd"
            );
            let start = m.revision + 1;
            tx.send_replace(Some(Arc::new(m.clone())));
            *state = Some(m);
            start
        }
    };
    let lease = client
        .lease_grant(opts.lease_ttl, None)
        .await
        .map_err(|e| anyhow!("cannot take a lease from etcd: {e}"))?
        .id();
    let (mut keeper, mut keep_alives) = client.lease_keep_alive(lease).await?;
    let register = |revision: i64| {
        let value = serde_json::to_vec(&DispatcherValue { health, revision }).expect("JSON");
        (keys.dispatcher(&opts.name), value)
    };
    let (key, value) = register(status.applied.load(Ordering::Relaxed));
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await?;
    let mut events = client
        .watch(
            keys.prefix(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start)
                    .with_progress_notify(),
            ),
        )
        .await?;
    status.connected.store(true, Ordering::Relaxed);
    info!(from = start, "cluster: watching etcd");
    let interval = Duration::from_secs((opts.lease_ttl / 3).max(1) as u64);
    let mut keep_alive = tokio::time::interval(interval);
    let mut liveness = cluster::Liveness::new(interval);
    let mut reported = status.applied.load(Ordering::Relaxed);
    let mut report = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            message = events.message() => {
                let Some(response) = message? else {
                    return Err(anyhow!("etcd closed the watch"));
                };
                if response.compact_revision() > 0 {
                    warn!(
                        compacted = response.compact_revision(),
                        "cluster: etcd compacted the revisions after the last one seen; reading the membership afresh"
                    );
                    *state = None;
                    return Ok(());
                }
                if response.canceled() {
                    return Err(anyhow!("etcd cancelled the watch: {}", response.cancel_reason()));
                }
                let m = state.as_mut().expect("read before watching");
                let mut changed = false;
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = kv.key_str().unwrap_or_default();
                    // This dispatcher's own reports change nothing to apply.
                    let is_member = !key.starts_with(&keys.dispatchers());
                    match event.event_type() {
                        EventType::Put => {
                            if let Err(e) = m.put(keys, key, kv.value(), kv.lease()) {
                                warn!("cluster: {e:#}");
                            }
                        }
                        EventType::Delete => m.delete(keys, key),
                    }
                    m.revision = m.revision.max(kv.mod_revision());
                    changed |= is_member;
                }
                if let Some(h) = response.header() {
                    m.revision = m.revision.max(h.revision());
                }
                if changed {
                    tx.send_replace(Some(Arc::new(m.clone())));
                }
            }
            _ = keep_alive.tick() => {
                liveness.check()?;
                tokio::time::timeout(interval * 3, keeper.keep_alive())
                    .await
                    .map_err(|_| anyhow!("etcd took longer than {:?} to take a lease renewal", interval * 3))??;
            }
            renewed = keep_alives.message() => {
                match renewed? {
                    Some(r) if r.ttl() > 0 => liveness.answered(),
                    _ => return Err(anyhow!("etcd let this dispatcher's lease expire")),
                }
            }
            _ = report.tick() => {
                // The revision applied, once it moved (only membership
                // changes move it: dispatchers' reports do not, or each
                // report would make every other dispatcher report again).
                let applied = status.applied.load(Ordering::Relaxed);
                if applied != reported {
                    let (key, value) = register(applied);
                    tokio::time::timeout(
                        interval * 3,
                        client.put(key, value, Some(PutOptions::new().with_lease(lease))),
                    )
                    .await
                    .map_err(|_| anyhow!("etcd took longer than {:?} to take this dispatcher's report", interval * 3))??;
                    reported = applied;
                }
            }
        }
    }
}

/// Turns memberships into map contents: the node's local config (service,
/// egress, health, metrics) with the cluster's functions, workers and
/// workflows, applied through `control::reconcile` when it changed.
pub struct Applier {
    local: Config,
    /// Worker MACs learned from the neighbour table, kept across changes
    /// so that a new worker costs one resolution and the others none.
    learned: HashMap<IpAddr, MacAddr6>,
    last: Option<Config>,
    /// Workers were left out of the last apply for want of a MAC: apply
    /// again later.
    incomplete: bool,
}

impl Applier {
    pub fn new(local: Config) -> Applier {
        Applier {
            local,
            learned: HashMap::new(),
            last: None,
            incomplete: false,
        }
    }

    /// A new local config (SIGHUP): applied with the membership on the
    /// next `apply`.
    pub fn set_local(&mut self, local: Config) {
        self.local = local;
        self.last = None;
    }

    /// The workers whose MACs came from the neighbour table (for the
    /// periodic refresh).
    pub fn learned(&self) -> Vec<SocketAddr> {
        let Some(config) = &self.last else {
            return Vec::new();
        };
        config
            .functions
            .iter()
            .flat_map(|f| &f.workers)
            .filter(|w| self.learned.get(&w.addr.ip()) == w.mac.as_ref())
            .map(|w| w.addr)
            .collect()
    }

    /// Whether the last apply left workers out (their MAC unknown).
    pub fn incomplete(&self) -> bool {
        self.incomplete
    }

    /// Applies `m` to `maps` if it changes them.
    pub async fn apply(&mut self, m: &Membership, maps: &mut Maps) -> Result<()> {
        let mut config = m.to_config(&self.local);
        // A netlink connection only when some worker's MAC is unknown.
        let mut resolver = None;
        self.incomplete = false;
        for f in &mut config.functions {
            let mut kept = Vec::with_capacity(f.workers.len());
            for mut w in std::mem::take(&mut f.workers) {
                if w.mac.is_none() {
                    let ip = w.addr.ip();
                    let known = self.learned.get(&ip).copied();
                    w.mac = match known {
                        Some(mac) => Some(mac),
                        None => {
                            if resolver.is_none() {
                                resolver = Some(neighbours::Resolver::new()?);
                            }
                            let resolved = resolver.as_ref().expect("just made").resolve(ip).await;
                            match resolved {
                                Ok(mac) => {
                                    self.learned.insert(ip, mac);
                                    Some(mac)
                                }
                                Err(e) => {
                                    warn!(worker = %w.addr, function = f.id, "cluster: worker left out until its MAC is known: {e:#}");
                                    self.incomplete = true;
                                    continue;
                                }
                            }
                        }
                    };
                }
                kept.push(w);
            }
            f.workers = kept;
        }
        if self.last.as_ref() == Some(&config) {
            return Ok(());
        }
        config.validate()?;
        control::reconcile(maps, &config)?;
        info!(
            revision = m.revision,
            functions = config.functions.len(),
            workers = config
                .functions
                .iter()
                .map(|f| f.workers.len())
                .sum::<usize>(),
            workflows = config.workflows.len(),
            "cluster: membership applied"
        );
        self.last = Some(config);
        Ok(())
    }
}
