"""API-key authentication and TLS credentials.

* Keys: every RPC except ``grpc.health.v1.Health`` (so that load-balancer and kubelet probes work
  without secrets) needs ``authorization: Bearer <key>`` when ``Settings.api_keys`` is non-empty.
  Server reflection is *not* exempt: with keys configured, ``grpcurl`` needs ``-H 'authorization: Bearer <key>'``.
  The presented key is compared with every configured key using :func:`hmac.compare_digest`, without
  stopping at the first match, so timing reveals neither which key matched nor how much of it.
* TLS: ``tls_cert``/``tls_key`` enable TLS; adding ``tls_client_ca`` requires client certificates (mTLS).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from ..config import Settings
from ..wire.tls import read_pem

OPEN_SERVICE_PREFIXES = ("/grpc.health.v1.Health/",)
UNAUTHENTICATED_MESSAGE = "missing or invalid API key: send metadata 'authorization: Bearer <key>'"


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of the first ``authorization: Bearer ...`` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


def key_matches(presented: str | None, keys: Sequence[str]) -> bool:
    """Constant-time membership test over *all* keys."""
    if presented is None:
        return False
    candidate = presented.encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.encode("utf-8"))
    return matched


def _denying_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

    kwargs = {"request_deserializer": None, "response_serializer": None}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a valid bearer key with UNAUTHENTICATED (health is exempt)."""

    def __init__(self, keys: Sequence[str], on_reject: Callable[[str], None] | None = None) -> None:
        if not keys:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self._keys = tuple(keys)
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_SERVICE_PREFIXES):
            return handler
        if key_matches(bearer_token(handler_call_details.invocation_metadata), self._keys):
            return handler
        if self._on_reject is not None:
            self._on_reject(method)
        return _denying_handler(handler)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS with ``tls_client_ca``) credentials, or None for plaintext."""
    if not settings.tls_cert:
        return None
    cert = read_pem(settings.tls_cert, "tls_cert (MEE_TLS_CERT)")
    key = read_pem(settings.tls_key, "tls_key (MEE_TLS_KEY)")
    client_ca = read_pem(settings.tls_client_ca, "tls_client_ca (MEE_TLS_CLIENT_CA)") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
