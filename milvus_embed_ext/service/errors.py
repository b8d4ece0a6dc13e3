"""The ONE place where domain errors become gRPC status codes (and back, for the client).

Handlers raise domain errors from :mod:`milvus_embed_ext.errors`; :func:`to_status` turns any
exception into ``(code, message)``. Unexpected exceptions become INTERNAL with a generic message and
an error id; the details go to the server log only. Messages are scrubbed of configured secrets.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
import uuid
from collections.abc import Iterable

import grpc

from .. import errors as e

log = logging.getLogger("milvus_embed_ext.service")

# Most specific first (isinstance is checked in order).
DOMAIN_TO_CODE: tuple[tuple[type[e.MilvusEmbedError], grpc.StatusCode], ...] = (
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (e.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (e.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.ModelLoadError, grpc.StatusCode.FAILED_PRECONDITION),
    (e.ConsistencyError, grpc.StatusCode.ABORTED),
)

CODE_TO_DOMAIN: dict[grpc.StatusCode, type[e.MilvusEmbedError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: e.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: e.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: e.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: e.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: e.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: e.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: e.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: e.DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: e.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: e.Unauthenticated,
    grpc.StatusCode.ABORTED: e.ConsistencyError,
}


def _scrub(message: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


def _is_milvus_connection_error(exc: BaseException) -> bool:
    """pymilvus errors that mean "Milvus cannot be reached" (the store should map them; this is a net)."""
    try:
        from pymilvus.exceptions import ConnectionNotExistException, MilvusUnavailableException
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (ConnectionNotExistException, MilvusUnavailableException))


def to_status(exc: BaseException, *, rpc: str = "", secrets: Iterable[str] = ()) -> tuple[grpc.StatusCode, str]:
    """Status code and client-safe message for an exception raised while serving ``rpc``."""
    secrets = tuple(secrets)
    for cls, code in DOMAIN_TO_CODE:
        if isinstance(exc, cls):
            return code, _scrub(str(exc), secrets) or cls.__name__
    if isinstance(exc, e.MilvusEmbedError):  # a domain error without its own code
        return grpc.StatusCode.UNKNOWN, _scrub(str(exc), secrets) or type(exc).__name__
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the request finished; raise the client timeout"
    if _is_milvus_connection_error(exc):
        log.warning("milvus unreachable during %s: %s", rpc, _scrub(str(exc), secrets))
        return grpc.StatusCode.UNAVAILABLE, "Milvus is unreachable; retry later or check MEE_MILVUS_URI"
    error_id = uuid.uuid4().hex[:12]
    trace = _scrub("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), secrets)
    log.error(
        "internal error in %s (error_id=%s): %s", rpc, error_id, _scrub(repr(exc), secrets),
        extra={"error_id": error_id, "rpc": rpc, "traceback": trace},
    )
    return grpc.StatusCode.INTERNAL, f"internal error (error_id={error_id}); the server log has the details"


def from_rpc_error(err: grpc.RpcError) -> e.MilvusEmbedError:
    """Client side: the domain error for a failed call (unknown codes become Unavailable/MilvusEmbedError)."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    message = f"{details} [{code.name}]"
    cls = CODE_TO_DOMAIN.get(code, e.MilvusEmbedError)
    out = cls(message)
    out.grpc_code = code  # type: ignore[attr-defined]
    return out


__all__ = ["to_status", "from_rpc_error", "DOMAIN_TO_CODE", "CODE_TO_DOMAIN"]
