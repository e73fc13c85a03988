"""Python client for the in-kernel FaaS dispatcher.

- `invoke(service, function_id, payload, timeout=...)` and `Client` (sync),
- `ainvoke(...)` and `AsyncClient` (asyncio),
- one exception per ERROR code (`faas_dispatcher.errors`),
- `faas_dispatcher.warm.run(handler)`: a handler as a warm process of
  `dispatcher serve --function ID=warm:CMD`.
"""

from .aio import AsyncClient, ainvoke
from .client import Client, invoke
from .errors import (FaasError, MalformedRequest, NoUpWorker, Overloaded, PayloadTooLarge,
                     Timeout, UnknownFunction, UnsupportedVersion, WorkerFailure)

__all__ = [
    "AsyncClient", "Client", "FaasError", "MalformedRequest", "NoUpWorker", "Overloaded",
    "PayloadTooLarge", "Timeout", "UnknownFunction", "UnsupportedVersion", "WorkerFailure",
    "ainvoke", "invoke",
]
