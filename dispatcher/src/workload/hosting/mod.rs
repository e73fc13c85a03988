//! Function hosting: what runs a request once `dispatcher serve` has taken
//! it off the wire. One function per id, each of one kind
//! (docs/worker-api.md):
//!
//! - a built-in ([`builtin`]), run inline on the answer thread;
//! - `exec:CMD` ([`exec`]), a process per request: payload on stdin,
//!   answer on stdout;
//! - `warm:CMD` ([`warm`]), a pool of long-lived processes, each taking one
//!   request at a time in the frames of [`frame`];
//! - `http:URL` ([`http`]), a POST to the function's own HTTP server.
//!
//! Every function has its own concurrency limit ([`Slot`]): a request
//! beyond it is answered BUSY at once, so the limit holds exactly however
//! many dispatchers send to this worker. User code runs in a [`sandbox`].

pub mod builtin;
pub mod exec;
pub mod frame;
pub mod http;
pub mod sandbox;
pub mod warm;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    str::FromStr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
pub use builtin::FunctionKind;
use serde::Deserialize;

use crate::wire::Message;

/// One request as hosted code sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Call {
    pub function_id: u32,
    pub request_id: u64,
    pub key: u64,
    pub workflow_id: u32,
    pub step: u8,
    pub payload: Vec<u8>,
}

impl Call {
    pub fn of(msg: &Message) -> Call {
        Call {
            function_id: msg.hdr.function_id(),
            request_id: msg.hdr.request_id(),
            key: msg.hdr.key(),
            workflow_id: msg.hdr.workflow_id(),
            step: msg.hdr.step,
            payload: msg.payload.clone(),
        }
    }

    /// The request's ids as environment variables (exec) and as HTTP
    /// headers (http), by the names docs/worker-api.md gives.
    pub fn ids(&self) -> [(&'static str, String); 5] {
        [
            ("FUNCTION_ID", self.function_id.to_string()),
            ("REQUEST_ID", self.request_id.to_string()),
            ("KEY", self.key.to_string()),
            ("WORKFLOW_ID", self.workflow_id.to_string()),
            ("STEP", self.step.to_string()),
        ]
    }
}

/// How a hosted function answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The RESPONSE's payload (or the next STEP's).
    Output(Vec<u8>),
    /// ERROR 6 with this text.
    Failed(String),
    /// ERROR 5 with this text: the output does not fit one datagram.
    TooLarge(String),
    /// The function's own server said it is overloaded (HTTP 429/503):
    /// BUSY, so that the dispatcher re-steers the request.
    Busy(String),
}

/// What serves a function id, as written after `ID=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Builtin(FunctionKind),
    /// `exec:CMD`.
    Exec(String),
    /// `warm:CMD`.
    Warm(String),
    /// `http:URL`.
    Http(String),
}

impl FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Kind> {
        let (kind, arg) = match s.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg.trim())),
            None => (s, None),
        };
        let needs = |what: &str| match arg {
            Some(a) if !a.is_empty() => Ok(a.to_string()),
            _ => bail!("`{s}`: {kind} needs {what} after `{kind}:`"),
        };
        Ok(match kind {
            "exec" => Kind::Exec(needs("a command")?),
            "warm" => Kind::Warm(needs("a command")?),
            "http" => Kind::Http(needs("a URL (http://HOST:PORT/PATH)")?),
            builtin if arg.is_none() => Kind::Builtin(builtin.parse()?),
            other => bail!(
                "`{s}`: unknown kind `{other}`; a function is a built-in (echo, ...), exec:CMD, warm:CMD or http:URL"
            ),
        })
    }
}

impl Kind {
    /// Runs the user's code as a process (so needs a user to run it as).
    pub fn runs_processes(&self) -> bool {
        matches!(self, Kind::Exec(_) | Kind::Warm(_))
    }
}

/// A function's settings: its kind and, for hosted kinds, the limits it
/// runs under.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionConfig {
    pub kind: Kind,
    /// Past this, the request is answered ERROR 6 (processes are killed).
    pub timeout: Duration,
    /// Requests beyond this many in flight are answered BUSY.
    pub max_inflight: Option<u32>,
    /// Warm processes, exec processes at once, or connections to the
    /// HTTP server.
    pub pool: u32,
    pub env: Vec<(String, String)>,
}

/// Settings every function starts from (the flags), before the config
/// file's per-function ones.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub timeout: Duration,
    pub max_inflight: Option<u32>,
    pub pool: Option<u32>,
}

impl Default for Defaults {
    fn default() -> Defaults {
        Defaults {
            timeout: Duration::from_secs(30),
            max_inflight: None,
            pool: None,
        }
    }
}

/// Warm processes or HTTP connections when nothing says how many: as
/// many as may be in flight, else this.
pub const DEFAULT_POOL: u32 = 4;

impl Defaults {
    fn config(&self, kind: Kind) -> FunctionConfig {
        FunctionConfig {
            kind,
            timeout: self.timeout,
            max_inflight: self.max_inflight,
            pool: self
                .pool
                .or(self.max_inflight)
                .unwrap_or(DEFAULT_POOL)
                .max(1),
            env: Vec::new(),
        }
    }
}

/// Which function answers which function id, and how.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionTable {
    by_id: BTreeMap<u32, FunctionConfig>,
    /// The function that answers every id not mapped (`--functions echo`).
    any: Option<FunctionConfig>,
}

/// `dispatcher serve --config FILE` (docs/worker-api.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default)]
    pub functions: Vec<FunctionEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionEntry {
    pub id: u32,
    /// The part after `ID=` on the command line: `warm:python3 h.py`.
    pub run: String,
    pub timeout_ms: Option<u64>,
    pub max_inflight: Option<u32>,
    pub pool: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<ConfigFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the worker config {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "{}: not a worker config (docs/worker-api.md)",
                path.display()
            )
        })
    }
}

impl FunctionTable {
    /// `--functions echo` or `--functions 1=echo,2=upper` (built-ins only:
    /// commands and URLs may hold commas; give those with --function).
    pub fn add_list(&mut self, list: &str, defaults: &Defaults) -> Result<()> {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some(_) => self.add(item, defaults)?,
                None => self.add_any(item.parse()?, defaults, item)?,
            }
        }
        Ok(())
    }

    /// `--function ID=KIND[:ARG]` (or a bare built-in for every id).
    pub fn add(&mut self, spec: &str, defaults: &Defaults) -> Result<()> {
        let Some((id, kind)) = spec.split_once('=') else {
            return self.add_any(spec.parse()?, defaults, spec);
        };
        let id: u32 = id
            .trim()
            .parse()
            .with_context(|| format!("`{spec}`: function id `{id}` is not a number"))?;
        let kind: Kind = kind.trim().parse()?;
        if self.by_id.insert(id, defaults.config(kind)).is_some() {
            bail!("`{spec}`: function {id} is given twice; give each id once");
        }
        Ok(())
    }

    fn add_any(&mut self, kind: Kind, defaults: &Defaults, item: &str) -> Result<()> {
        if self.any.is_some() {
            bail!("`{item}`: only one function may serve every id; map ids with ID=NAME");
        }
        self.any = Some(defaults.config(kind));
        Ok(())
    }

    /// The config file's functions, over what the flags said.
    pub fn add_file(&mut self, file: &ConfigFile, defaults: &Defaults) -> Result<()> {
        for entry in &file.functions {
            let mut config = defaults.config(entry.run.parse()?);
            if let Some(ms) = entry.timeout_ms {
                config.timeout = Duration::from_millis(ms);
            }
            if entry.max_inflight.is_some() {
                config.max_inflight = entry.max_inflight;
            }
            config.pool = entry
                .pool
                .or(entry.max_inflight)
                .unwrap_or(config.pool)
                .max(1);
            config.env = entry.env.clone().into_iter().collect();
            if self.by_id.insert(entry.id, config).is_some() {
                bail!(
                    "function {} is given twice (flags and config file); give each id once",
                    entry.id
                );
            }
        }
        Ok(())
    }

    /// Whether nothing was given.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty() && self.any.is_none()
    }

    /// The ids mapped explicitly (ID=KIND), in order.
    pub fn ids(&self) -> Vec<u32> {
        self.by_id.keys().copied().collect()
    }

    #[cfg(test)]
    fn lookup(&self, function_id: u32) -> Option<&FunctionConfig> {
        self.by_id.get(&function_id).or(self.any.as_ref())
    }

    fn all(&self) -> impl Iterator<Item = (Option<u32>, &FunctionConfig)> {
        self.by_id
            .iter()
            .map(|(id, c)| (Some(*id), c))
            .chain(self.any.iter().map(|c| (None, c)))
    }

    /// Whether any function runs the user's code as processes.
    pub fn runs_processes(&self) -> bool {
        self.all().any(|(_, c)| c.kind.runs_processes())
    }

    /// Whether any function has a concurrency limit.
    pub fn has_limits(&self) -> bool {
        self.all().any(|(_, c)| c.max_inflight.is_some())
    }
}

/// `--functions` with the flags' defaults (for tests: serve adds each
/// source with its own defaults).
#[cfg(test)]
impl FromStr for FunctionTable {
    type Err = anyhow::Error;
    fn from_str(list: &str) -> Result<FunctionTable> {
        let mut table = FunctionTable::default();
        table.add_list(list, &Defaults::default())?;
        if table.is_empty() {
            bail!("no functions given: pass --functions echo (or ID=NAME,...)");
        }
        Ok(table)
    }
}

/// A function's share of the worker's requests in flight: at most
/// `limit` at once, counted exactly (an atomic compare-and-swap per
/// request), and added to the worker's total that its load reports carry.
#[derive(Debug)]
pub struct Slots {
    limit: Option<u32>,
    held: AtomicU32,
    worker: Arc<AtomicU32>,
}

/// One request's place in its function's slots, given back on drop (when
/// its answer has left).
#[derive(Debug)]
pub struct Slot(Arc<Function>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.held.fetch_sub(1, Ordering::AcqRel);
        self.0.slots.worker.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A function, started.
#[derive(Debug)]
pub struct Function {
    pub id: Option<u32>,
    pub runner: Runner,
    slots: Slots,
}

#[derive(Debug)]
pub enum Runner {
    Builtin(FunctionKind),
    Exec(exec::Exec),
    Warm(warm::Pool),
    Http(Box<http::Upstream>),
}

impl Function {
    /// A place for one more request, or None at the limit.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let limit = self.slots.limit;
        self.slots
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                limit.is_none_or(|max| held < max).then_some(held + 1)
            })
            .ok()?;
        self.slots.worker.fetch_add(1, Ordering::Relaxed);
        Some(Slot(self.clone()))
    }

    /// Requests of this function in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> u32 {
        self.slots.held.load(Ordering::Acquire)
    }

    /// Runs a hosted (not built-in) function.
    pub async fn call(&self, call: Call) -> Outcome {
        match &self.runner {
            Runner::Builtin(_) => unreachable!("built-ins run on the answer thread"),
            Runner::Exec(e) => e.call(&call).await,
            Runner::Warm(p) => p.call(&call).await,
            Runner::Http(u) => u.call(&call).await,
        }
    }
}

/// Every function, started: processes spawned, HTTP clients made.
#[derive(Debug, Default)]
pub struct Functions {
    by_id: HashMap<u32, Arc<Function>>,
    any: Option<Arc<Function>>,
}

impl Functions {
    /// Starts `table`'s functions; `in_flight` is the worker's total.
    /// Needs a Tokio runtime (processes and connections live on it).
    pub fn start(
        table: &FunctionTable,
        sandbox: Option<sandbox::Sandbox>,
        in_flight: Arc<AtomicU32>,
    ) -> Result<Functions> {
        let sandbox = sandbox.map(Arc::new);
        let mut functions = Functions::default();
        for (id, config) in table.all() {
            let name = id.map_or("every id".to_string(), |id| format!("function {id}"));
            let runner = match &config.kind {
                Kind::Builtin(kind) => Runner::Builtin(*kind),
                Kind::Http(url) => Runner::Http(Box::new(http::Upstream::new(url, config)?)),
                Kind::Exec(_) | Kind::Warm(_) => {
                    let Some(sandbox) = sandbox.clone() else {
                        bail!("{name} runs processes: it needs a sandbox (--run-as)");
                    };
                    match &config.kind {
                        Kind::Exec(cmd) => Runner::Exec(exec::Exec::new(cmd, config, sandbox)?),
                        Kind::Warm(cmd) => Runner::Warm(
                            warm::Pool::start(cmd, config, sandbox, &name)
                                .with_context(|| format!("{name} ({cmd})"))?,
                        ),
                        _ => unreachable!(),
                    }
                }
            };
            let function = Arc::new(Function {
                id,
                runner,
                slots: Slots {
                    limit: config.max_inflight,
                    held: AtomicU32::new(0),
                    worker: in_flight.clone(),
                },
            });
            match id {
                Some(id) => {
                    functions.by_id.insert(id, function);
                }
                None => functions.any = Some(function),
            }
        }
        Ok(functions)
    }

    pub fn lookup(&self, function_id: u32) -> Option<&Arc<Function>> {
        self.by_id.get(&function_id).or(self.any.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_kind_per_id() {
        let d = Defaults::default();
        let mut t = FunctionTable::default();
        t.add("1=exec:sh -c 'tr a-z A-Z'", &d).unwrap();
        t.add("2=warm:python3 handler.py", &d).unwrap();
        t.add("3=http:http://127.0.0.1:8080/", &d).unwrap();
        t.add("4=echo", &d).unwrap();
        assert_eq!(
            t.lookup(1).unwrap().kind,
            Kind::Exec("sh -c 'tr a-z A-Z'".into())
        );
        assert_eq!(
            t.lookup(2).unwrap().kind,
            Kind::Warm("python3 handler.py".into())
        );
        assert_eq!(
            t.lookup(3).unwrap().kind,
            Kind::Http("http://127.0.0.1:8080/".into())
        );
        assert_eq!(t.lookup(4).unwrap().kind, Kind::Builtin(FunctionKind::Echo));
        assert!(t.lookup(5).is_none());
        assert!(t.runs_processes());
        let err = |spec: &str| format!("{:#}", FunctionTable::default().add(spec, &d).unwrap_err());
        assert!(err("x=echo").contains("not a number"));
        assert!(err("1=exec:").contains("needs a command"));
        assert!(err("1=ftp:x").contains("unknown kind"));
        assert!(err("1=resize").contains("unknown function"));
        assert!(t
            .add("1=echo", &d)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn the_old_list_still_works() {
        let t: FunctionTable = "echo".parse().unwrap();
        assert_eq!(
            t.lookup(77).unwrap().kind,
            Kind::Builtin(FunctionKind::Echo)
        );
        let t: FunctionTable = "3=echo,4=upper".parse().unwrap();
        assert_eq!(t.ids(), [3, 4]);
        assert!("".parse::<FunctionTable>().is_err());
        assert!("echo,upper".parse::<FunctionTable>().is_err());
    }

    #[test]
    fn the_pool_follows_the_limit_unless_given() {
        let mut d = Defaults {
            max_inflight: Some(3),
            ..Defaults::default()
        };
        let mut t = FunctionTable::default();
        t.add("1=warm:cat", &d).unwrap();
        assert_eq!(t.lookup(1).unwrap().pool, 3);
        d.pool = Some(8);
        t.add("2=warm:cat", &d).unwrap();
        assert_eq!(t.lookup(2).unwrap().pool, 8);
        let file: ConfigFile = toml::from_str(
            "[[functions]]\nid = 9\nrun = \"exec:wc -c\"\ntimeout_ms = 250\nmax_inflight = 2\nenv = { A = \"b\" }\n",
        )
        .unwrap();
        t.add_file(&file, &Defaults::default()).unwrap();
        let nine = t.lookup(9).unwrap();
        assert_eq!(
            (nine.timeout, nine.max_inflight, nine.pool, nine.env.clone()),
            (
                Duration::from_millis(250),
                Some(2),
                2,
                vec![("A".into(), "b".into())]
            )
        );
        assert!(
            toml::from_str::<ConfigFile>("[[functions]]\nid = 1\nrun = \"echo\"\nbogus = 1\n")
                .is_err()
        );
    }

    #[test]
    fn slots_hold_exactly_the_limit() {
        let total = Arc::new(AtomicU32::new(0));
        let f = Arc::new(Function {
            id: Some(1),
            runner: Runner::Builtin(FunctionKind::Echo),
            slots: Slots {
                limit: Some(2),
                held: AtomicU32::new(0),
                worker: total.clone(),
            },
        });
        let a = f.try_acquire().unwrap();
        let _b = f.try_acquire().unwrap();
        assert!(f.try_acquire().is_none());
        assert_eq!(total.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(f.in_flight(), 1);
        assert!(f.try_acquire().is_some());
        assert_eq!(
            total.load(Ordering::Relaxed),
            1,
            "the dropped slot came back"
        );
    }
}
