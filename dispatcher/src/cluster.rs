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
    /// The prefix of function `function`'s workers.
    pub fn workers_of(&self, function: u32) -> String {
        format!("{}workers/{function}/", self.prefix)
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
            ("workers", Some(f), Some(addr)) => Some(Key::Worker(f.parse().ok()?, addr.parse().ok()?)),
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

/// Connects to etcd at `endpoints` (comma-separated URLs), or says why not
/// and what to check.
pub async fn connect(endpoints: &[String]) -> Result<etcd_client::Client> {
    if endpoints.is_empty() {
        bail!("--etcd: name at least one etcd endpoint, like http://127.0.0.1:2379");
    }
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    etcd_client::Client::connect(endpoints, Some(options))
        .await
        .with_context(|| {
            format!(
                "cannot reach etcd at {} (is it running, and are the URLs its --advertise-client-urls?)",
                endpoints.join(",")
            )
        })
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
