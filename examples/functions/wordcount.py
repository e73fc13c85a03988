#!/usr/bin/env python3
"""A warm Python function (`dispatcher serve --function 12=warm:examples/functions/wordcount.py`):
started once, it answers one request at a time through faas_dispatcher.warm.
Input: UTF-8 text. Output: JSON with the word count and the most common
words. Text that is not UTF-8 raises, which the caller gets as ERROR 6."""

import collections
import json
import os
import sys

try:
    from faas_dispatcher.warm import run
except ImportError:  # not installed: use the package in this repository
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "clients", "python"))
    from faas_dispatcher.warm import run


def handle(payload: bytes, request) -> bytes:
    words = payload.decode("utf-8").split()
    common = collections.Counter(w.lower() for w in words).most_common(3)
    return json.dumps({"words": len(words), "common": common}).encode()


if __name__ == "__main__":
    run(handle)
