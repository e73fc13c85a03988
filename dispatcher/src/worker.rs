//! `dispatcher serve`: the reference worker runtime. It answers each
//! REQUEST it receives straight to the client (or to `reply_*`), never
//! through the dispatcher.

use std::{collections::HashMap, net::SocketAddr, str::FromStr};

use anyhow::{bail, Context as _, Result};
use dispatcher_common::protocol::{error_code, kind};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::wire::Message;

/// A function the runtime can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    /// Answers with its input.
    Echo,
}

impl FromStr for FunctionKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "echo" => Ok(FunctionKind::Echo),
            other => bail!("unknown function `{other}`: this runtime serves: echo"),
        }
    }
}

/// Which function answers which function id: `echo` (every id) or
/// `1=echo,2=echo` (by id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionTable {
    by_id: HashMap<u32, FunctionKind>,
    any: Option<FunctionKind>,
}

impl FromStr for FunctionTable {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> Result<Self> {
        let mut table = FunctionTable::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((id, name)) => {
                    let id: u32 = id
                        .parse()
                        .with_context(|| format!("`{item}`: function id `{id}` is not a number"))?;
                    table.by_id.insert(id, name.parse()?);
                }
                None => {
                    if table.any.is_some() {
                        bail!("`{item}`: only one function may serve every id; map ids with ID=NAME");
                    }
                    table.any = Some(item.parse()?);
                }
            }
        }
        if table.by_id.is_empty() && table.any.is_none() {
            bail!("no functions given: pass --functions echo (or ID=NAME,...)");
        }
        Ok(table)
    }
}

impl FunctionTable {
    pub fn lookup(&self, function_id: u32) -> Option<FunctionKind> {
        self.by_id.get(&function_id).copied().or(self.any)
    }
}

/// Runs a function on `input`.
fn invoke(function: FunctionKind, input: &[u8]) -> Vec<u8> {
    match function {
        FunctionKind::Echo => input.to_vec(),
    }
}

/// The answer to one datagram, and where it goes; `None` for datagrams that
/// get no answer (not FaaS, or not a request).
pub fn handle(table: &FunctionTable, datagram: &[u8], source: SocketAddr) -> Option<(Message, SocketAddr)> {
    let msg = match Message::parse(datagram) {
        Ok(m) => m,
        Err(e) => {
            debug!(%source, "ignored datagram: {e}");
            return None;
        }
    };
    if msg.hdr.kind != kind::REQUEST {
        debug!(%source, kind = msg.hdr.kind, "ignored non-request");
        return None;
    }
    let to = msg.reply_target(source);
    let answer = match table.lookup(msg.hdr.function_id()) {
        Some(f) => msg.response(invoke(f, &msg.payload)),
        None => msg.error(
            error_code::UNKNOWN_FUNCTION,
            &format!("this worker does not serve function {}", msg.hdr.function_id()),
        ),
    };
    Some((answer, to))
}

/// Serves until the task is cancelled.
pub async fn serve(listen: SocketAddr, table: FunctionTable) -> Result<()> {
    let socket = UdpSocket::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (is the address on an interface, the port free?)"))?;
    info!(%listen, "worker serving");
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, source) = socket.recv_from(&mut buf).await?;
        if let Some((answer, to)) = handle(&table, &buf[..n], source) {
            if let Err(e) = socket.send_to(&answer.to_bytes(), to).await {
                warn!(%to, "cannot send answer: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_specs() {
        let t: FunctionTable = "echo".parse().unwrap();
        assert_eq!(t.lookup(77), Some(FunctionKind::Echo));
        let t: FunctionTable = "3=echo".parse().unwrap();
        assert_eq!(t.lookup(3), Some(FunctionKind::Echo));
        assert_eq!(t.lookup(4), None);
        assert!(format!("{:#}", "x=echo".parse::<FunctionTable>().unwrap_err()).contains("not a number"));
        assert!(format!("{:#}", "resize".parse::<FunctionTable>().unwrap_err()).contains("unknown function"));
        assert!("".parse::<FunctionTable>().is_err());
    }

    #[test]
    fn echo_answers_the_source_with_the_same_request_id() {
        let t: FunctionTable = "1=echo".parse().unwrap();
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let (answer, to) = handle(&t, &Message::request(1, 99, b"ping").to_bytes(), src).unwrap();
        assert_eq!(to, src);
        assert_eq!(answer.hdr.kind, kind::RESPONSE);
        assert_eq!(answer.hdr.request_id(), 99);
        assert_eq!(answer.payload, b"ping");
        let (answer, _) = handle(&t, &Message::request(2, 5, b"").to_bytes(), src).unwrap();
        assert_eq!(answer.error_parts().unwrap().0, error_code::UNKNOWN_FUNCTION);
        assert!(handle(&t, b"junk", src).is_none());
    }
}
