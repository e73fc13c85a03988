#!/usr/bin/env python3
"""The warm echo of bench-hosting: faas_dispatcher.warm around a handler
that returns its input, so that what is measured is the framing and the
process hop, not the function."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "clients", "python"))
from faas_dispatcher.warm import run  # noqa: E402

run(lambda payload, request: payload)
