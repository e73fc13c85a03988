"""Invoke functions and workflows through the dispatcher, synchronously.

    from faas_dispatcher import invoke
    answer = invoke("10.99.0.1:7770", 1, b"hello", timeout=1.0)

Requests go to the dispatcher's service address; the answer comes straight
from the worker that ran the function (PROTOCOL.md), so the socket is not
connected and answers are matched by request id.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import time

from . import errors, protocol



def parse_service(service) -> tuple[str, int]:
    """`"HOST:PORT"`, `"[V6]:PORT"`, `"HOST"` (port 7770) or `(host, port)`."""
    if isinstance(service, tuple):
        return service[0], int(service[1])
    text = str(service)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else protocol.DEFAULT_PORT
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, protocol.DEFAULT_PORT


def new_request_id() -> int:
    return random.getrandbits(64)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def answer_of(datagram: bytes, request_id: int, function_id: int) -> bytes | None:
    """The payload of a RESPONSE to `request_id`; raises its ERROR; None
    for datagrams that are not its answer."""
    try:
        hdr, payload = protocol.parse(datagram)
    except ValueError:
        return None
    if hdr.request_id != request_id:
        return None
    if hdr.kind == protocol.RESPONSE:
        return payload
    if hdr.kind == protocol.ERROR:
        code, text = protocol.error_parts(payload)
        raise errors.for_code(code, text, function_id=function_id, request_id=request_id)
    return None


class Client:
    """A client of one dispatcher service.

    timeout: seconds to wait for each attempt's answer.
    retries: further attempts after ERROR 2 (no up worker) or ERROR 7
      (every worker busy), which PROTOCOL.md's dispatcher sends only when no
      worker ran the request; with `idempotent=True` also after a timeout.
      ERROR 6 (the function ran and failed) is never retried.
    backoff: seconds before the first retry, doubled each time.
    """

    def __init__(self, service, timeout: float = 1.0, retries: int = 2, backoff: float = 0.02):
        self.service = parse_service(service)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def invoke(self, function_id: int, payload: bytes = b"", *, key: int = 0,
               timeout: float | None = None, idempotent: bool = False) -> bytes:
        """Runs function `function_id` on `payload`; returns its output."""
        if isinstance(payload, str):
            payload = payload.encode()
        request_id = new_request_id()
        datagram = protocol.request(function_id, request_id, payload, key)
        timeout = self.timeout if timeout is None else timeout
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return self._exchange(datagram, request_id, function_id, timeout)
            except errors.FaasError as err:
                if attempt == self.retries or not errors.retryable(err, idempotent):
                    raise
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    def workflow(self, workflow_id: int, payload: bytes = b"", **kwargs) -> bytes:
        """Runs workflow `workflow_id`; returns its last step's output."""
        return self.invoke(workflow_id, payload, **kwargs)

    def _exchange(self, datagram: bytes, request_id: int, function_id: int,
                  timeout: float) -> bytes:
        host, port = self.service
        with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, (host, port))
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.Timeout(
                        f"no answer from {host}:{port} within {timeout} s for function "
                        f"{function_id}: is a dispatcher serving there, with a worker up?",
                        function_id=function_id, request_id=request_id)
                sock.settimeout(left)
                try:
                    data, _ = sock.recvfrom(65536)
                except socket.timeout:
                    continue
                answer = answer_of(data, request_id, function_id)
                if answer is not None:
                    return answer


def invoke(service, function_id: int, payload: bytes = b"", timeout: float = 1.0,
           **kwargs) -> bytes:
    """One call: `Client(service, timeout).invoke(function_id, payload)`."""
    return Client(service, timeout=timeout).invoke(function_id, payload, **kwargs)


def main(argv=None) -> int:
    """`faas-invoke SERVICE FUNCTION_ID [PAYLOAD]`: prints the output."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: faas-invoke SERVICE FUNCTION_ID [PAYLOAD]", file=sys.stderr)
        return 2
    try:
        out = invoke(argv[0], int(argv[1]), (argv[2] if len(argv) == 3 else "").encode())
    except errors.FaasError as err:
        print(err, file=sys.stderr)
        return 1
    os.write(1, out + b"\n")
    return 0
