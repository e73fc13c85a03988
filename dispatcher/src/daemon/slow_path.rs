//! The daemon's own socket on the service port: the slow path.
//!
//! The data plane passes up what it cannot dispatch itself: requests for
//! unknown ids or without an up worker, wrong versions, exhausted BUSYs,
//! and IP fragments (which the host stack reassembles). Here they get what
//! PROTOCOL.md promises: an ERROR to whoever waits for the answer, or, for
//! a reassembled request, a dispatch by the same decision code the kernel
//! is tested against (dispatcher_common::model), forwarded from this
//! socket with `reply_*` set so the worker answers the client directly.

use std::{
    hash::{BuildHasher, RandomState},
    net::{Ipv6Addr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result};
use dispatcher_common::{
    maps::family,
    model::{self, View},
    net::MAX_UDP_PAYLOAD,
    protocol::{error_code, flags, kind, FaasHdr},
    stats::Counter,
};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::{
    daemon::metrics::Telemetry,
    data_plane::{Maps, WithTurns},
    endpoints::{endpoint, worker_socket_addr},
    wire::{Message, ParseError},
};

/// What to do with one datagram that reached the service socket. Each
/// carries the counter it lands in (the one the kernel program would use).
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// A request forwarded to the worker at `to` (`worker_index` in the
    /// maps' numbering, under the function's `policy`).
    Dispatch {
        message: Message,
        to: SocketAddr,
        worker_index: u32,
        policy: u8,
        counter: Counter,
    },
    /// An ERROR for whoever waits for the answer, and why.
    Send {
        message: Message,
        to: SocketAddr,
        reason: Counter,
    },
    /// Nothing to answer (not FaaS, not a request, or from a stranger).
    Ignore(Counter),
}

/// The decision for one datagram from `source`, by the reference model
/// over `view`: the slow path's (over the pinned maps) and user mode's
/// (over tables in memory).
pub fn answer(view: &impl View, datagram: &[u8], source: SocketAddr, random: u32) -> Answer {
    let message = match Message::parse(datagram) {
        Ok(m) => m,
        Err(ParseError::BadVersion(v)) => {
            // Answer in version 1, which is all this side speaks.
            let mut hdr = FaasHdr::from_bytes(datagram).expect("long enough to have a version");
            hdr.version = dispatcher_common::protocol::VERSION;
            let m = Message {
                hdr,
                payload: Vec::new(),
            };
            let to = m.reply_target(source);
            let message = m.error(
                error_code::UNSUPPORTED_VERSION,
                &format!("unsupported protocol version {v}: this dispatcher speaks 1"),
            );
            return Answer::Send {
                message,
                to,
                reason: Counter::PassBadVersion,
            };
        }
        Err(ParseError::Short(_)) => return Answer::Ignore(Counter::PassShort),
        Err(ParseError::BadMagic(_)) => return Answer::Ignore(Counter::PassBadMagic),
    };
    if !matches!(message.hdr.kind, kind::REQUEST | kind::STEP | kind::BUSY) {
        return Answer::Ignore(Counter::PassNotRequest);
    }
    let src = endpoint(source.ip(), source.port());
    let packet_family = if source.ip().to_canonical().is_ipv4() {
        family::IPV4
    } else {
        family::IPV6
    };
    let to = message.reply_target(source);
    let id = message.hdr.function_id();
    let error = |code, text: String, reason| Answer::Send {
        message: message.error(code, &text),
        to,
        reason,
    };
    match model::decide(&message.hdr, &src, packet_family, view, random) {
        Ok(d) => {
            let mut hdr = message.hdr;
            model::edit_header(&mut hdr, &d.edit, &src);
            // This socket, not the client, sends the forwarded request: make
            // sure the worker answers the client.
            if hdr.flags & flags::REPLY_SET == 0 {
                hdr.flags |= flags::REPLY_SET;
                hdr.reply_port = src.port;
                hdr.reply_addr = src.addr;
            }
            if FaasHdr::LEN + message.payload.len() > MAX_UDP_PAYLOAD {
                let text =
                    format!("the request is larger than one datagram ({MAX_UDP_PAYLOAD} bytes)");
                return error(error_code::PAYLOAD_TOO_LARGE, text, Counter::PassMalformed);
            }
            Answer::Dispatch {
                to: worker_socket_addr(&d.worker),
                worker_index: d.function.worker_index(d.slot),
                policy: d.function.policy,
                counter: d.counter,
                message: Message {
                    hdr,
                    payload: message.payload,
                },
            }
        }
        Err(reason @ Counter::PassUnknownFunction) => error(
            error_code::UNKNOWN_FUNCTION,
            format!("unknown function or workflow {id}"),
            reason,
        ),
        Err(reason @ Counter::PassNoWorker) => error(
            error_code::NO_UP_WORKER,
            format!("no up worker for function {id}"),
            reason,
        ),
        Err(reason @ Counter::PassFamilyMismatch) => error(
            error_code::NO_UP_WORKER,
            format!("no worker of function {id} in the client's address family"),
            reason,
        ),
        Err(reason @ Counter::PassBadStep) => error(
            error_code::MALFORMED_REQUEST,
            format!(
                "step {} of workflow {} does not exist",
                message.hdr.step,
                message.hdr.workflow_id()
            ),
            reason,
        ),
        Err(reason @ Counter::PassBusyExhausted) => error(
            error_code::OVERLOADED,
            format!("function {id} is overloaded: every worker is busy"),
            reason,
        ),
        Err(reason) => Answer::Ignore(reason),
    }
}

/// Serves the service port on every address until cancelled.
pub async fn run(port: u16, pin_dir: &Path, telemetry: &Telemetry) -> Result<()> {
    let maps = Maps::from_pins(pin_dir)?;
    // One dual-stack socket: IPv4 sources arrive IPv4-mapped.
    let socket = UdpSocket::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
        .await
        .with_context(|| {
            format!("cannot bind the service port {port} (is another process using it?)")
        })?;
    info!(
        port,
        "slow path listening: errors for undispatchable requests, reassembled fragments"
    );
    let turns = AtomicU32::new(0);
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let turn = turns.fetch_add(1, Ordering::Relaxed);
        let random = RandomState::new().hash_one(turn) as u32;
        // Round-robin turns of the slow path's own: it does not touch
        // the kernel's.
        let view = WithTurns {
            maps: &maps,
            turn: |_| turn,
        };
        match answer(&view, &buf[..n], from, random) {
            Answer::Send { message: m, to, .. } | Answer::Dispatch { message: m, to, .. } => {
                if let Some((code, _)) = m.error_parts() {
                    telemetry.error_sent(code, m.hdr.function_id());
                }
                debug!(%from, %to, kind = m.hdr.kind, "slow path");
                if let Err(e) = socket.send_to(&m.to_bytes(), to).await {
                    warn!(%to, "slow path cannot send: {e}");
                }
            }
            Answer::Ignore(why) => debug!(%from, why = why.name(), "slow path ignored a datagram"),
        }
    }
}
