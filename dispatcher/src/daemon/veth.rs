//! XDP in driver mode on a veth, and why it needs the peer's cooperation.
//!
//! A veth has native XDP, so drv mode attaches; but the frames our program
//! sends back out with XDP_TX are handed to the peer's receive queue, and
//! the peer only takes them off it (its NAPI polls) when the peer itself
//! runs an XDP program in driver mode. Otherwise every dispatched request
//! is silently lost. That is the usual case in a container: the pod's eth0
//! is a veth whose host side belongs to the CNI. So before attaching, the
//! daemon looks at the peer over rtnetlink: in its own namespace, or in a
//! named one (`ip netns`, /run/netns) found by its namespace id; a peer in
//! a namespace it cannot see (the host's, seen from a pod) stays unknown.

use std::{fs, os::fd::AsRawFd, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use futures::TryStreamExt;
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use rtnetlink::{
    packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST},
    Handle,
};

/// Where named network namespaces are (`ip netns add`).
const NAMED_NAMESPACES: &str = "/run/netns";

/// What the daemon learned about an interface before attaching in drv mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Not a veth: nothing to check.
    NotVeth,
    /// A veth whose peer was found.
    Veth { peer: Peer },
    /// A veth whose peer is in a namespace this process cannot see.
    VethPeerUnseen { netns_id: i32 },
}

/// The peer of a veth, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// The named namespace it is in (None: this process's own).
    pub netns: Option<String>,
    /// Whether it runs an XDP program in driver mode.
    pub runs_xdp: bool,
}

impl Peer {
    /// `ip` arguments that address the peer: `-n NS` when it has one.
    pub fn ip_args(&self) -> String {
        match &self.netns {
            Some(ns) => format!("ip -n {ns} link set dev {}", self.name),
            None => format!("ip link set dev {}", self.name),
        }
    }

    pub fn describe(&self) -> String {
        match &self.netns {
            Some(ns) => format!("{} (in network namespace {ns})", self.name),
            None => self.name.clone(),
        }
    }
}

/// Looks at `iface` and, if it is a veth, at its peer.
pub async fn inspect(iface: &str) -> Result<Link> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    tokio::spawn(connection);
    let link = get_link(&handle, Query::Name(iface.to_string()))
        .await?
        .ok_or_else(|| anyhow!("no interface {iface} (`ip link` lists them)"))?;
    let is_veth = link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    });
    if !is_veth {
        return Ok(Link::NotVeth);
    }
    let peer_index = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    });
    let Some(peer_index) = peer_index else {
        // A veth always names its peer; if not, nothing can be checked.
        return Ok(Link::VethPeerUnseen { netns_id: -1 });
    };
    let netns_id = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    });
    match netns_id {
        None => {
            let peer = get_link(&handle, Query::Index(peer_index))
                .await?
                .context("the veth's peer vanished")?;
            Ok(Link::Veth {
                peer: describe(&peer, None),
            })
        }
        Some(id) => match find_named_namespace(&handle, id).await? {
            Some(ns) => {
                let peer = look_in_namespace(&ns, peer_index)?;
                Ok(Link::Veth { peer })
            }
            None => Ok(Link::VethPeerUnseen { netns_id: id }),
        },
    }
}

enum Query {
    Name(String),
    Index(u32),
}

async fn get_link(handle: &Handle, query: Query) -> Result<Option<LinkMessage>> {
    let request = handle.link().get();
    let request = match query {
        Query::Name(name) => request.match_name(name),
        Query::Index(index) => request.match_index(index),
    };
    match request.execute().try_next().await {
        Ok(link) => Ok(link),
        // ENODEV: no such interface.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(anyhow!(e).context("cannot read the interface over rtnetlink")),
    }
}

fn describe(link: &LinkMessage, netns: Option<String>) -> Peer {
    let name = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_else(|| format!("ifindex {}", link.header.index));
    let runs_xdp = link.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().any(|x| {
            matches!(
                x,
                LinkXdp::Attached(XdpAttached::Driver) | LinkXdp::DrvProgId(_)
            ) || matches!(x, LinkXdp::Attached(XdpAttached::Multiple))
                && xdp.iter().any(|y| matches!(y, LinkXdp::DrvProgId(_)))
        }),
        _ => false,
    });
    Peer {
        name,
        netns,
        runs_xdp,
    }
}

/// The named namespace (/run/netns) that this namespace knows as `id`.
async fn find_named_namespace(handle: &Handle, id: i32) -> Result<Option<String>> {
    let Ok(entries) = fs::read_dir(NAMED_NAMESPACES) else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let Ok(file) = fs::File::open(entry.path()) else {
            continue;
        };
        if namespace_id(handle, &file).await? == Some(id) {
            return Ok(entry.file_name().into_string().ok());
        }
    }
    Ok(None)
}

/// RTM_GETNSID: the id this namespace gives the namespace behind `file`.
async fn namespace_id(handle: &Handle, file: &fs::File) -> Result<Option<i32>> {
    let mut message = NsidMessage::default();
    message
        .attributes
        .push(NsidAttribute::Fd(file.as_raw_fd() as u32));
    let mut request = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetNsId(message)),
    );
    request.header.flags = NLM_F_REQUEST;
    let mut handle = handle.clone();
    let mut answers = handle
        .request(request)
        .map_err(|e| anyhow!("RTM_GETNSID: {e}"))?;
    while let Some(answer) = futures::StreamExt::next(&mut answers).await {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) = answer.payload {
            return Ok(m.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                _ => None,
            }));
        }
    }
    Ok(None)
}

/// Reads interface `index` inside the named namespace `ns`, from a thread
/// of its own (setns moves only the calling thread, which then ends).
fn look_in_namespace(ns: &str, index: u32) -> Result<Peer> {
    let path = Path::new(NAMED_NAMESPACES).join(ns);
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<Peer> {
        let file =
            fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("cannot enter network namespace {ns}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            let peer = get_link(&handle, Query::Index(index))
                .await?
                .with_context(|| format!("no interface {index} in {ns}"))?;
            Ok(describe(&peer, Some(ns.clone())))
        })
    })
    .join()
    .map_err(|_| anyhow!("the namespace lookup thread panicked"))?
}

/// The attach mode to use on `iface`, from what was asked (`None`: the
/// default, drv where it works) and what the interface is. Says in the log
/// what it chose and why; refuses an explicit drv that would lose traffic.
pub fn choose_drv_or_skb(
    iface: &str,
    explicit_drv: bool,
    peer_xdp_asserted: bool,
    link: &Link,
) -> Result<crate::data_plane::Mode> {
    use tracing::{info, warn};

    use crate::data_plane::Mode;
    let lost = "XDP_TX frames are handed to the peer, which only picks them up when it runs an XDP program in driver mode itself: every dispatched request would be lost";
    match link {
        Link::NotVeth => Ok(Mode::Drv),
        Link::Veth { peer } if peer.runs_xdp => {
            info!(iface, peer = %peer.describe(), "veth whose peer runs an XDP program in driver mode: native (drv) mode");
            Ok(Mode::Drv)
        }
        Link::Veth { peer } => {
            if explicit_drv {
                bail!(
                    "--mode drv on {iface}, a veth whose peer {} runs no XDP program: {lost}. Use --mode skb (or leave --mode out), or attach an XDP program to the peer in driver mode (`{} xdpdrv ...`; any program that passes frames will do)",
                    peer.describe(),
                    peer.ip_args()
                );
            }
            warn!(iface, peer = %peer.describe(), "veth whose peer runs no XDP program: skb mode (in drv mode, {lost})");
            Ok(Mode::Skb)
        }
        Link::VethPeerUnseen { netns_id } => {
            if explicit_drv && peer_xdp_asserted {
                warn!(iface, netns_id, "veth whose peer cannot be seen from here: drv mode, as --veth-peer-xdp says its peer runs an XDP program");
                return Ok(Mode::Drv);
            }
            if explicit_drv {
                bail!(
                    "--mode drv on {iface}, a veth whose peer is in a network namespace this process cannot see (id {netns_id}), so whether it runs an XDP program cannot be checked; without one, {lost}. Use --mode skb (or leave --mode out), or add --veth-peer-xdp if the peer does run one in driver mode"
                );
            }
            warn!(iface, netns_id, "veth whose peer cannot be seen from here: skb mode (in drv mode, unless the peer runs an XDP program, {lost}; --mode drv --veth-peer-xdp if it does)");
            Ok(Mode::Skb)
        }
    }
}
