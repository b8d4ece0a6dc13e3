"""The ASGI application (Starlette) and the guard around every HTTP request.

The guard does for HTTP what ``Sidecar._guard`` and the API-key interceptor do for gRPC, with the same
settings and the same counters: ``Authorization: Bearer <key>`` checked in constant time (``/health`` stays
open for probes), ``max_concurrent`` counted together with gRPC's in-flight calls, bodies capped at
``max_message_bytes``, an optional deadline (header ``X-Request-Timeout`` in seconds, or the openai client's
``X-Stainless-Read-Timeout``), work cancelled when the client disconnects (it leaves the batcher's queue),
``mee_requests``/``mee_request_latency_seconds`` under ``rpc="http:<path>"``, and one JSON log line per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ...config import Settings
from ...errors import DeadlineExceeded, ResourceExhausted, Unauthenticated
from .. import auth
from ..handlers import Runtime
from ..metrics import ServiceMetrics
from . import openai_compat, tei
from .core import HttpCore
from .errors import BadParam, BodyTooLarge, openai_error, tei_error

log = logging.getLogger("milvus_embed_ext.service")

UNAUTHENTICATED_MESSAGE = "missing or invalid API key: send the header 'Authorization: Bearer <key>'"
_JSON = orjson.OPT_SERIALIZE_NUMPY
_EMPTY_OBJECT = "a JSON object"

Handler = Callable[[HttpCore, Any, "float | None"], Awaitable[Any]]


class Host(Protocol):
    """What the HTTP face needs from the server it lives in (``Sidecar``): settings, metrics, the shared
    in-flight count and the runtime (batcher, encoder and, once loaded, the reranker)."""

    settings: Settings
    metrics: ServiceMetrics
    rt: Runtime
    _in_flight: int


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


@dataclass
class RouteSpec:
    path: str
    method: str
    handler: Handler
    dialect: str  # "tei" | "openai"
    public: bool = False


class Guard:
    """Wraps route handlers with auth, limits, deadlines, cancellation, error mapping, metrics and logs."""

    def __init__(self, host: Host, core: HttpCore) -> None:
        self.host = host
        self.core = core
        s = host.settings
        self._keys = tuple(s.api_keys)
        self._secrets = s.secrets
        self._max_body = s.max_message_bytes
        self.stopping = False

    def endpoint(self, spec: RouteSpec) -> Callable[[Request], Awaitable[Response]]:
        rpc = f"http:{spec.path}"
        to_error = openai_error if spec.dialect == "openai" else tei_error

        async def call(request: Request) -> Response:
            started = time.perf_counter()
            status, code = 200, "OK"
            counted = False
            try:
                if not spec.public and self._keys and not self._authorized(request):
                    raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
                if not spec.public:
                    self._enter()
                    counted = True
                timeout = _deadline(request)
                body = await self._body(request, spec.method == "POST")
                result = await self._run(spec.handler(self.core, body, timeout), request, timeout)
                content = b"" if result is None else orjson.dumps(result, option=_JSON)
            except asyncio.CancelledError:
                code, status = "CANCELLED", 499
                raise
            except ClientGone:
                code, status = "CANCELLED", 499
                return Response(b"", status_code=499)
            except BaseException as exc:  # noqa: BLE001 - every failure leaves as the dialect's error body
                status, error_body, code = to_error(exc, rpc=rpc, secrets=self._secrets)
                content = orjson.dumps(error_body)
            finally:
                if counted:
                    self._leave()
                elapsed = time.perf_counter() - started
                if not spec.public or status != 200:
                    self.host.metrics.observe_request(rpc, code, elapsed)
                    log.info("http", extra={"rpc": rpc, "code": code, "status": status, "ms": round(elapsed * 1000, 3),
                                            "peer": _peer(request)})
            return Response(content, status_code=status, media_type="application/json" if content else None)

        return call

    # ------------------------------------------------------------------ pieces
    def _authorized(self, request: Request) -> bool:
        value = request.headers.get("authorization")
        token = auth.bearer_token([("authorization", value)] if value is not None else [])
        return auth.key_matches(token, self._keys)

    def _enter(self) -> None:
        host = self.host
        limit = host.settings.max_concurrent
        if host._in_flight >= limit:
            raise ResourceExhausted(f"too many concurrent requests (max_concurrent={limit}); retry with backoff or "
                                    "raise MEE_MAX_CONCURRENT")
        host._in_flight += 1
        host.metrics.in_flight.inc()

    def _leave(self) -> None:
        self.host._in_flight -= 1
        self.host.metrics.in_flight.dec()

    async def _body(self, request: Request, required: bool) -> Any:
        """The JSON object of the body (None for a GET), read in full (within max_message_bytes) so that the
        connection's next event is the client's disconnect, if it comes."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise BodyTooLarge(f"the body has {length} bytes, more than max_message_bytes={self._max_body}; send "
                               "fewer or shorter texts per request")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self._max_body:
                    raise BodyTooLarge(f"the body exceeds max_message_bytes={self._max_body}; send fewer or shorter "
                                       "texts per request")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientGone() from None
        if not required:
            return None
        raw = b"".join(chunks)
        if not raw.strip():
            raise BadParam(f"the body is empty; send {_EMPTY_OBJECT} with Content-Type: application/json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadParam(f"the body is not valid JSON ({exc}); send {_EMPTY_OBJECT} in UTF-8") from None
        if not isinstance(body, dict):
            raise BadParam(f"the body must be {_EMPTY_OBJECT}, got {tei.json_type(body)}")
        return body

    async def _run(self, work: Awaitable[Any], request: Request, timeout: float | None) -> Any:
        """``work``, cancelled when the client disconnects or the deadline passes."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnect(request))
        try:
            done, _ = await asyncio.wait({task, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            if gone in done:
                raise ClientGone()
            raise DeadlineExceeded(f"the request's deadline ({timeout:g} s) passed before the answer was ready; "
                                   "raise the client timeout or send fewer texts")
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone (after the body was read, the only event left is the disconnect)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


def _deadline(request: Request) -> float | None:
    raw = request.headers.get("x-request-timeout")
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise BadParam(f"header X-Request-Timeout must be a positive number of seconds, got {raw!r}")
        return value
    with contextlib.suppress(ValueError):  # the openai client's own timeout: a hint, ignored when odd
        value = float(request.headers.get("x-stainless-read-timeout", ""))
        if math.isfinite(value) and value > 0:
            return value
    return None


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else ""


def routes(health: Handler) -> list[RouteSpec]:
    """Every route: TEI's (and ``POST /``, TEI's default task, which huggingface_hub's InferenceClient calls for a
    base URL), then OpenAI's (``/embeddings`` too, as TEI serves it)."""
    return [
        RouteSpec("/embed", "POST", tei.embed, "tei"),
        RouteSpec("/", "POST", tei.embed, "tei"),
        RouteSpec("/embed_sparse", "POST", tei.embed_sparse, "tei"),
        RouteSpec("/embed_all", "POST", tei.embed_all, "tei"),
        RouteSpec("/rerank", "POST", tei.rerank, "tei"),
        RouteSpec("/tokenize", "POST", tei.tokenize, "tei"),
        RouteSpec("/info", "GET", tei.info, "tei"),
        RouteSpec("/health", "GET", health, "tei", public=True),
        RouteSpec("/", "GET", health, "tei", public=True),
        RouteSpec("/v1/embeddings", "POST", openai_compat.embeddings, "openai"),
        RouteSpec("/embeddings", "POST", openai_compat.embeddings, "openai"),
        RouteSpec("/v1/models", "GET", openai_compat.models, "openai"),
    ]


def build_app(host: Host, core: HttpCore) -> tuple[Starlette, Guard]:
    """The Starlette app of ``host`` and its guard (whose ``stopping`` flag turns ``/health`` to 503)."""
    guard = Guard(host, core)

    async def health(core: HttpCore, body: Any, timeout: float | None) -> None:
        tei.health(core, guard.stopping)

    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for spec in routes(health):
        by_path.setdefault(spec.path, {})[spec.method] = guard.endpoint(spec)

    def dispatch(methods: dict[str, Callable[[Request], Awaitable[Response]]]) -> Callable[[Request], Awaitable[Response]]:
        if len(methods) == 1:
            return next(iter(methods.values()))

        async def by_method(request: Request) -> Response:
            return await methods[request.method if request.method in methods else "GET"](request)

        return by_method

    app = Starlette(routes=[Route(path, dispatch(methods), methods=sorted(methods))
                            for path, methods in by_path.items()])
    return app, guard


__all__ = ["build_app", "routes", "Guard", "RouteSpec", "UNAUTHENTICATED_MESSAGE"]
