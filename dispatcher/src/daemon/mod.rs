//! `dispatcher run`: attach the data plane, configure it, and keep it
//! running until SIGINT or SIGTERM, then detach cleanly.

pub mod health;
pub mod kernel_log;
pub mod membership;
pub mod metrics;
pub mod neighbours;
pub mod slow_path;
pub mod user_mode;
pub mod veth;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    config::{Config, Service},
    control,
    data_plane::{bpffs, interface_mac, privileges, Attached, Mode},
};

/// Everything `dispatcher run` is told on its command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub iface: String,
    /// As asked; None: the default (drv where it works, else skb).
    pub mode: Option<Mode>,
    /// `--veth-peer-xdp`: the operator vouches for a veth peer we cannot see.
    pub veth_peer_xdp: bool,
    pub config: Option<PathBuf>,
    /// Service addresses added to the config's.
    pub vips: Vec<IpAddr>,
    /// Overrides the config's service port.
    pub port: Option<u16>,
    pub bpffs: PathBuf,
    /// On SIGTERM/SIGINT, leave the data plane attached (and pinned) for
    /// the next daemon to adopt.
    pub keep_attached: bool,
    /// `--mode hw`: what the device holds.
    pub device: crate::data_plane::offload::Device,
    /// `--etcd`: the functions, workers and workflows come from a cluster's
    /// membership in etcd instead of the config file.
    pub cluster: Option<membership::ClusterOptions>,
}

/// The config file (if any) with the command line's additions, validated.
pub fn effective_config(opts: &RunOptions) -> Result<Config> {
    let mut config = match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config {
            service: Service {
                addresses: Vec::new(),
                port: dispatcher_common::protocol::DEFAULT_SERVICE_PORT,
            },
            functions: Vec::new(),
            workflows: Vec::new(),
            egress: Default::default(),
            health: None,
            neighbours: Default::default(),
            metrics: None,
        },
    };
    for vip in &opts.vips {
        if !config.service.addresses.contains(vip) {
            config.service.addresses.push(*vip);
        }
    }
    if let Some(port) = opts.port {
        config.service.port = port;
    }
    config.validate()?;
    Ok(config)
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // Signals first: from here on SIGTERM/SIGINT/SIGHUP are handled, not fatal.
    let shutdown = shutdown_signal()?;
    let mut hup = signal(SignalKind::hangup())?;
    if opts.mode == Some(Mode::User) {
        if opts.cluster.is_some() {
            anyhow::bail!("--etcd goes with the XDP data plane: --mode user takes its functions from the config file");
        }
        return run_user(opts, shutdown, hup).await;
    }
    tokio::pin!(shutdown);
    let mut config = effective_config(&opts)?;
    check_egress_for_mode(opts.mode, &config)?;
    let mut learned = neighbours::fill_missing(&mut config).await?;
    let iface_mac = interface_mac(&opts.iface)?;
    privileges::require_bpf_admin("dispatcher run")?;
    bpffs::ensure_mounted(&opts.bpffs)?;
    let pin_dir = bpffs::pin_dir(&opts.bpffs, &opts.iface);
    let mut cluster = match &opts.cluster {
        Some(c) => Some(Cluster::start(c, &config)?),
        None => None,
    };
    // A fresh data plane in cluster mode waits for the membership: serving
    // an empty one would answer every request ERROR 1. An adopted one
    // keeps serving what it has meanwhile.
    if let Some(c) = &mut cluster {
        if !pin_dir.exists() && !c.wait_for_first(&mut shutdown).await? {
            return Ok(());
        }
    }

    // A data plane left by an earlier daemon (stopped with --keep-attached,
    // or killed) keeps serving; adopt it and bring it up to date.
    let attached = if pin_dir.exists() {
        let mut adopted = Attached::adopt(&opts.iface, &pin_dir)?;
        control::configure_interface(&mut adopted.maps, iface_mac, &config.egress)?;
        control::apply(&mut adopted.maps, &config)?;
        adopted
    } else {
        let mode = match opts.mode {
            Some(mode @ (Mode::Skb | Mode::Hw | Mode::User)) => mode,
            // Only XDP_TX needs the veth's peer: a redirect leaves by
            // another interface.
            Some(Mode::Drv) | None if config.egress.redirect_to.is_some() => Mode::Drv,
            asked @ (Some(Mode::Drv) | None) => {
                let link = crate::daemon::veth::inspect(&opts.iface).await?;
                crate::daemon::veth::choose_drv_or_skb(
                    &opts.iface,
                    asked.is_some(),
                    opts.veth_peer_xdp,
                    &link,
                )?
            }
        };
        // Refused before anything is loaded or the device touched.
        if mode == Mode::Hw {
            control::fits(&opts.device.geometry()?, &config)?;
        } else {
            control::fits(&opts.device.host, &config)?;
        }
        Attached::attach(&opts.iface, mode, &pin_dir, opts.device, |maps| {
            control::configure_interface(maps, iface_mac, &config.egress)?;
            control::apply(maps, &config)
        })?
    };
    let mut maps = attached.maps_handle()?;
    // The CLI refuses to change a cluster's maps (etcd is their source).
    maps.set_managed(if cluster.is_some() {
        dispatcher_common::maps::managed::CLUSTER
    } else {
        dispatcher_common::maps::managed::LOCAL
    })?;
    if let Some(c) = &mut cluster {
        c.apply_latest(&mut maps).await;
        learned = c.applier.learned();
    }
    info!(
        services = ?config.service.addresses,
        port = config.service.port,
        functions = config.functions.len(),
        "dispatching; SIGINT or SIGTERM detaches"
    );
    // What the slow path and the health listener count, for /metrics.
    let telemetry = std::sync::Arc::new(crate::daemon::metrics::Telemetry::default());
    if let Some(m) = &config.metrics {
        let status = cluster.as_ref().map(|c| c.status.clone());
        crate::daemon::metrics::spawn(m.listen, pin_dir.clone(), telemetry.clone(), status)?;
    }
    // Not fatal: the data plane dispatches whether or not its log is read.
    // The offloaded program has none (the NFP cannot log).
    if opts.mode != Some(Mode::Hw) {
        if let Err(e) = attached
            .program_id()
            .and_then(crate::daemon::kernel_log::forward)
        {
            warn!("{e:#}");
        }
    }
    crate::systemd::ready(&format!(
        "dispatching {} function(s) on {}",
        config.functions.len(),
        opts.iface
    ));
    let mut refresh =
        tokio::time::interval(Duration::from_millis(config.neighbours.refresh_ms.max(100)));
    let mut port = config.service.port;
    let service = slow_path::run(port, &pin_dir, &telemetry);
    tokio::pin!(service);
    let mut health_task = match config.health.clone() {
        Some(h) => Some(health::start(h, attached.maps_handle()?, telemetry.clone()).await?),
        None => None,
    };
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            r = &mut service => { r?; break; }
            Some(()) = membership_changed(&mut cluster) => {
                let c = cluster.as_mut().expect("changed");
                c.apply_latest(&mut maps).await;
                learned = c.applier.learned();
            }
            _ = hup.recv() => {
                crate::systemd::reloading();
                let reloaded = reload(&opts, &mut maps, iface_mac, cluster.as_mut()).await;
                crate::systemd::ready(if reloaded.is_some() { "dispatching; configuration reloaded" } else { "dispatching; the last reload was refused (see the log), the running configuration serves" });
                if let Some(new) = reloaded {
                    learned = new.learned;
                    if new.port != port {
                        // The old socket closes as its future is dropped.
                        info!(old = port, new = new.port, "SIGHUP: the service port changed; the slow path moves to it");
                        port = new.port;
                        service.set(slow_path::run(port, &pin_dir, &telemetry));
                    }
                    if health_task.as_ref().map(|h| &h.config) != new.health.as_ref() {
                        // Stop the old listener, and wait until its socket is
                        // closed: the new one may bind the same address.
                        if let Some(old) = health_task.take() {
                            old.stop().await;
                        }
                        if let Some(h) = new.health {
                            match attached.maps_handle() {
                                Ok(maps) => match health::start(h, maps, telemetry.clone()).await {
                                    Ok(running) => health_task = Some(running),
                                    Err(e) => warn!("SIGHUP: health not restarted: {e:#}"),
                                },
                                Err(e) => warn!("SIGHUP: health not restarted: {e:#}"),
                            }
                        } else {
                            info!("SIGHUP: health checking off");
                        }
                    }
                }
            }
            _ = refresh.tick() => {
                refresh_macs(&learned, &mut maps).await;
                // Workers left out for want of a MAC: try them again.
                if let Some(c) = cluster.as_mut().filter(|c| c.applier.incomplete()) {
                    c.apply_latest(&mut maps).await;
                    learned = c.applier.learned();
                }
            }
        }
    }
    crate::systemd::stopping();
    if opts.keep_attached {
        info!(pins = %pin_dir.display(), "exiting; the data plane stays attached (--keep-attached)");
        return Ok(());
    }
    info!("shutting down");
    attached.detach()
}

/// `--mode user`: no XDP, no pins; the serving thread dispatches from user
/// space until SIGINT/SIGTERM, and takes a re-read config on SIGHUP.
async fn run_user(
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()>,
    mut hup: tokio::signal::unix::Signal,
) -> Result<()> {
    let config = effective_config(&opts)?;
    if config.health.is_some() || config.metrics.is_some() {
        warn!("--mode user: [health] and [metrics] act on the XDP data plane's maps and are not served in user mode");
    }
    let control = std::sync::Arc::new(crate::daemon::user_mode::Control::default());
    let serving = {
        let control = control.clone();
        tokio::task::spawn_blocking(move || crate::daemon::user_mode::serve(&config, control))
    };
    tokio::pin!(serving);
    tokio::pin!(shutdown);
    crate::systemd::ready("dispatching from user space (--mode user)");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            r = &mut serving => return r?.map(|_| ()),
            _ = hup.recv() => {
                crate::systemd::reloading();
                match effective_config(&opts) {
                    Ok(config) => *control.next.lock().expect("not poisoned") = Some(config),
                    Err(e) => warn!("SIGHUP: configuration not reloaded, the running one stays: {e:#}"),
                }
                crate::systemd::ready("dispatching from user space (--mode user)");
            }
        }
    }
    crate::systemd::stopping();
    control
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let counters = serving.await??;
    let summary: Vec<String> = counters
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| format!("{}={n}", c.name()))
        .collect();
    info!(counters = %summary.join(" "), "user mode stopped");
    Ok(())
}

/// What a reload applied.
struct Reloaded {
    /// Workers whose MACs were learned from the neighbour table.
    learned: Vec<SocketAddr>,
    health: Option<crate::config::HealthConfig>,
    /// The service port, which the slow path's socket follows.
    port: u16,
}

/// The offload variant has no redirect (the NFP transmits with XDP_TX
/// only): a config that asks for one is refused in hw mode.
fn check_egress_for_mode(mode: Option<Mode>, config: &Config) -> Result<()> {
    if let (Some(Mode::Hw), Some(target)) = (mode, &config.egress.redirect_to) {
        anyhow::bail!(
            "[egress] redirect_to = \"{target}\" cannot go with --mode hw: the offloaded program sends every request back out of the NIC it came in on (XDP_TX; the NFP has no redirect). Remove [egress], or run in drv or skb mode"
        );
    }
    Ok(())
}

/// SIGHUP: re-read the config and apply the difference (in cluster mode,
/// the new local config with the cluster's membership). A bad config is
/// reported and changes nothing.
async fn reload(
    opts: &RunOptions,
    maps: &mut crate::data_plane::Maps,
    iface_mac: [u8; 6],
    cluster: Option<&mut Cluster>,
) -> Option<Reloaded> {
    let result = async {
        let mut config = effective_config(opts)?;
        check_egress_for_mode(opts.mode, &config)?;
        let learned = match cluster {
            Some(c) => {
                Cluster::check_local(&config)?;
                control::configure_interface(maps, iface_mac, &config.egress)?;
                c.applier.set_local(config.clone());
                c.apply_latest(maps).await;
                c.applier.learned()
            }
            None => {
                let learned = neighbours::fill_missing(&mut config).await?;
                control::configure_interface(maps, iface_mac, &config.egress)?;
                control::reconcile(maps, &config)?;
                learned
            }
        };
        anyhow::Ok(Reloaded {
            learned,
            health: config.health,
            port: config.service.port,
        })
    };
    match result.await {
        Ok(reloaded) => {
            info!("SIGHUP: configuration reloaded");
            Some(reloaded)
        }
        Err(e) => {
            warn!("SIGHUP: configuration not reloaded, the running one stays: {e:#}");
            None
        }
    }
}

/// Checks the learned MACs again and updates workers whose MAC changed.
async fn refresh_macs(learned: &[SocketAddr], maps: &mut crate::data_plane::Maps) {
    if learned.is_empty() {
        return;
    }
    let resolver = match neighbours::Resolver::new() {
        Ok(r) => r,
        Err(e) => return warn!("neighbour refresh: {e:#}"),
    };
    let workers = match crate::control::inspect::workers(maps, None) {
        Ok(w) => w,
        Err(e) => return warn!("neighbour refresh: {e:#}"),
    };
    for addr in learned {
        let mac = match resolver.resolve(addr.ip()).await {
            Ok(mac) => mac,
            Err(e) => {
                warn!(worker = %addr, "neighbour refresh: {e:#}");
                continue;
            }
        };
        let mac_text = mac.to_string().to_lowercase();
        for w in workers
            .iter()
            .filter(|w| w.addr == *addr && w.mac != mac_text)
        {
            let updated = control::with_mac(maps, w.function, *addr, mac.into_array());
            match updated {
                Ok(()) => {
                    info!(worker = %addr, function = w.function, old = %w.mac, new = %mac_text, "worker MAC changed")
                }
                Err(e) => warn!(worker = %addr, "cannot update its MAC: {e:#}"),
            }
        }
    }
}

/// Registers for SIGTERM and SIGINT now, so that a signal from here on is
/// caught (not the default "terminate") even before the returned future is
/// first polled: a daemon still starting up, with its data plane already
/// attached, must detach cleanly too.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Cluster mode's part of the run loop: the follower's latest membership
/// and what applies it.
struct Cluster {
    updates: tokio::sync::watch::Receiver<Option<std::sync::Arc<crate::cluster::Membership>>>,
    status: std::sync::Arc<membership::Status>,
    applier: membership::Applier,
    endpoints: String,
}

impl Cluster {
    fn start(opts: &membership::ClusterOptions, local: &Config) -> Result<Cluster> {
        Cluster::check_local(local)?;
        let status = std::sync::Arc::new(membership::Status::default());
        let health = local.health.as_ref().map(|h| h.listen);
        let updates = membership::follow(opts.clone(), health, status.clone())?;
        info!(etcd = %opts.etcd, cluster = %opts.cluster, name = %opts.name, "cluster mode: the membership comes from etcd");
        Ok(Cluster {
            updates,
            status,
            applier: membership::Applier::new(local.clone()),
            endpoints: opts.etcd.to_string(),
        })
    }

    /// With --etcd the functions and workflows come from the cluster: a
    /// config file that lists its own would be silently overridden.
    fn check_local(local: &Config) -> Result<()> {
        if !local.functions.is_empty() || !local.workflows.is_empty() {
            anyhow::bail!(
                "--etcd: the cluster's functions, workers and workflows come from etcd; remove [[functions]] and [[workflows]] from the config (add them with `dispatcher functions add --etcd ...`)"
            );
        }
        Ok(())
    }

    /// Waits until the first membership is read (false: shut down first).
    async fn wait_for_first(
        &mut self,
        shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<bool> {
        let mut said = false;
        while self.updates.borrow().is_none() {
            tokio::select! {
                () = &mut *shutdown => return Ok(false),
                r = self.updates.changed() => r.map_err(|_| anyhow::anyhow!("the cluster follower stopped"))?,
                _ = tokio::time::sleep(Duration::from_secs(2)), if !said => {
                    warn!(etcd = %self.endpoints, "cluster: waiting for etcd before attaching a data plane (nothing is served until the membership is read)");
                    said = true;
                }
            }
        }
        Ok(true)
    }

    /// Applies the latest membership, if any; a failure is logged and the
    /// maps keep what they had.
    async fn apply_latest(&mut self, maps: &mut crate::data_plane::Maps) {
        let Some(m) = self.updates.borrow_and_update().clone() else {
            return;
        };
        match self.applier.apply(&m, maps).await {
            Ok(()) => self
                .status
                .applied
                .store(m.revision, std::sync::atomic::Ordering::Relaxed),
            Err(e) => warn!(
                revision = m.revision,
                "cluster: membership not applied, the maps keep the last one: {e:#}"
            ),
        }
    }
}

/// Resolves when the cluster's membership changed; never without one.
async fn membership_changed(cluster: &mut Option<Cluster>) -> Option<()> {
    match cluster {
        Some(c) => c.updates.changed().await.ok(),
        None => std::future::pending().await,
    }
}
