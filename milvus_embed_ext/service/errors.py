"""Where the service turns any exception into a gRPC status (the code table itself is
:mod:`milvus_embed_ext.wire.status`, shared with the client).

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
from ..wire.status import CODE_TO_DOMAIN, DOMAIN_TO_CODE, code_of, from_rpc_error

log = logging.getLogger("milvus_embed_ext.service")


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
    code = code_of(exc)
    if code is not None:
        return code, _scrub(str(exc), secrets) or type(exc).__name__
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


__all__ = ["to_status", "from_rpc_error", "DOMAIN_TO_CODE", "CODE_TO_DOMAIN"]
