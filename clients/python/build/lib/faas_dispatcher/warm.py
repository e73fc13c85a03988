"""Run a Python handler as a warm process of `dispatcher serve
--function ID=warm:CMD` (framing in docs/worker-api.md).

    # handler.py
    from faas_dispatcher.warm import run

    def handle(payload: bytes, request) -> bytes:
        return payload.upper()

    run(handle)

The worker starts the process once and sends it one request at a time on
stdin; `handle` returns the output (bytes or str). An exception becomes the
request's ERROR 6 with its message, and the process carries on. Print
diagnostics to stderr (they go to the worker's log); stdout carries frames.
The process ends when the worker closes its stdin.

Only the standard library: this file also runs when copied next to a
handler, for hosts where the package is not installed.
"""

from __future__ import annotations

import struct
import sys
import traceback
from dataclasses import dataclass
from typing import BinaryIO, Callable, Union

# After the 4-byte length: function_id, request_id, key, workflow_id, step,
# 3 reserved bytes.
_REQUEST = struct.Struct(">IQQIB3x")
# After the 4-byte length: request_id, status.
_ANSWER = struct.Struct(">QB")
STATUS_OK, STATUS_FAILED = 0, 1


@dataclass
class Request:
    """A request's ids, as the worker frames them."""
    function_id: int
    request_id: int
    key: int
    workflow_id: int
    step: int


Handler = Callable[[bytes, Request], Union[bytes, str]]


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_request(stream: BinaryIO) -> tuple[Request, bytes] | None:
    """The next request frame, or None at the end of the stream."""
    head = _read_exactly(stream, 4)
    if head is None:
        return None
    (length,) = struct.unpack(">I", head)
    if length < _REQUEST.size:
        raise ValueError(f"a request frame of {length} bytes, shorter than its ids")
    body = _read_exactly(stream, length)
    if body is None:
        return None
    return Request(*_REQUEST.unpack_from(body)), body[_REQUEST.size:]


def answer_frame(request_id: int, ok: bool, payload: bytes) -> bytes:
    body = _ANSWER.pack(request_id, STATUS_OK if ok else STATUS_FAILED) + payload
    return struct.pack(">I", len(body)) + body


def serve(handler: Handler, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answers every request on `stdin` with `handler`, until it ends."""
    while True:
        got = read_request(stdin)
        if got is None:
            return
        request, payload = got
        try:
            out = handler(payload, request)
            if isinstance(out, str):
                out = out.encode()
            elif out is None:
                out = b""
            frame = answer_frame(request.request_id, True, bytes(out))
        except Exception as err:  # the request fails, the process goes on
            traceback.print_exc(file=sys.stderr)
            text = f"{type(err).__name__}: {err}"
            frame = answer_frame(request.request_id, False, text.encode())
        stdout.write(frame)
        stdout.flush()


def run(handler: Handler) -> None:
    """Serves `handler` on this process's stdin and stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Anything the handler prints goes to stderr, not into the frames.
    sys.stdout = sys.stderr
    serve(handler, stdin, stdout)
