//! Worker MACs from the kernel's neighbour table, over rtnetlink.
//!
//! The data plane writes a destination MAC into every frame it sends, so
//! each worker needs one: the worker's own on its link, or the gateway's
//! toward it. A MAC written in the config wins; otherwise the daemon asks
//! the kernel: a route lookup gives the next hop (gateway or the worker),
//! the neighbour table its MAC. When there is no entry yet, one datagram to
//! the next hop's discard port (UDP 9) makes the kernel resolve it (ARP or
//! neighbour discovery), and the table is read again. The daemon refreshes
//! these MACs periodically, so a worker that changes NIC is followed.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{anyhow, bail, Result};
use futures::TryStreamExt;
use macaddr::MacAddr6;
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute},
    AddressFamily,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::config::Config;

/// How long to wait for the kernel to resolve a next hop.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Resolver {
    handle: Handle,
}

impl Resolver {
    /// A netlink connection in the current network namespace (needs a tokio
    /// runtime).
    pub fn new() -> Result<Resolver> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Resolver { handle })
    }

    /// The next hop toward `ip` (its gateway, or `ip` itself on-link) and
    /// the interface it leaves by.
    async fn next_hop(&self, ip: IpAddr) -> Result<(IpAddr, u32)> {
        let message = match ip {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let mut routes = self.handle.route().get(message).execute();
        let route = routes
            .try_next()
            .await?
            .ok_or_else(|| anyhow!("no route to {ip}"))?;
        let mut hop = ip;
        let mut oif = 0;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop = IpAddr::V4(*g),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => hop = IpAddr::V6(*g),
                RouteAttribute::Oif(i) => oif = *i,
                _ => {}
            }
        }
        Ok((hop, oif))
    }

    /// The MAC of `hop` on interface `ifindex`, if the table has a usable one.
    async fn lookup(&self, hop: IpAddr, ifindex: u32) -> Result<Option<MacAddr6>> {
        let family = if hop.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let mut entries = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute();
        while let Some(entry) = entries.try_next().await? {
            if entry.header.ifindex != ifindex
                || !matches!(
                    entry.header.state,
                    NeighbourState::Reachable
                        | NeighbourState::Stale
                        | NeighbourState::Delay
                        | NeighbourState::Probe
                        | NeighbourState::Permanent
                        | NeighbourState::Noarp
                )
            {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for attr in &entry.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        dst = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(bytes) if bytes.len() == 6 => {
                        mac = Some(MacAddr6::new(
                            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5],
                        ))
                    }
                    _ => {}
                }
            }
            if dst == Some(hop) {
                return Ok(mac);
            }
        }
        Ok(None)
    }

    /// The destination MAC for a worker at `ip`, resolving it if needed.
    pub async fn resolve(&self, ip: IpAddr) -> Result<MacAddr6> {
        let (hop, ifindex) = self.next_hop(ip).await?;
        if let Some(mac) = self.lookup(hop, ifindex).await? {
            return Ok(mac);
        }
        poke(hop);
        let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(mac) = self.lookup(hop, ifindex).await? {
                return Ok(mac);
            }
        }
        let via = if hop == ip {
            String::new()
        } else {
            format!(" (via gateway {hop})")
        };
        bail!("cannot learn the MAC of {ip}{via}: it did not answer ARP/ND within {RESOLVE_TIMEOUT:?}; is it up? Or set `mac` for it in the config")
    }
}

/// One datagram to the discard port of `hop`: the kernel resolves the
/// next hop's MAC to send it.
fn poke(hop: IpAddr) {
    let bind: SocketAddr = if hop.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("valid");
    if let Ok(socket) = std::net::UdpSocket::bind(bind) {
        let _ = socket.send_to(b"", SocketAddr::new(hop, 9));
    }
}

/// Fills in the MAC of every configured worker that has none; returns the
/// addresses it filled (the ones to keep refreshing).
pub async fn fill_missing(config: &mut Config) -> Result<Vec<SocketAddr>> {
    let missing: Vec<SocketAddr> = config
        .functions
        .iter()
        .flat_map(|f| &f.workers)
        .filter(|w| w.mac.is_none())
        .map(|w| w.addr)
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let resolver = Resolver::new()?;
    let mut learned: HashMap<IpAddr, MacAddr6> = HashMap::new();
    for addr in &missing {
        if let std::collections::hash_map::Entry::Vacant(entry) = learned.entry(addr.ip()) {
            let mac = resolver
                .resolve(addr.ip())
                .await
                .map_err(|e| anyhow!("worker {addr}: {e:#}"))?;
            entry.insert(mac);
        }
    }
    for w in config
        .functions
        .iter_mut()
        .flat_map(|f| f.workers.iter_mut())
    {
        if w.mac.is_none() {
            w.mac = learned.get(&w.addr.ip()).copied();
        }
    }
    Ok(missing)
}
