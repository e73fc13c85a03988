//! `dispatcher run`: the daemon.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Result};
use dispatcher::{
    daemon::{self, RunOptions},
    data_plane::{offload::Device, Mode},
};
use dispatcher_common::maps::{Geometry, TABLE_CHUNK};

#[derive(clap::Args)]
pub struct Args {
    /// The interface to attach to (not used with --mode user).
    #[arg(long)]
    iface: Option<String>,
    /// XDP mode: drv (native), skb, hw (offloaded to the NIC: a
    /// Netronome NFP), or user (no XDP: dispatch from user space over
    /// UDP sockets). Default: drv, or skb where drv would not work (a
    /// driver without native XDP, a veth whose peer runs no XDP
    /// program); the log says which and why.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// With --mode drv on a veth whose peer is in a namespace this
    /// process cannot see (a pod's eth0): the peer does run an XDP
    /// program in driver mode, which drv mode on a veth needs.
    #[arg(long)]
    veth_peer_xdp: bool,
    /// TOML config: service addresses and port, functions and workers.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A service address (VIP), added to the config's; repeatable.
    #[arg(long = "vip")]
    vips: Vec<IpAddr>,
    /// The service UDP port (overrides the config's; default 7770).
    #[arg(long)]
    port: Option<u16>,
    /// On SIGTERM/SIGINT leave the data plane attached and pinned, for
    /// the next `dispatcher run` to adopt.
    #[arg(long)]
    keep_attached: bool,
    /// --mode hw: at most this many entries per map on the device (its
    /// map memory is small; netdevsim takes 2). The tables shrink to
    /// fit: fewer functions, workers per function, ring and Maglev slots.
    #[arg(long, value_name = "N")]
    hw_map_entries: Option<u32>,
    #[command(flatten)]
    geometry: GeometryArgs,
    #[command(flatten)]
    etcd: super::EtcdArgs,
    /// Cluster mode: this dispatcher's name among the cluster's
    /// (default: HOSTNAME-IFACE).
    #[arg(long, requires = "etcd")]
    node_name: Option<String>,
    /// Cluster mode: seconds this dispatcher's registration outlives it
    /// (workers stop sending it load reports after that).
    #[arg(long, default_value_t = 5, requires = "etcd")]
    lease_ttl: i64,
}

const GEOMETRY: &str = "Map geometry (host modes)";

/// How big the maps are in host memory (skb and drv modes): chosen when the
/// data plane is loaded, shown by `dispatcher maps dump geometry` with the
/// memory each map takes. An adopted data plane keeps the geometry it was
/// loaded with.
#[derive(clap::Args, Debug, Default)]
struct GeometryArgs {
    /// Function rows in the maps, 1 to 65,536 [default: 1,024].
    #[arg(long, value_name = "N", help_heading = GEOMETRY)]
    max_functions: Option<u32>,
    /// Worker slots per function: a power of two up to 256 [default: 64].
    #[arg(long, value_name = "N", help_heading = GEOMETRY)]
    max_workers_per_function: Option<u32>,
    /// Round-robin ring length per function: a power of two from 32 to
    /// 1,024, at least the workers per function [default: 256].
    #[arg(long, value_name = "N", help_heading = GEOMETRY)]
    ring_size: Option<u32>,
    /// The longest hash table a function may have (consistent hash): a
    /// power of two from 32 to 65,536, at least the workers per function.
    /// Each function's table is sized by its workers (at least 256 slots
    /// per worker: 256, 1,024, 4,096, 16,384, 65,536) up to this; a table
    /// capped shorter is a Maglev table instead of a rendezvous one
    /// [default: 16,384].
    #[arg(long, value_name = "N", help_heading = GEOMETRY)]
    maglev_size: Option<u32>,
    /// Workflows, 1 to 65,536 [default: 1,024].
    #[arg(long, value_name = "N", help_heading = GEOMETRY)]
    max_workflows: Option<u32>,
    /// Slots (bytes) of the pool the hash functions' tables come
    /// from, two generations each: a multiple of 32, at least 512
    /// [default: room for every function to hold the table of a full
    /// worker set, 32 MiB with the defaults].
    #[arg(long, value_name = "SLOTS", help_heading = GEOMETRY)]
    maglev_pool: Option<u64>,
}

impl GeometryArgs {
    fn any(&self) -> bool {
        self.max_functions.is_some()
            || self.max_workers_per_function.is_some()
            || self.ring_size.is_some()
            || self.maglev_size.is_some()
            || self.max_workflows.is_some()
            || self.maglev_pool.is_some()
    }

    /// The default host geometry with the flags given, validated.
    fn geometry(&self) -> Result<Geometry> {
        let h = Geometry::HOST;
        let mut g = Geometry {
            functions: self.max_functions.unwrap_or(h.functions),
            workers_per_function: self
                .max_workers_per_function
                .unwrap_or(h.workers_per_function),
            ring_size: self.ring_size.unwrap_or(h.ring_size),
            maglev_size: self.maglev_size.unwrap_or(h.maglev_size),
            workflows: self.max_workflows.unwrap_or(h.workflows),
            ..h
        };
        g.maglev_pool_chunks = match self.maglev_pool {
            None => g.full_maglev_pool(),
            Some(slots) if slots % TABLE_CHUNK as u64 != 0 => {
                bail!("map geometry: --maglev-pool {slots} is not a multiple of 32 (the pool is in chunks of 32 slots)")
            }
            Some(slots) => u32::try_from(slots / TABLE_CHUNK as u64).unwrap_or(u32::MAX),
        };
        match g.problem() {
            None => Ok(g),
            Some(problem) => bail!(
                "map geometry: {problem} (--max-functions {}, --max-workers-per-function {}, --ring-size {}, --maglev-size {}, --max-workflows {}, --maglev-pool {})",
                g.functions,
                g.workers_per_function,
                g.ring_size,
                g.maglev_size,
                g.workflows,
                g.maglev_pool_chunks as u64 * TABLE_CHUNK as u64
            ),
        }
    }
}

pub fn run(args: Args, bpffs: &Path) -> Result<ExitCode> {
    let mode = args.mode;
    let iface = match (args.iface, mode) {
        (Some(iface), _) => iface,
        (None, Some(Mode::User)) => String::new(),
        (None, _) => bail!(
            "--iface: name the interface to attach to (`ip link` lists them), or use --mode user"
        ),
    };
    if args.hw_map_entries.is_some() && mode != Some(Mode::Hw) {
        bail!("--hw-map-entries sizes maps on the NIC: it goes with --mode hw");
    }
    if args.geometry.any() && matches!(mode, Some(Mode::Hw | Mode::User)) {
        bail!("the map geometry flags size maps in host memory (skb and drv modes): --mode hw sizes them with --hw-map-entries, --mode user has none");
    }
    let host = args.geometry.geometry()?;
    if args.veth_peer_xdp && mode != Some(Mode::Drv) {
        bail!("--veth-peer-xdp vouches for a veth's peer in drv mode: it goes with --mode drv");
    }
    let iface_name = iface.clone();
    let opts = RunOptions {
        iface,
        mode,
        veth_peer_xdp: args.veth_peer_xdp,
        config: args.config,
        vips: args.vips,
        port: args.port,
        bpffs: bpffs.to_path_buf(),
        keep_attached: args.keep_attached,
        device: Device {
            max_entries: args.hw_map_entries,
            host,
        },
        cluster: args
            .etcd
            .etcd()
            .map(|etcd| daemon::membership::ClusterOptions {
                etcd,
                cluster: args.etcd.cluster.clone(),
                name: args.node_name.clone().unwrap_or_else(|| {
                    let host = nix::unistd::gethostname()
                        .map(|h| h.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "dispatcher".into());
                    format!("{host}-{iface_name}")
                }),
                lease_ttl: args.lease_ttl.max(1),
            }),
    };
    super::tokio_runtime()?.block_on(daemon::run(opts))?;
    Ok(ExitCode::SUCCESS)
}
