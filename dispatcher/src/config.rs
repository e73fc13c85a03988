//! The TOML configuration of `dispatcher run`.
//!
//! ```toml
//! [service]
//! addresses = ["10.0.0.1"]   # the VIPs clients send requests to
//! port = 7770                # default 7770
//!
//! [[functions]]
//! id = 1
//! policy = "round-robin"     # round-robin | least-loaded | p2c | hash
//! workers = [
//!   { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:0a", weight = 1 },
//! ]
//!
//! [[workflows]]              # REQUEST for id 100 runs function 1, then 2
//! id = 100
//! steps = [1, 2]
//!
//! [egress]                   # optional: two-arm, out of another interface
//! redirect_to = "eth1"
//! ```

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{bail, Context as _, Result};
use dispatcher_common::{
    maps::{
        family, policy, worker_state, Worker, MAX_FUNCTIONS, MAX_SERVICES,
        MAX_WORKERS_PER_FUNCTION, MAX_WORKFLOWS, MAX_WORKFLOW_STEPS,
    },
    protocol::DEFAULT_SERVICE_PORT,
};
use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub service: Service,
    #[serde(default)]
    pub functions: Vec<FunctionConfig>,
    #[serde(default)]
    pub workflows: Vec<WorkflowConfig>,
    #[serde(default)]
    pub egress: Egress,
    /// Heartbeats and health checking; none without this section.
    pub health: Option<HealthConfig>,
    #[serde(default)]
    pub neighbours: Neighbours,
    /// `[metrics] listen = "127.0.0.1:9110"`: a Prometheus text endpoint.
    pub metrics: Option<Metrics>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub listen: SocketAddr,
}

/// `[neighbours]`: how often MACs learned from the neighbour table are
/// checked again.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Neighbours {
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
}

impl Default for Neighbours {
    fn default() -> Self {
        Neighbours {
            refresh_ms: default_refresh_ms(),
        }
    }
}

fn default_refresh_ms() -> u64 {
    5000
}

/// `[health]`: where workers send heartbeats (docs/control-protocol.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Address and UDP port the daemon receives heartbeats on.
    pub listen: SocketAddr,
    /// The shared key heartbeats are authenticated with (HMAC-SHA256).
    pub key: String,
    /// Only workers in these networks may send heartbeats.
    pub networks: Vec<ipnet::IpNet>,
    /// A worker silent this long is marked down.
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
}

fn default_down_after_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Send dispatched requests out of this interface (XDP_REDIRECT)
    /// instead of back out of the receiving one (XDP_TX).
    pub redirect_to: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkflowConfig {
    /// The id clients invoke (in the FaaS header's function_id); distinct
    /// from every function id.
    pub id: u32,
    /// Function ids of the steps, in order.
    pub steps: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service addresses (VIPs), IPv4 or IPv6.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    DEFAULT_SERVICE_PORT
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    pub id: u32,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    RoundRobin,
    LeastLoaded,
    P2c,
    Hash,
}

impl Policy {
    pub fn to_map(self) -> u8 {
        match self {
            Policy::RoundRobin => policy::ROUND_ROBIN,
            Policy::LeastLoaded => policy::LEAST_LOADED,
            Policy::P2c => policy::P2C,
            Policy::Hash => policy::HASH,
        }
    }

    /// The policy of a FUNCTIONS entry's `policy` byte.
    pub fn of_map(p: u8) -> Option<Policy> {
        match p {
            policy::ROUND_ROBIN => Some(Policy::RoundRobin),
            policy::LEAST_LOADED => Some(Policy::LeastLoaded),
            policy::P2C => Some(Policy::P2c),
            policy::HASH => Some(Policy::Hash),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// `IP:PORT`, or `[IPv6]:PORT`.
    pub addr: SocketAddr,
    /// The worker's MAC (or its gateway's), written "02:00:00:00:00:0a".
    /// Without it, the daemon learns it from the kernel's neighbour table.
    #[serde(default, deserialize_with = "mac_from_str")]
    pub mac: Option<MacAddr6>,
    #[serde(default = "default_weight")]
    pub weight: u16,
}

/// MACs as people write them; macaddr's own serde form is a byte array.
fn mac_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<MacAddr6>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not a MAC address (write it as 02:00:00:00:00:0a)"
        ))
    })
}

fn default_weight() -> u16 {
    1
}

impl WorkerConfig {
    /// The `WORKERS` map value for this worker, up.
    pub fn to_map(&self, function_id: u32) -> Result<Worker> {
        let Some(mac) = self.mac else {
            bail!(
                "functions.workers: worker {} of function {function_id} has no `mac` and none was learned: \
                 add mac = \"xx:xx:xx:xx:xx:xx\" (the worker's MAC, or its gateway's)",
                self.addr
            );
        };
        let mut w = Worker {
            mac: mac.into_array(),
            port: self.addr.port().to_be_bytes(),
            weight: self.weight,
            state: worker_state::UP,
            ..Default::default()
        };
        match self.addr.ip() {
            IpAddr::V4(a) => {
                w.addr[..4].copy_from_slice(&a.octets());
                w.family = family::IPV4;
            }
            IpAddr::V6(a) => {
                w.addr = a.octets();
                w.family = family::IPV6;
            }
        }
        Ok(w)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot: limits, duplicates, required fields.
    pub fn validate(&self) -> Result<()> {
        if self.service.addresses.is_empty() {
            bail!("service.addresses is empty: list at least one service address (VIP), or pass --vip");
        }
        if self.service.addresses.len() > MAX_SERVICES as usize {
            bail!("service.addresses: at most {MAX_SERVICES} addresses are supported");
        }
        if self.service.port == 0 {
            bail!("service.port: 0 is not a usable port (the default is {DEFAULT_SERVICE_PORT})");
        }
        if self.functions.len() > MAX_FUNCTIONS as usize {
            bail!(
                "functions: at most {MAX_FUNCTIONS} functions are supported, found {}",
                self.functions.len()
            );
        }
        let mut ids = HashSet::new();
        for f in &self.functions {
            if !ids.insert(f.id) {
                bail!("functions: id {} is listed twice", f.id);
            }
            if f.workers.len() > MAX_WORKERS_PER_FUNCTION as usize {
                bail!(
                    "functions.workers: function {} has {} workers, at most {MAX_WORKERS_PER_FUNCTION} are supported",
                    f.id,
                    f.workers.len()
                );
            }
            let mut addrs = HashSet::new();
            for w in &f.workers {
                if !addrs.insert(w.addr) {
                    bail!(
                        "functions.workers: worker {} is listed twice for function {}",
                        w.addr,
                        f.id
                    );
                }
                if w.weight == 0 {
                    bail!("functions.workers: worker {} of function {} has weight 0: use 1 or more (or leave it out)", w.addr, f.id);
                }
            }
        }
        if let Some(h) = &self.health {
            if h.key.len() < 16 {
                bail!("health.key: {} characters is too short to authenticate anything: use 16 or more", h.key.len());
            }
            if h.networks.is_empty() {
                bail!("health.networks is empty: list the networks workers send heartbeats from (e.g. \"10.0.0.0/24\")");
            }
            if h.down_after_ms < 50 {
                bail!("health.down_after_ms: {} ms would mark workers down between heartbeats; use 50 or more", h.down_after_ms);
            }
        }
        if self.workflows.len() > MAX_WORKFLOWS as usize {
            bail!("workflows: at most {MAX_WORKFLOWS} workflows are supported");
        }
        let mut workflow_ids = HashSet::new();
        for w in &self.workflows {
            if ids.contains(&w.id) {
                bail!("workflows: id {} is also a function id: workflow and function ids share one space (clients send either in function_id)", w.id);
            }
            if !workflow_ids.insert(w.id) {
                bail!("workflows: id {} is listed twice", w.id);
            }
            if w.steps.is_empty() || w.steps.len() > MAX_WORKFLOW_STEPS {
                bail!(
                    "workflows: workflow {} has {} steps; give 1 to {MAX_WORKFLOW_STEPS}",
                    w.id,
                    w.steps.len()
                );
            }
            if let Some(missing) = w.steps.iter().find(|s| !ids.contains(s)) {
                bail!(
                    "workflows: workflow {} runs function {missing}, which is not in [[functions]]",
                    w.id
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example the Debian package installs as
    /// /etc/dispatcher/example.toml is a config the daemon takes.
    #[test]
    fn the_packaged_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/example.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.functions.len(), 2);
        assert!(config.health.is_some() && config.metrics.is_some());
    }

    const GOOD: &str = r#"
        [service]
        addresses = ["10.0.0.1", "fd00::1"]

        [[functions]]
        id = 7
        policy = "p2c"
        workers = [
          { addr = "10.0.0.10:9000", mac = "02:00:00:00:00:0a" },
          { addr = "[fd00::10]:9000", mac = "02:00:00:00:00:0b", weight = 3 },
        ]
    "#;

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.service.port, 7770);
        assert_eq!(c.functions[0].policy, Policy::P2c);
        let w = c.functions[0].workers[1].to_map(7).unwrap();
        assert_eq!(w.family, family::IPV6);
        assert_eq!(w.weight, 3);
        assert_eq!(w.port, 9000u16.to_be_bytes());
        assert_eq!(w.mac, [2, 0, 0, 0, 0, 0x0b]);
        let w = c.functions[0].workers[0].to_map(7).unwrap();
        assert_eq!(&w.addr[..4], &[10, 0, 0, 10]);
        assert_eq!(&w.addr[4..], &[0; 12]);
    }

    fn err(text: &str) -> String {
        format!("{:#}", Config::parse(text).unwrap_err())
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        assert!(err("[service]\naddresses = []").contains("service.addresses is empty"));
        assert!(err("[service]\naddresses = [\"10.0.0.1\"]\nport = 0").contains("service.port"));
        assert!(err("[service]\naddresses = [\"10.0.0.1\"]\nbogus = 1")
            .contains("unknown field `bogus`"));
        assert!(err("[service]\naddresses = [\"nope\"]").contains("invalid IP address"));
        let dup =
            "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\n[[functions]]\nid = 1";
        assert!(err(dup).contains("id 1 is listed twice"));
        let no_mac = "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\nworkers = [{ addr = \"10.0.0.2:1\" }]";
        let parsed = Config::parse(no_mac).expect("a MAC may be left to the neighbour table");
        assert!(format!(
            "{:#}",
            parsed.functions[0].workers[0].to_map(1).unwrap_err()
        )
        .contains("has no `mac`"));
        let bad_policy =
            "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\npolicy = \"random\"";
        assert!(err(bad_policy).contains("unknown variant `random`"));
        let clash = "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\n[[workflows]]\nid = 1\nsteps = [1]";
        assert!(err(clash).contains("also a function id"));
        let missing = "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\n[[workflows]]\nid = 9\nsteps = [1, 2]";
        assert!(err(missing).contains("runs function 2, which is not in [[functions]]"));
        let long = "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\n[[workflows]]\nid = 9\nsteps = [1,1,1,1,1,1,1,1,1]";
        assert!(err(long).contains("has 9 steps"));
        let health = |key: &str, nets: &str, down: u64| {
            format!("[service]\naddresses = [\"10.0.0.1\"]\n[health]\nlisten = \"10.0.0.1:7771\"\nkey = \"{key}\"\nnetworks = [{nets}]\ndown_after_ms = {down}")
        };
        assert!(Config::parse(&health("0123456789abcdef", "\"10.0.0.0/24\"", 500)).is_ok());
        assert!(err(&health("short", "\"10.0.0.0/24\"", 500)).contains("health.key"));
        assert!(err(&health("0123456789abcdef", "", 500)).contains("health.networks is empty"));
        assert!(
            err(&health("0123456789abcdef", "\"10.0.0.0/33\"", 500)).contains("invalid IP address")
        );
        assert!(err(&health("0123456789abcdef", "\"10.0.0.0/24\"", 10))
            .contains("health.down_after_ms"));
        let bad_mac = "[service]\naddresses = [\"10.0.0.1\"]\n[[functions]]\nid = 1\nworkers = [{ addr = \"10.0.0.2:1\", mac = \"02:00\" }]";
        assert!(err(bad_mac).contains("`02:00` is not a MAC address"));
    }
}
