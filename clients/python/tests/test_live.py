"""The client against a running dispatcher: the demo testbed's functions
(tests/src/examples.rs starts them; `cargo xtask test` runs this file in
the client's namespace with FAAS_SERVICE set). Skipped without it."""

import asyncio
import json
import os
import time

import pytest

from faas_dispatcher import (AsyncClient, Client, NoUpWorker, UnknownFunction, WorkerFailure,
                             ainvoke, invoke)

SERVICE = os.environ.get("FAAS_SERVICE")
pytestmark = pytest.mark.skipif(not SERVICE, reason="FAAS_SERVICE names no dispatcher")


def ids():
    return {name: int(os.environ[f"FAAS_{name}"]) for name in
            ("GREET", "WORDCOUNT", "REVERSE", "WORKFLOW", "NO_WORKER")}


def test_each_hosting_mode_answers():
    f = ids()
    assert invoke(SERVICE, f["GREET"], b"python").startswith(b"hello, python (request ")
    counted = json.loads(invoke(SERVICE, f["WORDCOUNT"], b"to be or not to be"))
    assert counted["words"] == 6 and counted["common"][0] == ["to", 2]
    assert invoke(SERVICE, f["REVERSE"], "stressed") == b"desserts"


def test_a_workflow_runs_its_steps():
    out = Client(SERVICE).workflow(ids()["WORKFLOW"], b"olleh olleh")
    assert json.loads(out) == {"words": 2, "common": [["hello", 2]]}


def test_errors_raise_their_own_exceptions():
    f = ids()
    with pytest.raises(UnknownFunction):
        invoke(SERVICE, 999_999, b"x")
    with pytest.raises(WorkerFailure, match="greet: send a name"):
        invoke(SERVICE, f["GREET"], b"")
    with pytest.raises(WorkerFailure, match="UnicodeDecodeError"):
        invoke(SERVICE, f["WORDCOUNT"], b"\xff\xfe")
    start = time.monotonic()
    with pytest.raises(NoUpWorker):
        Client(SERVICE, retries=2, backoff=0.05).invoke(f["NO_WORKER"], b"x")
    assert time.monotonic() - start >= 0.15, "retried twice, backing off"


def test_asyncio_calls_share_one_socket():
    f = ids()

    async def many():
        async with AsyncClient(SERVICE, timeout=3) as client:
            return await asyncio.gather(*(client.invoke(f["REVERSE"], f"n{i}") for i in range(40)))

    assert asyncio.run(many()) == [f"n{i}"[::-1].encode() for i in range(40)]
    assert asyncio.run(ainvoke(SERVICE, f["REVERSE"], b"ab")) == b"ba"
