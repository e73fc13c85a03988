//! `dispatcher invoke`: send one REQUEST, wait for its answer.

use std::{
    hash::{BuildHasher, RandomState},
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use dispatcher_common::protocol::kind;

use crate::wire::Message;

/// What came back for a request.
#[derive(Debug)]
pub struct Answer {
    pub message: Message,
    pub from: SocketAddr,
    pub latency: Duration,
}

/// A request id no other client is likely to use at the same time.
pub fn random_request_id() -> u64 {
    RandomState::new().hash_one(Instant::now())
}

/// Sends `payload` to `function_id` at `to` (with affinity `key`: the hash
/// policy sends equal keys to the same worker; 0 hashes the client's
/// address) and waits up to `timeout` for the RESPONSE or ERROR with the
/// same request id. The answer may come from any address (workers answer
/// clients directly), so the socket is not connected.
pub fn invoke(
    to: SocketAddr,
    function_id: u32,
    key: u64,
    payload: &[u8],
    timeout: Duration,
) -> Result<Answer> {
    if payload.len() > crate::workload::worker::MAX_PAYLOAD {
        bail!(
            "the payload is {} bytes: a request carries at most {} in one UDP datagram (the protocol's ERROR 5); send less",
            payload.len(),
            crate::workload::worker::MAX_PAYLOAD
        );
    }
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let socket = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
    let request_id = random_request_id();
    let mut request = Message::request(function_id, request_id, payload);
    request.hdr.key = key.to_be_bytes();
    let request = request.to_bytes();
    let start = Instant::now();
    socket
        .send_to(&request, to)
        .with_context(|| format!("cannot send to {to} (is there a route to it?)"))?;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            bail!("no answer from {to} within {timeout:?}: is a dispatcher serving there, with a worker for function {function_id}?");
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("receive failed"),
        };
        let latency = start.elapsed();
        let Ok(message) = Message::parse(&buf[..n]) else {
            continue;
        };
        let answers = matches!(message.hdr.kind, kind::RESPONSE | kind::ERROR);
        if answers && message.hdr.request_id() == request_id {
            return Ok(Answer {
                message,
                from,
                latency,
            });
        }
    }
}
