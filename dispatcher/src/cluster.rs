//! Cluster mode's shared state in etcd: the key layout (docs/cluster.md),
//! the JSON values under it, and the membership they add up to.
//!
//! Every key of a cluster lives under `/faas-dispatcher/<cluster>/`:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `service` | `{"addresses": [IP, ...], "port": P}` | the operator |
//! | `functions/<id>` | `{"policy": "round-robin"}` | the operator |
//! | `workflows/<id>` | `{"steps": [F1, F2, ...]}` | the operator |
//! | `workers/<function>/<addr>` | `{"weight": 1, "mac": "..", "state": "up"}` | a worker, under its lease; or the operator |
//! | `dispatchers/<name>` | `{"health": IP:PORT, "revision": N}` | each dispatcher, under its lease |
//!
//! Values are JSON so that `etcdctl get --prefix` reads as it is. A value
//! that does not parse is skipped with a warning, never applied and never
//! fatal: one bad write must not take every dispatcher down.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Config, FunctionConfig, Policy, Service, WorkerConfig, WorkflowConfig};

/// The root of every cluster's keys.
pub const ROOT: &str = "/faas-dispatcher";
/// The cluster a command speaks to unless told otherwise.
pub const DEFAULT_CLUSTER: &str = "default";

/// The keys of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// What a key under a cluster's prefix names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Service,
    Function(u32),
    Workflow(u32),
    Worker(u32, SocketAddr),
    Dispatcher(String),
}

impl Keys {
    /// The keys of `cluster`: a name of letters, digits, `-` and `_`.
    pub fn new(cluster: &str) -> Result<Keys> {
        if cluster.is_empty()
            || cluster.len() > 64
            || !cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("--cluster {cluster:?}: a cluster name is 1 to 64 letters, digits, '-' or '_'");
        }
        Ok(Keys {
            prefix: format!("{ROOT}/{cluster}/"),
        })
    }

    /// Every key of the cluster starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn service(&self) -> String {
        format!("{}service", self.prefix)
    }
    pub fn function(&self, id: u32) -> String {
        format!("{}functions/{id}", self.prefix)
    }
    pub fn workflow(&self, id: u32) -> String {
        format!("{}workflows/{id}", self.prefix)
    }
    pub fn worker(&self, function: u32, addr: SocketAddr) -> String {
        format!("{}workers/{function}/{addr}", self.prefix)
    }
    pub fn dispatchers(&self) -> String {
        format!("{}dispatchers/", self.prefix)
    }
    pub fn dispatcher(&self, name: &str) -> String {
        format!("{}dispatchers/{name}", self.prefix)
    }

    /// What `key` names, if it is one of the layout's.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.prefix)?;
        let mut parts = rest.splitn(3, '/');
        match (parts.next()?, parts.next(), parts.next()) {
            ("service", None, None) => Some(Key::Service),
            ("functions", Some(id), None) => id.parse().ok().map(Key::Function),
            ("workflows", Some(id), None) => id.parse().ok().map(Key::Workflow),
            ("workers", Some(f), Some(addr)) => {
                Some(Key::Worker(f.parse().ok()?, addr.parse().ok()?))
            }
            ("dispatchers", Some(name), None) if !name.is_empty() => {
                Some(Key::Dispatcher(name.to_string()))
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceValue {
    pub addresses: Vec<IpAddr>,
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    dispatcher_common::protocol::DEFAULT_SERVICE_PORT
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionValue {
    #[serde(default)]
    pub policy: Policy,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowValue {
    pub steps: Vec<u32>,
}

/// A registered worker's state: a draining one gets no new requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registered {
    #[default]
    Up,
    Draining,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerValue {
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// The MAC to send to (the worker's, or its gateway's); without it
    /// each dispatcher learns it from its neighbour table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default)]
    pub state: Registered,
}

fn default_weight() -> u16 {
    1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherValue {
    /// Where workers send their heartbeats (the dispatcher's [health]
    /// listen), if it checks health.
    #[serde(default)]
    pub health: Option<SocketAddr>,
    /// The etcd revision whose membership it has applied.
    pub revision: i64,
}

/// A worker entry with the lease that holds it (0: none, the operator's).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerEntry {
    pub value: WorkerValue,
    pub lease: i64,
}

/// The whole membership of a cluster at one etcd revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    /// The revision this is the state of.
    pub revision: i64,
    pub service: Option<ServiceValue>,
    pub functions: BTreeMap<u32, FunctionValue>,
    pub workflows: BTreeMap<u32, WorkflowValue>,
    pub workers: BTreeMap<(u32, SocketAddr), WorkerEntry>,
    pub dispatchers: BTreeMap<String, DispatcherValue>,
}

impl Membership {
    /// Applies a put of `value` at `key`, held by `lease`. A key outside
    /// the layout is ignored; a value that does not parse is an error
    /// (the caller warns and goes on), and the old value stays.
    pub fn put(&mut self, keys: &Keys, key: &str, value: &[u8], lease: i64) -> Result<()> {
        let Some(k) = keys.parse(key) else {
            return Ok(());
        };
        let bad = |e: serde_json::Error| anyhow!("{key}: not a valid value ({e}): skipped");
        match k {
            Key::Service => self.service = Some(serde_json::from_slice(value).map_err(bad)?),
            Key::Function(id) => {
                self.functions
                    .insert(id, serde_json::from_slice(value).map_err(bad)?);
            }
            Key::Workflow(id) => {
                self.workflows
                    .insert(id, serde_json::from_slice(value).map_err(bad)?);
            }
            Key::Worker(f, addr) => {
                let value = serde_json::from_slice(value).map_err(bad)?;
                self.workers.insert((f, addr), WorkerEntry { value, lease });
            }
            Key::Dispatcher(name) => {
                self.dispatchers
                    .insert(name, serde_json::from_slice(value).map_err(bad)?);
            }
        }
        Ok(())
    }

    /// Applies a delete of `key`.
    pub fn delete(&mut self, keys: &Keys, key: &str) {
        match keys.parse(key) {
            Some(Key::Service) => self.service = None,
            Some(Key::Function(id)) => {
                self.functions.remove(&id);
            }
            Some(Key::Workflow(id)) => {
                self.workflows.remove(&id);
            }
            Some(Key::Worker(f, addr)) => {
                self.workers.remove(&(f, addr));
            }
            Some(Key::Dispatcher(name)) => {
                self.dispatchers.remove(&name);
            }
            None => {}
        }
    }

    /// The config a dispatcher applies: `local`'s service (unless the
    /// cluster names one), egress, health, metrics and neighbours, with
    /// the cluster's functions, workers and workflows. A function exists
    /// once the operator declares it or a worker registers for it (with
    /// the default policy until declared); draining workers get no new
    /// requests, so they are left out of the tables. A workflow whose
    /// steps are not all functions yet waits (it is left out).
    pub fn to_config(&self, local: &Config) -> Config {
        let mut functions: BTreeMap<u32, FunctionConfig> = BTreeMap::new();
        for (id, f) in &self.functions {
            functions.insert(
                *id,
                FunctionConfig {
                    id: *id,
                    policy: f.policy,
                    workers: Vec::new(),
                },
            );
        }
        for ((function, addr), w) in &self.workers {
            let f = functions.entry(*function).or_insert(FunctionConfig {
                id: *function,
                policy: Policy::default(),
                workers: Vec::new(),
            });
            if w.value.state == Registered::Draining {
                continue;
            }
            f.workers.push(WorkerConfig {
                addr: *addr,
                mac: w.value.mac.as_deref().and_then(|m| m.parse().ok()),
                weight: w.value.weight,
            });
        }
        let workflows = self
            .workflows
            .iter()
            .filter(|(id, w)| {
                !functions.contains_key(id) && w.steps.iter().all(|s| functions.contains_key(s))
            })
            .map(|(id, w)| WorkflowConfig {
                id: *id,
                steps: w.steps.clone(),
            })
            .collect();
        let mut config = local.clone();
        if let Some(s) = &self.service {
            config.service = Service {
                addresses: s.addresses.clone(),
                port: s.port,
            };
        }
        config.functions = functions.into_values().collect();
        config.workflows = workflows;
        config
    }
}

/// Where etcd is and how to prove who we are to it.
#[derive(Clone, Debug)]
pub struct Etcd {
    /// Client URLs: http://IP:2379, or https:// with `tls`.
    pub endpoints: Vec<String>,
    pub tls: Option<Tls>,
}

/// TLS toward etcd: the CA that signed its certificate, and this side's
/// client certificate and key (with etcd's `--client-cert-auth`, the
/// certificate's common name is the etcd user whose roles apply).
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: std::path::PathBuf,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl std::fmt::Display for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.endpoints.join(","))
    }
}

/// Connects to etcd, or says why not and what to check.
pub async fn connect(etcd: &Etcd) -> Result<etcd_client::Client> {
    if etcd.endpoints.is_empty() {
        bail!("--etcd: name at least one etcd endpoint, like http://127.0.0.1:2379");
    }
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let Some(tls) = &etcd.tls {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
        };
        let mut config = etcd_client::TlsOptions::new().ca_certificate(
            etcd_client::Certificate::from_pem(read(&tls.ca, "--etcd-ca")?),
        );
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(etcd_client::Identity::from_pem(
                read(cert, "--etcd-cert")?,
                read(key, "--etcd-key")?,
            ));
        }
        options = options.with_tls(config);
    } else if etcd.endpoints.iter().any(|e| e.starts_with("https://")) {
        bail!("--etcd {etcd}: an https:// endpoint needs --etcd-ca (and, where etcd checks client certificates, --etcd-cert and --etcd-key)");
    }
    let unreachable = || {
        format!(
            "cannot reach etcd at {etcd} (is it running, are the URLs its --advertise-client-urls, and do TLS and the certificates match?)"
        )
    };
    let mut client = etcd_client::Client::connect(&etcd.endpoints, Some(options))
        .await
        .with_context(unreachable)?;
    // The channel connects lazily: one cheap call proves etcd answers.
    client.status().await.with_context(unreachable)?;
    Ok(client)
}

/// Notices an etcd that stopped answering on a connection that looks
/// open (a partition drops packets silently; HTTP/2 pings do not always
/// fail the streams): lease renewals are sent every `interval`, and three
/// intervals without an answer end the session, so that it reconnects.
pub struct Liveness {
    last: std::time::Instant,
    limit: Duration,
}

impl Liveness {
    pub fn new(interval: Duration) -> Liveness {
        Liveness {
            last: std::time::Instant::now(),
            limit: interval * 3,
        }
    }

    /// A renewal was answered.
    pub fn answered(&mut self) {
        self.last = std::time::Instant::now();
    }

    /// Fails once no renewal was answered for three intervals.
    pub fn check(&self) -> Result<()> {
        if self.last.elapsed() > self.limit {
            bail!(
                "etcd has not answered a lease renewal for {:?} (a partition?)",
                self.last.elapsed()
            );
        }
        Ok(())
    }
}

/// Reads the whole membership of the cluster at one revision.
pub async fn read(client: &mut etcd_client::Client, keys: &Keys) -> Result<Membership> {
    let response = client
        .get(
            keys.prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .context("cannot read the cluster's keys from etcd")?;
    let mut membership = Membership {
        revision: response.header().map_or(0, |h| h.revision()),
        ..Default::default()
    };
    for kv in response.kvs() {
        let key = kv.key_str().unwrap_or_default();
        if let Err(e) = membership.put(keys, key, kv.value(), kv.lease()) {
            tracing::warn!("cluster: {e:#}");
        }
    }
    Ok(membership)
}

/// The operator's changes to a cluster's membership (the CLI with
/// `--etcd`): each checks what the maps version checks, then writes one
/// key, which every dispatcher follows.
pub struct Admin {
    client: etcd_client::Client,
    keys: Keys,
}

/// One dispatcher, as `cluster status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DispatcherStatus {
    pub name: String,
    pub health: Option<SocketAddr>,
    /// The revision of the membership it has applied.
    pub revision: i64,
    /// How many revisions of membership changes it is behind (0: current).
    pub lag: i64,
}

/// One worker, as `cluster status` and `workers list --etcd` show it.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub function: u32,
    pub addr: SocketAddr,
    pub state: Registered,
    pub weight: u16,
    /// Seconds left on its lease (None: the operator's, no lease).
    pub lease_left_s: Option<i64>,
}

/// What `cluster status` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// The latest revision that changed the membership (not counting the
    /// dispatchers' own reports).
    pub revision: i64,
    pub dispatchers: Vec<DispatcherStatus>,
    pub workers: Vec<WorkerStatus>,
}

/// One workflow, as `workflows list --etcd` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkflowStatus {
    pub id: u32,
    pub steps: Vec<u32>,
}

/// One function, as `functions list --etcd` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct FunctionStatus {
    pub id: u32,
    pub policy: Policy,
    /// Declared by the operator (false: it exists because workers
    /// registered for it).
    pub declared: bool,
    pub workers: usize,
}

impl Admin {
    pub async fn connect(etcd: &Etcd, cluster: &str) -> Result<Admin> {
        Ok(Admin {
            client: connect(etcd).await?,
            keys: Keys::new(cluster)?,
        })
    }

    async fn membership(&mut self) -> Result<Membership> {
        read(&mut self.client, &self.keys).await
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<()> {
        self.client
            .put(key.clone(), value, None)
            .await
            .map(|_| ())
            .with_context(|| {
                format!("cannot write {key} (are these credentials allowed to change the cluster?)")
            })
    }

    async fn delete(&mut self, key: String, what: String) -> Result<()> {
        let deleted = self
            .client
            .delete(key.clone(), None)
            .await
            .with_context(|| format!("cannot delete {key}"))?
            .deleted();
        if deleted == 0 {
            bail!("{what}");
        }
        Ok(())
    }

    pub async fn set_function(&mut self, id: u32, policy: Policy) -> Result<()> {
        let m = self.membership().await?;
        if m.workflows.contains_key(&id) {
            bail!("function {id}: {id} is a workflow id; pick another id");
        }
        let value = serde_json::to_vec(&FunctionValue { policy })?;
        self.put(self.keys.function(id), value).await
    }

    pub async fn remove_function(&mut self, id: u32) -> Result<()> {
        let m = self.membership().await?;
        if let Some((w, _)) = m.workflows.iter().find(|(_, w)| w.steps.contains(&id)) {
            bail!("function {id} is a step of workflow {w}: remove the workflow first");
        }
        let workers: Vec<SocketAddr> = m
            .workers
            .keys()
            .filter(|(f, _)| *f == id)
            .map(|(_, a)| *a)
            .collect();
        for addr in workers {
            self.client
                .delete(self.keys.worker(id, addr), None)
                .await
                .with_context(|| format!("cannot remove worker {addr} of function {id}"))?;
        }
        self.delete(
            self.keys.function(id),
            format!("the cluster has no function {id} (`dispatcher functions list --etcd ...` lists them)"),
        )
        .await
    }

    pub async fn set_worker(
        &mut self,
        function: u32,
        addr: SocketAddr,
        value: WorkerValue,
    ) -> Result<()> {
        if value.weight == 0 {
            bail!("--weight 0: use 1 or more (drain a worker to stop its requests)");
        }
        self.put(
            self.keys.worker(function, addr),
            serde_json::to_vec(&value)?,
        )
        .await
    }

    /// A worker entry under a fresh lease of `ttl_s` seconds that nobody
    /// keeps alive (benchmarks of expiry); returns the lease.
    pub async fn set_worker_leased(
        &mut self,
        function: u32,
        addr: SocketAddr,
        value: WorkerValue,
        ttl_s: i64,
    ) -> Result<i64> {
        let lease = self.client.lease_grant(ttl_s, None).await?.id();
        self.client
            .put(
                self.keys.worker(function, addr),
                serde_json::to_vec(&value)?,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(lease)
    }

    /// Resolves when etcd deletes worker `addr` of `function` (its lease
    /// expired, or someone removed it).
    pub async fn deleted(&mut self, function: u32, addr: SocketAddr) -> Result<()> {
        let mut stream = self
            .client
            .watch(self.keys.worker(function, addr), None)
            .await?;
        while let Some(response) = stream.message().await? {
            if response
                .events()
                .iter()
                .any(|e| e.event_type() == etcd_client::EventType::Delete)
            {
                return Ok(());
            }
        }
        bail!("etcd closed the watch")
    }

    pub async fn remove_worker(&mut self, function: u32, addr: SocketAddr) -> Result<()> {
        self.delete(
            self.keys.worker(function, addr),
            format!("function {function} has no worker {addr} in the cluster"),
        )
        .await
    }

    /// Marks a worker draining, keeping its lease (a registered worker's
    /// key still expires with it).
    pub async fn drain_worker(&mut self, function: u32, addr: SocketAddr) -> Result<()> {
        let m = self.membership().await?;
        let Some(entry) = m.workers.get(&(function, addr)) else {
            bail!("function {function} has no worker {addr} in the cluster");
        };
        let mut value = entry.value.clone();
        value.state = Registered::Draining;
        let options =
            (entry.lease != 0).then(|| etcd_client::PutOptions::new().with_lease(entry.lease));
        self.client
            .put(
                self.keys.worker(function, addr),
                serde_json::to_vec(&value)?,
                options,
            )
            .await
            .context("cannot mark the worker draining")?;
        Ok(())
    }

    pub async fn set_workflow(&mut self, id: u32, steps: &[u32]) -> Result<()> {
        let m = self.membership().await?;
        let exists = |f: &u32| m.functions.contains_key(f) || m.workers.keys().any(|(w, _)| w == f);
        if exists(&id) {
            bail!("workflow {id}: {id} is a function id; pick another id");
        }
        if steps.is_empty() || steps.len() > dispatcher_common::maps::MAX_WORKFLOW_STEPS {
            bail!(
                "workflow {id}: --steps takes 1 to {} function ids",
                dispatcher_common::maps::MAX_WORKFLOW_STEPS
            );
        }
        if let Some(missing) = steps.iter().find(|f| !exists(f)) {
            bail!("workflow {id} runs function {missing}, which does not exist in the cluster: add it first");
        }
        let value = serde_json::to_vec(&WorkflowValue {
            steps: steps.to_vec(),
        })?;
        self.put(self.keys.workflow(id), value).await
    }

    pub async fn remove_workflow(&mut self, id: u32) -> Result<()> {
        self.delete(
            self.keys.workflow(id),
            format!("the cluster has no workflow {id}"),
        )
        .await
    }

    pub async fn functions(&mut self) -> Result<Vec<FunctionStatus>> {
        let m = self.membership().await?;
        let mut ids: Vec<u32> = m.functions.keys().copied().collect();
        ids.extend(m.workers.keys().map(|(f, _)| *f));
        ids.sort();
        ids.dedup();
        Ok(ids
            .into_iter()
            .map(|id| FunctionStatus {
                id,
                policy: m.functions.get(&id).map(|f| f.policy).unwrap_or_default(),
                declared: m.functions.contains_key(&id),
                workers: m.workers.keys().filter(|(f, _)| *f == id).count(),
            })
            .collect())
    }

    pub async fn workflows(&mut self) -> Result<Vec<WorkflowStatus>> {
        let m = self.membership().await?;
        Ok(m.workflows
            .iter()
            .map(|(id, w)| WorkflowStatus {
                id: *id,
                steps: w.steps.clone(),
            })
            .collect())
    }

    pub async fn status(&mut self) -> Result<Status> {
        let response = self
            .client
            .get(
                self.keys.prefix(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .context("cannot read the cluster's keys from etcd")?;
        let mut m = Membership::default();
        let mut revision = 0;
        for kv in response.kvs() {
            let key = kv.key_str().unwrap_or_default();
            let _ = m.put(&self.keys, key, kv.value(), kv.lease());
            if !matches!(self.keys.parse(key), Some(Key::Dispatcher(_))) {
                revision = revision.max(kv.mod_revision());
            }
        }
        let mut workers = Vec::new();
        for ((function, addr), entry) in &m.workers {
            let lease_left_s = if entry.lease == 0 {
                None
            } else {
                self.client
                    .lease_time_to_live(entry.lease, None)
                    .await
                    .ok()
                    .map(|l| l.ttl())
            };
            workers.push(WorkerStatus {
                function: *function,
                addr: *addr,
                state: entry.value.state,
                weight: entry.value.weight,
                lease_left_s,
            });
        }
        Ok(Status {
            revision,
            dispatchers: m
                .dispatchers
                .iter()
                .map(|(name, d)| DispatcherStatus {
                    name: name.clone(),
                    health: d.health,
                    revision: d.revision,
                    lag: (revision - d.revision).max(0),
                })
                .collect(),
            workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strangers_are_ignored() {
        let keys = Keys::new("prod").unwrap();
        let a: SocketAddr = "10.0.0.10:9000".parse().unwrap();
        let a6: SocketAddr = "[fd00::10]:9000".parse().unwrap();
        assert_eq!(keys.parse(&keys.service()), Some(Key::Service));
        assert_eq!(keys.parse(&keys.function(7)), Some(Key::Function(7)));
        assert_eq!(keys.parse(&keys.workflow(100)), Some(Key::Workflow(100)));
        assert_eq!(keys.parse(&keys.worker(7, a)), Some(Key::Worker(7, a)));
        assert_eq!(keys.parse(&keys.worker(7, a6)), Some(Key::Worker(7, a6)));
        assert_eq!(
            keys.parse(&keys.dispatcher("d1")),
            Some(Key::Dispatcher("d1".into()))
        );
        for stranger in [
            "/faas-dispatcher/other/service",
            "/faas-dispatcher/prod/functions/x",
            "/faas-dispatcher/prod/workers/7/not-an-address",
            "/faas-dispatcher/prod/unknown",
        ] {
            assert_eq!(keys.parse(stranger), None, "{stranger}");
        }
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a/b").is_err());
    }

    #[test]
    fn the_membership_becomes_a_config() {
        let keys = Keys::new("t").unwrap();
        let mut m = Membership::default();
        let local = Config::parse("[service]\naddresses = [\"10.0.0.1\"]\n").unwrap();
        m.put(&keys, &keys.function(1), br#"{"policy":"hash"}"#, 0)
            .unwrap();
        m.put(
            &keys,
            &keys.worker(1, "10.0.0.10:9000".parse().unwrap()),
            br#"{"weight":2,"mac":"02:00:00:00:00:10"}"#,
            5,
        )
        .unwrap();
        m.put(
            &keys,
            &keys.worker(2, "10.0.0.11:9000".parse().unwrap()),
            br#"{}"#,
            6,
        )
        .unwrap();
        m.put(
            &keys,
            &keys.worker(2, "10.0.0.12:9000".parse().unwrap()),
            br#"{"state":"draining"}"#,
            7,
        )
        .unwrap();
        m.put(&keys, &keys.workflow(100), br#"{"steps":[1,2]}"#, 0)
            .unwrap();
        m.put(&keys, &keys.workflow(101), br#"{"steps":[1,9]}"#, 0)
            .unwrap();
        // A bad value is refused and changes nothing.
        assert!(m
            .put(&keys, &keys.function(1), br#"{"policy":"random"}"#, 0)
            .is_err());
        let c = m.to_config(&local);
        c.validate().unwrap();
        assert_eq!(c.service.addresses, local.service.addresses);
        assert_eq!(c.functions.len(), 2);
        assert_eq!(c.functions[0].policy, Policy::Hash);
        assert_eq!(c.functions[0].workers[0].weight, 2);
        assert_eq!(c.functions[1].policy, Policy::RoundRobin);
        assert_eq!(c.functions[1].workers.len(), 1, "draining left out");
        assert_eq!(c.workflows.len(), 1, "workflow 101 waits for function 9");
        m.delete(&keys, &keys.function(1));
        m.delete(&keys, &keys.worker(1, "10.0.0.10:9000".parse().unwrap()));
        assert_eq!(m.to_config(&local).functions.len(), 1);
    }
}
