"""One exception per ERROR code of PROTOCOL.md, and what a caller may do
about each: `retry_safe` says the request certainly did not run (no worker
took it), so sending it again cannot run it twice."""

from __future__ import annotations


class FaasError(Exception):
    """Any failure to get a RESPONSE."""

    code: int = 0
    retry_safe = False

    def __init__(self, message: str, *, function_id: int | None = None,
                 request_id: int | None = None):
        super().__init__(message)
        self.message = message
        self.function_id = function_id
        self.request_id = request_id


class Timeout(FaasError):
    """No answer in time. The request may have run (its answer lost), so it
    is retried only for calls marked idempotent."""


class UnknownFunction(FaasError):
    """ERROR 1: no such function or workflow."""
    code = 1


class NoUpWorker(FaasError):
    """ERROR 2: the function has no worker up; nothing ran."""
    code = 2
    retry_safe = True


class UnsupportedVersion(FaasError):
    """ERROR 3: the dispatcher does not speak this header version."""
    code = 3


class MalformedRequest(FaasError):
    """ERROR 4: the request does not parse (or names a step that does not exist)."""
    code = 4


class PayloadTooLarge(FaasError):
    """ERROR 5: the request or the function's answer does not fit one datagram."""
    code = 5


class WorkerFailure(FaasError):
    """ERROR 6: the function ran and failed (or timed out). It may have done
    part of its work, so it is never retried for you."""
    code = 6


class Overloaded(FaasError):
    """ERROR 7: every worker was busy; no worker ran the request."""
    code = 7
    retry_safe = True


BY_CODE = {cls.code: cls for cls in (UnknownFunction, NoUpWorker, UnsupportedVersion,
                                     MalformedRequest, PayloadTooLarge, WorkerFailure,
                                     Overloaded)}


def for_code(code: int, message: str, **ids) -> FaasError:
    cls = BY_CODE.get(code, FaasError)
    err = cls(f"ERROR {code}: {message}", **ids)
    err.code = code
    return err


def retryable(err: FaasError, idempotent: bool) -> bool:
    """Whether sending the request again is safe: no worker ran it (ERROR 2
    or 7), or it timed out and the caller said running it twice is fine."""
    return err.retry_safe or (idempotent and isinstance(err, Timeout))
