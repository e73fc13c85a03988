//! The FaaS wire protocol (../shared/design/PROTOCOL.md): a 48-byte header
//! directly after the UDP header, every integer big-endian.

/// `magic`: the first two bytes of every FaaS header.
pub const MAGIC: u16 = 0xFA45;
/// The only protocol version this dispatcher speaks.
pub const VERSION: u8 = 1;
/// The default service (VIP) UDP port.
pub const DEFAULT_SERVICE_PORT: u16 = 7770;

/// Header kinds (`kind`, offset 3).
pub mod kind {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const STEP: u8 = 3;
    pub const ERROR: u8 = 4;
    pub const BUSY: u8 = 5;
}

/// Flag bits (`flags`, offset 29).
pub mod flags {
    /// `reply_addr`/`reply_port` hold where the answer goes.
    pub const REPLY_SET: u8 = 1 << 0;
    /// This packet invokes the workflow's last step.
    pub const LAST_STEP: u8 = 1 << 1;
    /// Bits 2-3: how often this request was re-steered after BUSY.
    pub const RESTEER_SHIFT: u8 = 2;
    pub const RESTEER_MASK: u8 = 0b11 << RESTEER_SHIFT;
}

/// ERROR payload codes: a big-endian u16, then a UTF-8 message.
pub mod error_code {
    pub const UNKNOWN_FUNCTION: u16 = 1;
    pub const NO_UP_WORKER: u16 = 2;
    pub const UNSUPPORTED_VERSION: u16 = 3;
    pub const MALFORMED_REQUEST: u16 = 4;
    pub const PAYLOAD_TOO_LARGE: u16 = 5;
    pub const WORKER_FAILURE: u16 = 6;
    pub const OVERLOADED: u16 = 7;
}

/// The FaaS header as it lies in the packet.
///
/// Every field is a byte array, so the struct has alignment 1 and can be
/// read straight out of packet memory at any offset; the accessors convert
/// from network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaasHdr {
    pub magic: [u8; 2],
    pub version: u8,
    pub kind: u8,
    pub function_id: [u8; 4],
    pub request_id: [u8; 8],
    pub key: [u8; 8],
    pub workflow_id: [u8; 4],
    pub step: u8,
    pub flags: u8,
    pub reply_port: [u8; 2],
    pub reply_addr: [u8; 16],
}

impl FaasHdr {
    pub const LEN: usize = core::mem::size_of::<FaasHdr>();

    #[inline(always)]
    pub fn magic(&self) -> u16 {
        u16::from_be_bytes(self.magic)
    }
    #[inline(always)]
    pub fn function_id(&self) -> u32 {
        u32::from_be_bytes(self.function_id)
    }
    #[inline(always)]
    pub fn request_id(&self) -> u64 {
        u64::from_be_bytes(self.request_id)
    }
    #[inline(always)]
    pub fn key(&self) -> u64 {
        u64::from_be_bytes(self.key)
    }
    #[inline(always)]
    pub fn workflow_id(&self) -> u32 {
        u32::from_be_bytes(self.workflow_id)
    }
    #[inline(always)]
    pub fn reply_port(&self) -> u16 {
        u16::from_be_bytes(self.reply_port)
    }
    /// How often this message has been re-steered after a BUSY.
    #[inline(always)]
    pub fn resteers(&self) -> u8 {
        (self.flags & flags::RESTEER_MASK) >> flags::RESTEER_SHIFT
    }
    /// What a BUSY answered: a workflow's STEP if it carries a workflow
    /// id, else a REQUEST.
    #[inline(always)]
    pub fn busy_answered_kind(&self) -> u8 {
        if self.workflow_id() == 0 {
            kind::REQUEST
        } else {
            kind::STEP
        }
    }

    /// A header of `kind` for `function_id`, everything else zero.
    pub fn new(kind: u8, function_id: u32, request_id: u64) -> Self {
        FaasHdr {
            magic: MAGIC.to_be_bytes(),
            version: VERSION,
            kind,
            function_id: function_id.to_be_bytes(),
            request_id: request_id.to_be_bytes(),
            ..Default::default()
        }
    }

    /// The header's wire bytes.
    pub fn to_bytes(&self) -> [u8; FaasHdr::LEN] {
        let mut b = [0u8; FaasHdr::LEN];
        b[0..2].copy_from_slice(&self.magic);
        b[2] = self.version;
        b[3] = self.kind;
        b[4..8].copy_from_slice(&self.function_id);
        b[8..16].copy_from_slice(&self.request_id);
        b[16..24].copy_from_slice(&self.key);
        b[24..28].copy_from_slice(&self.workflow_id);
        b[28] = self.step;
        b[29] = self.flags;
        b[30..32].copy_from_slice(&self.reply_port);
        b[32..48].copy_from_slice(&self.reply_addr);
        b
    }

    /// Reads a header from the first 48 bytes of `b`; `None` if `b` is shorter.
    /// It does not judge magic or version: callers decide what to do with those.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < FaasHdr::LEN {
            return None;
        }
        let mut h = FaasHdr::default();
        h.magic.copy_from_slice(&b[0..2]);
        h.version = b[2];
        h.kind = b[3];
        h.function_id.copy_from_slice(&b[4..8]);
        h.request_id.copy_from_slice(&b[8..16]);
        h.key.copy_from_slice(&b[16..24]);
        h.workflow_id.copy_from_slice(&b[24..28]);
        h.step = b[28];
        h.flags = b[29];
        h.reply_port.copy_from_slice(&b[30..32]);
        h.reply_addr.copy_from_slice(&b[32..48]);
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    /// Pins the header layout to the table in PROTOCOL.md.
    #[test]
    fn header_layout_matches_protocol_md() {
        assert_eq!(FaasHdr::LEN, 48);
        assert_eq!(core::mem::align_of::<FaasHdr>(), 1);
        assert_eq!(offset_of!(FaasHdr, magic), 0);
        assert_eq!(offset_of!(FaasHdr, version), 2);
        assert_eq!(offset_of!(FaasHdr, kind), 3);
        assert_eq!(offset_of!(FaasHdr, function_id), 4);
        assert_eq!(offset_of!(FaasHdr, request_id), 8);
        assert_eq!(offset_of!(FaasHdr, key), 16);
        assert_eq!(offset_of!(FaasHdr, workflow_id), 24);
        assert_eq!(offset_of!(FaasHdr, step), 28);
        assert_eq!(offset_of!(FaasHdr, flags), 29);
        assert_eq!(offset_of!(FaasHdr, reply_port), 30);
        assert_eq!(offset_of!(FaasHdr, reply_addr), 32);
    }

    #[test]
    fn bytes_round_trip_in_network_order() {
        let mut h = FaasHdr::new(kind::REQUEST, 0x0102_0304, 0x1122_3344_5566_7788);
        h.reply_port = 7770u16.to_be_bytes();
        let b = h.to_bytes();
        assert_eq!(&b[0..4], &[0xFA, 0x45, 1, 1]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..16], &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
        assert_eq!(&b[30..32], &[0x1E, 0x5A]);
        let back = FaasHdr::from_bytes(&b).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.magic(), MAGIC);
        assert_eq!(back.function_id(), 0x0102_0304);
        assert_eq!(back.request_id(), 0x1122_3344_5566_7788);
        assert!(FaasHdr::from_bytes(&b[..47]).is_none());
    }
}

/// The changes the data plane makes to a FaaS header it dispatches,
/// decided once per packet (the kernel's rewrite.rs applies them to the
/// frame with checksum patches; the model and user space to values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderEdit {
    /// A plain REQUEST: the header is forwarded as it came.
    None,
    /// A REQUEST for a workflow becomes step 0 of it.
    StartWorkflow {
        workflow_id: u32,
        function_id: u32,
        last: bool,
    },
    /// A STEP gets the step's function and the last-step flag.
    Step { function_id: u32, last: bool },
    /// A BUSY becomes a REQUEST (or STEP) again, re-steered once more.
    Resteer { kind: u8, resteers: u8 },
}

impl HeaderEdit {
    /// Whether the packet came from a worker (a STEP, or a BUSY) and so
    /// leaves from the service address and port: a worker's kernel drops
    /// a packet that arrives from its own address, and the next worker
    /// must see the dispatcher, not its peer, as the sender.
    #[inline(always)]
    pub fn leaves_from_service(&self) -> bool {
        matches!(self, HeaderEdit::Step { .. } | HeaderEdit::Resteer { .. })
    }
}
