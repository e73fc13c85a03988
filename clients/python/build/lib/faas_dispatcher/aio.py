"""Invoke functions from asyncio: one socket carries every call in flight,
answers are matched by request id.

    async with AsyncClient("10.99.0.1:7770") as client:
        outs = await asyncio.gather(*(client.invoke(1, b"x") for _ in range(100)))
"""

from __future__ import annotations

import asyncio
import socket

from . import errors, protocol
from .client import _family, answer_of, new_request_id, parse_service


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self):
        self.waiting: dict[int, tuple[int, asyncio.Future]] = {}

    def datagram_received(self, data, addr):
        try:
            hdr, _ = protocol.parse(data)
        except ValueError:
            return
        entry = self.waiting.get(hdr.request_id)
        if entry is None or entry[1].done():
            return
        function_id, future = entry
        try:
            answer = answer_of(data, hdr.request_id, function_id)
        except errors.FaasError as err:
            future.set_exception(err)
            return
        if answer is not None:
            future.set_result(answer)


class AsyncClient:
    """The asyncio twin of `Client`: same arguments, same retry rules."""

    def __init__(self, service, timeout: float = 1.0, retries: int = 2, backoff: float = 0.02):
        self.service = parse_service(service)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._transport = None
        self._protocol = None

    async def __aenter__(self):
        await self._open()
        return self

    async def __aexit__(self, *exc):
        self.close()

    async def _open(self):
        if self._transport is None:
            loop = asyncio.get_running_loop()
            family = _family(self.service[0])
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            sock.setblocking(False)
            self._transport, self._protocol = await loop.create_datagram_endpoint(
                _Protocol, sock=sock)

    def close(self):
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def invoke(self, function_id: int, payload: bytes = b"", *, key: int = 0,
                     timeout: float | None = None, idempotent: bool = False) -> bytes:
        await self._open()
        if isinstance(payload, str):
            payload = payload.encode()
        request_id = new_request_id()
        datagram = protocol.request(function_id, request_id, payload, key)
        timeout = self.timeout if timeout is None else timeout
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return await self._exchange(datagram, request_id, function_id, timeout)
            except errors.FaasError as err:
                if attempt == self.retries or not errors.retryable(err, idempotent):
                    raise
            await asyncio.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    async def workflow(self, workflow_id: int, payload: bytes = b"", **kwargs) -> bytes:
        return await self.invoke(workflow_id, payload, **kwargs)

    async def _exchange(self, datagram, request_id, function_id, timeout):
        future = asyncio.get_running_loop().create_future()
        self._protocol.waiting[request_id] = (function_id, future)
        try:
            self._transport.sendto(datagram, self.service)
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            host, port = self.service
            raise errors.Timeout(
                f"no answer from {host}:{port} within {timeout} s for function {function_id}",
                function_id=function_id, request_id=request_id) from None
        finally:
            self._protocol.waiting.pop(request_id, None)


async def ainvoke(service, function_id: int, payload: bytes = b"", timeout: float = 1.0,
                  **kwargs) -> bytes:
    """One call from asyncio."""
    async with AsyncClient(service, timeout=timeout) as client:
        return await client.invoke(function_id, payload, **kwargs)
