//! Building and reading FaaS datagrams in user space (workers, clients and
//! the daemon's own service socket). The layout is dispatcher_common's.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use dispatcher_common::protocol::{flags, kind, FaasHdr, MAGIC, VERSION};

/// A received FaaS datagram: its header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub hdr: FaasHdr,
    pub payload: Vec<u8>,
}

/// Why a datagram is not a FaaS message this side can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than the 48-byte FaaS header ({0} bytes)")]
    Short(usize),
    #[error("wrong magic {0:#06x} (expected 0xfa45)")]
    BadMagic(u16),
    #[error("unsupported protocol version {0} (this side speaks 1)")]
    BadVersion(u8),
}

impl Message {
    pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
        let hdr = FaasHdr::from_bytes(datagram).ok_or(ParseError::Short(datagram.len()))?;
        if hdr.magic() != MAGIC {
            return Err(ParseError::BadMagic(hdr.magic()));
        }
        if hdr.version != VERSION {
            return Err(ParseError::BadVersion(hdr.version));
        }
        Ok(Message {
            hdr,
            payload: datagram[FaasHdr::LEN..].to_vec(),
        })
    }

    /// Header then payload, ready to send.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FaasHdr::LEN + self.payload.len());
        out.extend_from_slice(&self.hdr.to_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// A REQUEST for `function_id`.
    pub fn request(function_id: u32, request_id: u64, payload: &[u8]) -> Message {
        Message {
            hdr: FaasHdr::new(kind::REQUEST, function_id, request_id),
            payload: payload.to_vec(),
        }
    }

    /// The RESPONSE to this message: same ids, `payload` as output.
    pub fn response(&self, payload: Vec<u8>) -> Message {
        let mut hdr = self.hdr;
        hdr.kind = kind::RESPONSE;
        Message { hdr, payload }
    }

    /// The ERROR answer to this message: a u16 code, then a UTF-8 message.
    pub fn error(&self, code: u16, text: &str) -> Message {
        let mut hdr = self.hdr;
        hdr.kind = kind::ERROR;
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(text.as_bytes());
        Message { hdr, payload }
    }

    /// Where the answer to this message goes: `reply_addr:reply_port` when
    /// flag bit 0 is set, else the datagram's source.
    pub fn reply_target(&self, source: SocketAddr) -> SocketAddr {
        if self.hdr.flags & flags::REPLY_SET == 0 {
            return source;
        }
        let v6 = Ipv6Addr::from(self.hdr.reply_addr);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, self.hdr.reply_port())
    }

    /// For an ERROR: its code and text.
    pub fn error_parts(&self) -> Option<(u16, String)> {
        if self.hdr.kind != kind::ERROR || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let m = Message::request(9, 42, b"hi");
        let b = m.to_bytes();
        assert_eq!(b.len(), 50);
        assert_eq!(Message::parse(&b).unwrap(), m);
        assert_eq!(Message::parse(&b[..47]), Err(ParseError::Short(47)));
        let mut bad = b.clone();
        bad[2] = 2;
        assert_eq!(Message::parse(&bad), Err(ParseError::BadVersion(2)));
        bad[0] = 0;
        assert_eq!(Message::parse(&bad), Err(ParseError::BadMagic(0x0045)));
    }

    #[test]
    fn replies_go_to_reply_addr_when_flagged() {
        let src: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        let mut m = Message::request(1, 1, b"");
        assert_eq!(m.reply_target(src), src);
        m.hdr.flags |= flags::REPLY_SET;
        m.hdr.reply_port = 6000u16.to_be_bytes();
        m.hdr.reply_addr = "10.9.8.7"
            .parse::<std::net::Ipv4Addr>()
            .unwrap()
            .to_ipv6_mapped()
            .octets();
        assert_eq!(m.reply_target(src), "10.9.8.7:6000".parse().unwrap());
        let e = m.error(2, "no up worker");
        assert_eq!(e.error_parts(), Some((2, "no up worker".into())));
        assert_eq!(e.hdr.request_id(), 1);
    }
}
