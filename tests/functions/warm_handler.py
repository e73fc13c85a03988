#!/usr/bin/env python3
"""The warm handler the hosting tests run (through faas_dispatcher.warm):
by payload, `pid` answers its process id, `crash` writes a line to stderr
and exits 3 mid-request, `fail` raises, `sleep:MS` sleeps, `env` answers
its environment's names, `last` answers and then the process exits
(idle, before the next request), anything else comes back upper-cased."""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "clients", "python"))
from faas_dispatcher.warm import run  # noqa: E402


def handle(payload, request):
    text = payload.decode()
    if text == "pid":
        return str(os.getpid())
    if text == "crash":
        print("crashing on purpose", file=sys.stderr, flush=True)
        os._exit(3)
    if text == "fail":
        raise ValueError("asked to fail")
    if text.startswith("sleep:"):
        time.sleep(int(text[6:]) / 1000)
        return "slept"
    if text == "env":
        return " ".join(sorted(os.environ))
    if text == "last":
        # Exit once this answer is out: the next request finds it gone.
        import threading
        threading.Timer(0.05, lambda: os._exit(0)).start()
        return "bye"
    if text == "ids":
        return f"{request.function_id} {request.workflow_id} {request.step}"
    return text.upper()


run(handle)
