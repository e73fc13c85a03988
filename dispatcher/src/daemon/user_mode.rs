//! `dispatcher run --mode user`: the same protocol and policies served from
//! user space, for hosts where XDP is unavailable and as the baseline that
//! shows what the kernel path buys.
//!
//! The decisions are the reference model's (`dispatcher_common::model`, the
//! code the kernel program is tested against), over tables held in memory
//! and built by the same functions the control plane uses for the maps
//! (`tables::ring`, `tables::hash_table`). Datagrams arrive on the service port
//! and leave toward the chosen worker in recvmmsg/sendmmsg batches, with
//! `reply_*` set, so the worker answers the client directly, as it does
//! behind the XDP program.
//!
//! What user mode does not do: the CLI, health and metrics act on the XDP
//! data plane's pinned maps, which user mode has none of. It reloads its
//! config on SIGHUP and logs its counters when it stops.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    net::{Ipv6Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use dispatcher_common::{
    maps::{
        policy, worker_state, Endpoint, Function, Geometry, Load, Settings, Worker, Workflow,
        LL_CANDIDATES, MAX_WORKFLOW_STEPS,
    },
    model::View,
    stats::Counter,
};
use tracing::{info, warn};

use crate::{
    config::Config,
    control::tables::{self, Member},
    daemon::slow_path::{answer, Answer},
    endpoints::endpoint,
    udp_batch::{BatchReceiver, BatchSender},
};

/// A config's functions, workers and workflows as the model reads them.
pub struct Tables {
    services: HashSet<Endpoint>,
    functions: HashMap<u32, Function>,
    workflows: HashMap<u32, Workflow>,
    /// By `Function::worker_index` (the host geometry's layout).
    workers: HashMap<u32, Worker>,
    registered: HashSet<Endpoint>,
    /// By function index: the ring and (hash policy) the Maglev table.
    rings: Vec<Vec<u8>>,
    maglevs: Vec<Vec<u8>>,
    /// Requests sent to each worker (least-loaded and p2c count them, as
    /// the kernel program does between heartbeats).
    loads: HashMap<u32, Cell<u64>>,
    /// Round-robin turns, by function index.
    turns: Vec<Cell<u32>>,
}

impl Tables {
    pub fn new(config: &Config) -> Result<Tables> {
        let mut t = Tables {
            services: config
                .service
                .addresses
                .iter()
                .map(|a| endpoint(*a, config.service.port))
                .collect(),
            functions: HashMap::new(),
            workflows: HashMap::new(),
            workers: HashMap::new(),
            registered: HashSet::new(),
            rings: Vec::new(),
            maglevs: Vec::new(),
            loads: HashMap::new(),
            turns: Vec::new(),
        };
        let g = Geometry::HOST;
        for (index, f) in config.functions.iter().enumerate() {
            let index = index as u32;
            let mut members = Vec::new();
            for (slot, w) in f.workers.iter().enumerate() {
                // No frame is rewritten here: the MAC does not matter.
                let w = crate::config::WorkerConfig {
                    mac: Some(w.mac.unwrap_or_default()),
                    ..w.clone()
                }
                .to_map(f.id)?;
                let i = g.worker_base(index) + slot as u32;
                t.workers.insert(i, w);
                t.loads.insert(i, Cell::new(0));
                t.registered
                    .insert(endpoint(w_ip(&w), u16::from_be_bytes(w.port)));
                if w.state == worker_state::UP {
                    members.push(Member {
                        slot: slot as u8,
                        weight: w.weight.max(1),
                        key: Member::key_of(crate::endpoints::worker_socket_addr(&w)),
                    });
                }
            }
            let policy = f.policy.to_map();
            let mut ll_slots = [0u8; LL_CANDIDATES];
            let ll_count = members.len().min(LL_CANDIDATES);
            for (k, m) in members.iter().take(ll_count).enumerate() {
                ll_slots[k] = m.slot;
            }
            t.functions.insert(
                f.id,
                Function {
                    index,
                    worker_base: g.worker_base(index),
                    ring_mask: (g.ring_size - 1) as u16,
                    maglev_mask: (g.maglev_size_for(f.workers.len() as u32) - 1) as u16,
                    policy,
                    up_count: members.len() as u16,
                    ll_count: ll_count as u8,
                    ll_slots,
                    slot_end: f.workers.len() as u16,
                    ..Default::default()
                },
            );
            t.rings.push(tables::ring(&members, g.ring_size));
            t.maglevs.push(if policy == policy::HASH {
                tables::hash_table(&members, g.maglev_size_for(f.workers.len() as u32))
            } else {
                Vec::new()
            });
            t.turns.push(Cell::new(0));
        }
        for w in &config.workflows {
            let mut functions = [0u32; MAX_WORKFLOW_STEPS];
            functions[..w.steps.len()].copy_from_slice(&w.steps);
            t.workflows.insert(
                w.id,
                Workflow {
                    step_count: w.steps.len() as u32,
                    functions,
                },
            );
        }
        Ok(t)
    }

    /// A request went to `worker_index` under `policy`.
    fn dispatched(&self, worker_index: u32, policy: u8) {
        if matches!(policy, policy::LEAST_LOADED | policy::P2C) {
            if let Some(load) = self.loads.get(&worker_index) {
                load.set(load.get() + 1);
            }
        }
    }
}

fn w_ip(w: &Worker) -> std::net::IpAddr {
    crate::endpoints::worker_socket_addr(w).ip()
}

impl View for Tables {
    fn is_service(&self, e: &Endpoint) -> bool {
        self.services.contains(e)
    }
    fn is_registered(&self, e: &Endpoint) -> bool {
        self.registered.contains(e)
    }
    fn function(&self, id: u32) -> Option<Function> {
        self.functions.get(&id).copied()
    }
    fn workflow(&self, id: u32) -> Option<Workflow> {
        self.workflows.get(&id).copied()
    }
    fn worker(&self, index: u32) -> Option<Worker> {
        self.workers.get(&index).copied()
    }
    fn ring_slot(&self, f: &Function, position: u32) -> Option<u8> {
        self.rings
            .get(f.index as usize)?
            .get((position & f.ring_mask as u32) as usize)
            .copied()
    }
    fn maglev_slot(&self, f: &Function, position: u32) -> Option<u8> {
        self.maglevs
            .get(f.index as usize)?
            .get((position & f.maglev_mask as u32) as usize)
            .copied()
    }
    fn load(&self, worker_index: u32) -> Option<u32> {
        let weight = self.workers.get(&worker_index)?.weight;
        let in_flight = self.loads.get(&worker_index)?.get();
        Some(Load::new(in_flight.min(u32::MAX as u64) as u32, weight).rank())
    }
    fn settings(&self) -> Option<Settings> {
        Some(Settings::default())
    }
    /// Takes the turn (the kernel's fetch-add on RR_CURSORS).
    fn turn(&self, function_index: u32) -> u32 {
        self.turns
            .get(function_index as usize)
            .map_or(0, |t| t.replace(t.get().wrapping_add(1)))
    }
}

/// Datagrams per recvmmsg/sendmmsg.
const BATCH: usize = 64;

/// Tells the serving thread to swap tables or stop.
#[derive(Default)]
pub struct Control {
    pub stop: AtomicBool,
    pub next: Mutex<Option<Config>>,
}

/// Serves the service port until `control.stop` is set; returns the
/// counters of what it did.
pub fn serve(config: &Config, control: Arc<Control>) -> Result<Vec<(Counter, u64)>> {
    let port = config.service.port;
    // One dual-stack socket: IPv4 sources arrive IPv4-mapped.
    let socket = UdpSocket::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
        .with_context(|| {
            format!("cannot bind the service port {port} (is another process using it?)")
        })?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &(8 << 20));
    let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
    let mut tables = Tables::new(config)?;
    info!(
        port,
        functions = config.functions.len(),
        "user mode: dispatching from user space"
    );
    let mut counts = vec![0u64; Counter::ALL.len()];
    let mut receiver = BatchReceiver::new(BATCH, 65_536);
    let mut sender = BatchSender::new(BATCH);
    let mut out: Vec<(Vec<u8>, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    let random = RandomState::new();
    let mut seq = 0u64;
    while !control.stop.load(Ordering::Relaxed) {
        if let Some(config) = control.next.lock().expect("not poisoned").take() {
            match Tables::new(&config) {
                Ok(t) => {
                    tables = t;
                    info!("SIGHUP: configuration reloaded");
                }
                Err(e) => warn!("SIGHUP: configuration not reloaded, the running one stays: {e:#}"),
            }
        }
        let n = receiver.recv(&socket).context("cannot receive")?;
        out.clear();
        for k in 0..n {
            let (datagram, Some(from)) = receiver.get(k) else {
                continue;
            };
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            seq += 1;
            let counter = match answer(&tables, datagram, from, random.hash_one(seq) as u32) {
                Answer::Dispatch {
                    message,
                    to,
                    worker_index,
                    policy,
                    counter,
                } => {
                    tables.dispatched(worker_index, policy);
                    out.push((message.to_bytes(), Some(to)));
                    counter
                }
                Answer::Send {
                    message,
                    to,
                    reason,
                } => {
                    out.push((message.to_bytes(), Some(to)));
                    reason
                }
                Answer::Ignore(reason) => reason,
            };
            counts[counter as usize] += 1;
        }
        let sent = sender.send(&socket, &out).context("cannot send")?;
        if sent < out.len() {
            warn!(
                dropped = out.len() - sent,
                "send buffer full: datagrams dropped"
            );
        }
    }
    Ok(Counter::ALL
        .iter()
        .map(|c| (*c, counts[*c as usize]))
        .collect())
}
