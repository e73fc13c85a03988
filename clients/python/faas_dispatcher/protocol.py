"""The FaaS header of PROTOCOL.md: 48 bytes after the UDP header, all
integers big-endian. Only the standard library."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

MAGIC = 0xFA45
VERSION = 1
HEADER_LEN = 48
DEFAULT_PORT = 7770
# The largest UDP payload over IPv4 (65535 - 20 - 8), less the header.
MAX_PAYLOAD = 65507 - HEADER_LEN

REQUEST, RESPONSE, STEP, ERROR, BUSY = 1, 2, 3, 4, 5

FLAG_REPLY_SET = 1 << 0
FLAG_LAST_STEP = 1 << 1

# magic, version, kind, function_id, request_id, key, workflow_id, step,
# flags, reply_port, reply_addr
_HEADER = struct.Struct(">HBBIQQIBBH16s")
assert _HEADER.size == HEADER_LEN


@dataclass
class Header:
    kind: int
    function_id: int
    request_id: int
    key: int = 0
    workflow_id: int = 0
    step: int = 0
    flags: int = 0
    reply_port: int = 0
    reply_addr: bytes = bytes(16)
    version: int = VERSION
    magic: int = MAGIC

    def pack(self) -> bytes:
        return _HEADER.pack(
            self.magic,
            self.version,
            self.kind,
            self.function_id,
            self.request_id,
            self.key,
            self.workflow_id,
            self.step,
            self.flags,
            self.reply_port,
            self.reply_addr,
        )

    @classmethod
    def unpack(cls, datagram: bytes) -> "Header":
        if len(datagram) < HEADER_LEN:
            raise ValueError(f"{len(datagram)} bytes: shorter than the {HEADER_LEN}-byte FaaS header")
        (magic, version, kind, function_id, request_id, key, workflow_id, step, flags,
         reply_port, reply_addr) = _HEADER.unpack_from(datagram)
        if magic != MAGIC:
            raise ValueError(f"magic {magic:#06x}, not {MAGIC:#06x}: not a FaaS datagram")
        return cls(kind, function_id, request_id, key, workflow_id, step, flags, reply_port,
                   reply_addr, version, magic)

    def reply_address(self) -> str | None:
        """Where the answer goes when flag bit 0 is set."""
        if not self.flags & FLAG_REPLY_SET:
            return None
        addr = ipaddress.IPv6Address(self.reply_addr)
        return str(addr.ipv4_mapped or addr)


def request(function_id: int, request_id: int, payload: bytes, key: int = 0) -> bytes:
    """A REQUEST datagram. For a workflow, function_id is the workflow's id."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(
            f"the payload is {len(payload)} bytes: one request carries at most {MAX_PAYLOAD}")
    return Header(REQUEST, function_id, request_id, key).pack() + payload


def parse(datagram: bytes) -> tuple[Header, bytes]:
    """The header and payload of a FaaS datagram."""
    return Header.unpack(datagram), datagram[HEADER_LEN:]


def error_parts(payload: bytes) -> tuple[int, str]:
    """An ERROR payload: a 2-byte code, then a UTF-8 message."""
    if len(payload) < 2:
        return 0, "an ERROR without a code"
    return struct.unpack(">H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
