"""The client's retry rules against a UDP peer on loopback that answers as
a dispatcher would (this checks the client's decisions; test_live.py runs
it against the real dispatcher)."""

import asyncio
import socket
import struct
import threading

import pytest

from faas_dispatcher import AsyncClient, Client, NoUpWorker, Overloaded, Timeout, WorkerFailure
from faas_dispatcher import protocol


class Peer:
    """Answers each request with the next of `script` (an ERROR code, a
    payload, or None for silence), counting what it got."""

    def __init__(self, script):
        self.script = list(script)
        self.got = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.address = self.sock.getsockname()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        for step in self.script:
            try:
                data, source = self.sock.recvfrom(65536)
            except socket.timeout:
                return
            hdr, payload = protocol.parse(data)
            self.got.append(hdr.request_id)
            if step is None:
                continue
            if isinstance(step, int):
                answer = protocol.Header(protocol.ERROR, hdr.function_id, hdr.request_id).pack()
                answer += struct.pack(">H", step) + b"scripted"
            else:
                answer = protocol.Header(protocol.RESPONSE, hdr.function_id,
                                         hdr.request_id).pack() + step
            self.sock.sendto(answer, source)


def test_overloaded_then_answered_is_retried_with_the_same_request_id():
    peer = Peer([7, 2, b"done"])
    assert Client(peer.address, retries=2, backoff=0.001).invoke(1, b"x") == b"done"
    assert len(peer.got) == 3 and len(set(peer.got)) == 1


def test_retries_run_out():
    peer = Peer([7, 7, 7])
    with pytest.raises(Overloaded):
        Client(peer.address, retries=2, backoff=0.001).invoke(1, b"x")
    assert len(peer.got) == 3


def test_a_failed_function_is_never_retried():
    peer = Peer([6, b"never"])
    with pytest.raises(WorkerFailure, match="scripted"):
        Client(peer.address, retries=3, backoff=0.001).invoke(1, b"x")
    peer.thread.join(timeout=0.3)
    assert len(peer.got) == 1


def test_a_timeout_is_retried_only_for_idempotent_calls():
    peer = Peer([None, b"late"])
    with pytest.raises(Timeout):
        Client(peer.address, timeout=0.2, retries=1).invoke(1, b"x")
    peer = Peer([None, b"second"])
    got = Client(peer.address, timeout=0.2, retries=1, backoff=0.001).invoke(
        1, b"x", idempotent=True)
    assert got == b"second"


def test_the_async_client_retries_alike():
    peer = Peer([2, b"async"])

    async def call():
        async with AsyncClient(peer.address, retries=1, backoff=0.001) as client:
            return await client.invoke(1, b"x")

    assert asyncio.run(call()) == b"async"
    with pytest.raises(NoUpWorker):
        asyncio.run(AsyncClient(Peer([2]).address, retries=0).invoke(1, b"x"))
