"""Domain errors -> HTTP status and body, per dialect. Builds on :func:`..errors.to_status`, the one place where
exceptions become codes and client-safe messages (secrets scrubbed, internal errors logged with an id).

TEI (``{"error", "error_type"}``): 400 Empty, 413 too large (too many inputs, a text too long, a body too big),
422 Validation, 424 Backend, 429 Overloaded, 503 Unhealthy; plus 401 without a valid key and 504 when the
request's own deadline passed. OpenAI (``{"error": {"message", "type", "param", "code"}}``): 400 for any bad
input, 401, 413 for a body too big, 429, 503, 504, 500.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from ...errors import InvalidArgument
from ..errors import to_status


class EmptyInput(InvalidArgument):
    """Nothing to work on (an empty list): TEI's 400 ``Empty``."""


class InputTooLarge(InvalidArgument):
    """Too many inputs, or a text longer than max_length with truncation off: TEI's 413."""


class BodyTooLarge(InputTooLarge):
    """The request body exceeds max_message_bytes: 413 in both dialects."""


class BadParam(InvalidArgument):
    """An invalid field; ``param`` names it for OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


_TEI: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "Validation"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "Overloaded"),
    grpc.StatusCode.UNAVAILABLE: (503, "Unhealthy"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "Backend"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "Unauthorized"),
}
_TEI_DEFAULT = (424, "Backend")  # TEI's "the model could not do it" (inference errors, no reranker, internal)

_OPENAI: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error", "timeout"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
}
_OPENAI_DEFAULT = (500, "server_error", None)


def tei_error(exc: BaseException, *, rpc: str, secrets: Iterable[str] = ()) -> tuple[int, dict[str, Any], str]:
    """(HTTP status, TEI error body, gRPC-style code name for metrics) of ``exc``."""
    code, message = to_status(exc, rpc=rpc, secrets=secrets)
    if isinstance(exc, EmptyInput):
        return 400, {"error": message, "error_type": "Empty"}, code.name
    if isinstance(exc, InputTooLarge):
        return 413, {"error": message, "error_type": "Validation"}, code.name
    status, error_type = _TEI.get(code, _TEI_DEFAULT)
    return status, {"error": message, "error_type": error_type}, code.name


def openai_error(exc: BaseException, *, rpc: str, secrets: Iterable[str] = ()) -> tuple[int, dict[str, Any], str]:
    """(HTTP status, OpenAI error body, gRPC-style code name for metrics) of ``exc``."""
    code, message = to_status(exc, rpc=rpc, secrets=secrets)
    status, error_type, error_code = _OPENAI.get(code, _OPENAI_DEFAULT)
    if isinstance(exc, BodyTooLarge):
        status = 413
    param = exc.param if isinstance(exc, BadParam) else None
    return status, {"error": {"message": message, "type": error_type, "param": param, "code": error_code}}, code.name


__all__ = ["EmptyInput", "InputTooLarge", "BodyTooLarge", "BadParam", "tei_error", "openai_error"]
