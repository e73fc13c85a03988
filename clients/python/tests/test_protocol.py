"""The header as PROTOCOL.md lays it out, byte by byte."""

import struct

import pytest

from faas_dispatcher import errors, protocol
from faas_dispatcher.client import answer_of, parse_service


def test_a_request_is_48_bytes_of_header_then_the_payload():
    d = protocol.request(7, 0x0102030405060708, b"hi", key=9)
    assert len(d) == 48 + 2
    assert d[0:2] == b"\xfa\x45" and d[2] == 1 and d[3] == protocol.REQUEST
    assert d[4:8] == struct.pack(">I", 7)
    assert d[8:16] == bytes(range(1, 9))
    assert d[16:24] == struct.pack(">Q", 9)
    assert d[24:48] == bytes(24)
    assert d[48:] == b"hi"


def test_too_large_a_payload_is_refused_before_sending():
    with pytest.raises(ValueError, match="at most"):
        protocol.request(1, 1, bytes(protocol.MAX_PAYLOAD + 1))


def test_answers_match_by_request_id_and_errors_raise_by_code():
    ok = protocol.Header(protocol.RESPONSE, 1, 5).pack() + b"out"
    assert answer_of(ok, 5, 1) == b"out"
    assert answer_of(ok, 6, 1) is None
    assert answer_of(b"junk", 5, 1) is None
    for code, cls in errors.BY_CODE.items():
        err = protocol.Header(protocol.ERROR, 1, 5).pack() + struct.pack(">H", code) + b"why"
        with pytest.raises(cls, match="why") as raised:
            answer_of(err, 5, 1)
        assert raised.value.code == code and raised.value.request_id == 5
    unknown = protocol.Header(protocol.ERROR, 1, 5).pack() + struct.pack(">H", 99)
    with pytest.raises(errors.FaasError):
        answer_of(unknown, 5, 1)


def test_reply_addresses_read_back_as_ipv4_or_ipv6():
    h = protocol.Header(protocol.REQUEST, 1, 1, flags=protocol.FLAG_REPLY_SET,
                        reply_addr=bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 2]))
    assert protocol.Header.unpack(h.pack()).reply_address() == "10.0.0.2"


def test_service_addresses():
    assert parse_service("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert parse_service("10.0.0.1") == ("10.0.0.1", 7770)
    assert parse_service("[fd99::1]:7771") == ("fd99::1", 7771)
    assert parse_service(("h", "1")) == ("h", 1)


def test_only_requests_that_no_worker_ran_are_retried():
    assert errors.retryable(errors.Overloaded("x"), idempotent=False)
    assert errors.retryable(errors.NoUpWorker("x"), idempotent=False)
    assert not errors.retryable(errors.WorkerFailure("x"), idempotent=True)
    assert not errors.retryable(errors.Timeout("x"), idempotent=False)
    assert errors.retryable(errors.Timeout("x"), idempotent=True)
