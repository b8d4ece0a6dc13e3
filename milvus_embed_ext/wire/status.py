"""Domain errors <-> gRPC status codes: the one table both sides read.

The service turns a raised domain error into its code (:mod:`milvus_embed_ext.service.errors` adds
logging, secret scrubbing and the INTERNAL fallback); the client turns a failed call back into the
domain error. Neither side keeps its own copy of the table.
"""

from __future__ import annotations

import grpc

from .. import errors as e

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



def code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a domain error, or None for any other exception."""
    for cls, code in DOMAIN_TO_CODE:
        if isinstance(exc, cls):
            return code
    return None


def from_rpc_error(err: grpc.RpcError) -> e.MilvusEmbedError:
    """Client side: the domain error for a failed call (unknown codes become Unavailable/MilvusEmbedError)."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    message = f"{details} [{code.name}]"
    cls = CODE_TO_DOMAIN.get(code, e.MilvusEmbedError)
    out = cls(message)
    out.grpc_code = code  # type: ignore[attr-defined]
    return out



__all__ = ["CODE_TO_DOMAIN", "DOMAIN_TO_CODE", "code_of", "from_rpc_error"]
