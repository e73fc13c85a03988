"""The warm runner speaks the framing of docs/worker-api.md: one answer
frame per request frame, exceptions answered as failures, output kept off
stdout."""

import os
import struct
import subprocess
import sys

from faas_dispatcher import warm

HANDLER = """
import sys
from faas_dispatcher.warm import run
def handle(payload, request):
    print("diagnostics go to stderr")
    if payload == b"boom":
        raise RuntimeError("it broke")
    return payload[::-1] + b" " + str(request.request_id).encode()
run(handle)
"""


def request_frame(request_id, payload):
    body = struct.pack(">IQQIB3x", 1, request_id, 0, 0, 0) + payload
    return struct.pack(">I", len(body)) + body


def read_answer(stream):
    (length,) = struct.unpack(">I", stream.read(4))
    body = stream.read(length)
    request_id, status = struct.unpack(">QB", body[:9])
    return request_id, status, body[9:]


def test_frames_in_frames_out():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(warm.__file__)))
    proc = subprocess.Popen([sys.executable, "-c", HANDLER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdin.write(request_frame(41, b"abc"))
    proc.stdin.flush()
    assert read_answer(proc.stdout) == (41, warm.STATUS_OK, b"cba 41")
    proc.stdin.write(request_frame(42, b"boom"))
    proc.stdin.flush()
    request_id, status, text = read_answer(proc.stdout)
    assert (request_id, status) == (42, warm.STATUS_FAILED)
    assert b"RuntimeError: it broke" in text
    proc.stdin.write(request_frame(43, b"x"))
    proc.stdin.close()
    assert read_answer(proc.stdout) == (43, warm.STATUS_OK, b"x 43")
    assert proc.wait(timeout=5) == 0, "it ends when its stdin does"
    assert b"diagnostics go to stderr" in proc.stderr.read()
