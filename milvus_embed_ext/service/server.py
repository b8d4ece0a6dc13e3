"""The grpc.aio sidecar: lifecycle, health, reflection, limits, and the guard around every RPC.

Start-up order: bind the port with health NOT_SERVING (probes see us at once), load the model on the
encoder thread, connect Milvus (retrying while it is unreachable: bounded by ``milvus_startup_timeout_s``,
jittered exponential backoff, every attempt logged), check or apply the schema, then report SERVING.
SIGTERM/SIGINT: health NOT_SERVING, stop accepting, drain in-flight RPCs for ``shutdown_grace_s``, stop
the batcher, close Milvus.

Once serving, a watcher probes Milvus every ``milvus_health_interval_s``. A refused connection or a dead
Lite process at once, or ``HUNG_AFTER_SLOW_PROBES`` probes in a row that time out (a hung Milvus; one slow
answer from a busy one is not an outage), turn health NOT_SERVING (the overall service, Documents and Search; Embedder needs no Milvus and stays SERVING),
sets ``mee_milvus_up`` to 0 with the reason in ``mee_milvus_last_error_info``, and makes every request
that needs Milvus fail at once with UNAVAILABLE saying to retry. The watcher then reconnects by itself
(a dead embedded Lite server process is restarted, at most ``milvus_lite_restarts`` times in a row,
with backoff), loads the collections again, and turns health SERVING. docs/reliability.md has the
measured behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ..config import Settings, redact_uri
from ..contracts import ServedEncoder, ServedReranker, WatchedBackend
from ..encoder.factory import load_encoder
from ..errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MilvusEmbedError,
    ResourceExhausted,
    Unavailable,
)
from ..wire._generated import documents_pb2, embedder_pb2, search_pb2
from . import auth
from .batcher import Batcher, RerankBatcher
from .errors import to_status
from .handlers import DocumentsHandlers, EmbedderHandlers, Runtime, SearchHandlers
from .metrics import ServiceMetrics, start_metrics_endpoint

if TYPE_CHECKING:
    from .httpapi import HttpFace

log = logging.getLogger("milvus_embed_ext.service")

PROBE_TIMEOUT_S = 3.0
"""How long one health probe of Milvus may take."""
HUNG_AFTER_SLOW_PROBES = 3
"""Probes in a row that must time out before a Milvus that keeps its connections open counts as lost (hung)."""
STARTUP_LOAD_TIMEOUT_S = 600.0
"""Embedded Lite: how long one collection may take to load into memory at start-up (each load waits this long)."""

EMBEDDER = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
DOCUMENTS = documents_pb2.DESCRIPTOR.services_by_name["Documents"].full_name
SEARCH = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

def connect_store(settings: Settings) -> WatchedBackend:
    from ..store import MilvusStore

    return MilvusStore.connect(settings)  # creates a Lite file's directory, or says why it cannot


def ensure_schema(settings: Settings, store: WatchedBackend) -> tuple[str, ...]:
    """Bring a brand-new embedded database to the latest revision; refuse an unknown or pending revision.

    Only an embedded (Lite) database with no migration history and no collection of that name is
    migrated implicitly, so that ``milvus-embed serve`` works in one command. Servers are never
    migrated implicitly: ops run ``milvus-embed migrate upgrade`` deliberately. Anything else that is not
    at the scripts' head raises FailedPrecondition saying what to run. Returns the current revision(s).
    """
    from .. import migrations

    if settings.is_embedded:
        state = migrations.current(settings, store=store)
        if not state.applied and not store.has_collection(settings.collection):
            log.info("new embedded database: applying the built-in migrations",
                     extra={"uri": settings.milvus_uri, "collection": settings.collection})
            applied = migrations.upgrade(settings, "head", store=store)
            log.info("migrated", extra={"revisions": ",".join(applied)})
    return migrations.check_revision_known(settings, store=store, require_head=True)


class Sidecar:
    """One server instance. ``await start()`` returns once the port is bound; readiness comes later."""

    def __init__(self, settings: Settings, *, encoder: ServedEncoder | None = None,
                 store: WatchedBackend | None = None, reranker: ServedReranker | None = None) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self._encoder_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mee-encoder")
        self._reranker_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mee-reranker")
        self._given_reranker = reranker
        self.rt = Runtime(settings=settings,
                          store_executor=ThreadPoolExecutor(max_workers=settings.milvus_threads,
                                                            thread_name_prefix="mee-store"),
                          metrics=self.metrics)
        self._given_encoder = encoder
        self._given_store = store
        self.schema_settings = settings
        self._secrets = settings.secrets
        self._in_flight = 0
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._startup: asyncio.Task[None] | None = None
        self._metrics_server: Any = None
        self._http: HttpFace | None = None  # the HTTP face (service/httpapi), when http_listen is set
        self.port: int = 0
        self.http_port: int = 0
        self.startup_error: BaseException | None = None
        self.ready = asyncio.Event()
        self.failed = asyncio.Event()
        self._watch_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mee-milvus-watch")
        self._watcher: asyncio.Task[None] | None = None
        self.milvus_down_since: float | None = None  # monotonic time of the outage's start; None while up

    # ------------------------------------------------------------------ guard
    async def _guard(self, rpc: str, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[Message]]) -> Message:
        started = time.perf_counter()
        code = "OK"
        if self._in_flight >= self.settings.max_concurrent:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED.name
            self.metrics.observe_request(rpc, code, 0.0)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many concurrent requests (max_concurrent={self.settings.max_concurrent}); "
                                "retry with backoff or raise MEE_MAX_CONCURRENT")
        self._in_flight += 1
        self.metrics.in_flight.inc()
        try:
            return await call()
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            code = "ABORTED_BY_HANDLER"
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure leaves here as a status
            status, message = to_status(exc, rpc=rpc, secrets=self._secrets)
            code = status.name
            await context.abort(status, message)
            raise  # unreachable: abort raises
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(rpc, code, elapsed)
            log.info("rpc", extra={"rpc": rpc, "code": code, "ms": round(elapsed * 1000, 3),
                                   "peer": context.peer()})

    def _rejected(self, method: str) -> None:
        rpc = method.rsplit("/", 1)[-1]
        self.metrics.observe_request(rpc, grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
        log.info("rpc", extra={"rpc": rpc, "code": grpc.StatusCode.UNAUTHENTICATED.name, "ms": 0.0})

    @staticmethod
    def _parse(cls: type[Message], raw: bytes) -> Message:
        try:
            return cls.FromString(raw)
        except DecodeError as exc:
            raise InvalidArgument(
                f"request is not a valid {cls.DESCRIPTOR.full_name} ({exc}); strings must be valid UTF-8 "
                "(no lone surrogates) and fields must match the proto"
            ) from None

    def _unary(self, rpc: str, req_cls: type[Message], fn: Callable[[Any, Any], Awaitable[Message]]) -> grpc.RpcMethodHandler:
        async def behavior(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
            return await self._guard(rpc, context, lambda: fn(self._parse(req_cls, raw), context))

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=None, response_serializer=lambda m: m.SerializeToString())

    def _stream_unary(self, rpc: str, req_cls: type[Message],
                      fn: Callable[[AsyncIterator[Any], Any], Awaitable[Message]]) -> grpc.RpcMethodHandler:
        async def behavior(raw_iter: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Message:
            async def parsed() -> AsyncIterator[Message]:
                async for raw in raw_iter:
                    yield self._parse(req_cls, raw)

            return await self._guard(rpc, context, lambda: fn(parsed(), context))

        return grpc.stream_unary_rpc_method_handler(
            behavior, request_deserializer=None, response_serializer=lambda m: m.SerializeToString())

    def _generic_handlers(self) -> list[grpc.GenericRpcHandler]:
        emb = EmbedderHandlers(self.rt)
        docs = DocumentsHandlers(self.rt)
        srch = SearchHandlers(self.rt)
        return [
            grpc.method_handlers_generic_handler(EMBEDDER, {
                "Embed": self._unary("Embed", embedder_pb2.EmbedRequest, emb.embed),
                "Rerank": self._unary("Rerank", embedder_pb2.RerankRequest, emb.rerank),
            }),
            grpc.method_handlers_generic_handler(DOCUMENTS, {
                "Upsert": self._unary("Upsert", documents_pb2.UpsertRequest, docs.upsert),
                "UpsertStream": self._stream_unary("UpsertStream", documents_pb2.UpsertRequest, docs.upsert_stream),
                "Delete": self._unary("Delete", documents_pb2.DeleteRequest, docs.delete),
                "Get": self._unary("Get", documents_pb2.GetRequest, docs.get),
            }),
            grpc.method_handlers_generic_handler(SEARCH, {
                "HybridSearch": self._unary("HybridSearch", search_pb2.HybridSearchRequest, srch.hybrid_search),
            }),
        ]

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        s = self.settings
        interceptors = [auth.ApiKeyInterceptor(s.api_keys, on_reject=self._rejected)] if s.api_keys else []
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        server.add_generic_rpc_handlers(self._generic_handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((EMBEDDER, DOCUMENTS, SEARCH, HEALTH, reflection.SERVICE_NAME), server)
        for name in ("", EMBEDDER, DOCUMENTS, SEARCH):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        creds = auth.server_credentials(s)
        try:
            port = server.add_secure_port(s.listen, creds) if creds else server.add_insecure_port(s.listen)
        except RuntimeError as exc:
            raise InvalidArgument(f"cannot listen on {s.listen} ({exc}); is the port in use? set --listen / MEE_LISTEN") from None
        if port == 0:
            raise InvalidArgument(f"cannot listen on {s.listen}; is the port in use? set --listen / MEE_LISTEN")
        self.port = port
        if s.metrics_listen:
            self._metrics_server = start_metrics_endpoint(s.metrics_listen, self.metrics)
        await server.start()
        self._server = server
        if s.http_listen:  # TEI and OpenAI dialects, same loop, keys, limits and batcher
            from .httpapi import HttpFace

            self._http = HttpFace(self)
            try:
                self.http_port = await self._http.start()
            except BaseException:
                await server.stop(0)
                raise
        log.info("listening", extra={"listen": s.listen, "port": port, "tls": bool(creds),
                                     "mtls": bool(s.tls_client_ca), "auth": bool(s.api_keys)})
        log.info("settings", extra={"settings": str(s.redacted())})
        self._startup = asyncio.create_task(self._bring_up(), name="mee-startup")
        return port

    async def _bring_up(self) -> None:
        try:
            # Model and Milvus come up concurrently; the schema check needs both (dense width of the model).
            connecting = asyncio.create_task(self._connect_milvus())
            try:
                await self._load_model()
            except BaseException:
                connecting.cancel()
                raise
            await self._health.set(EMBEDDER, health_pb2.HealthCheckResponse.SERVING)
            store = await connecting
            store.observer = self.metrics.observe_milvus_call  # Milvus call latency by method
            await self._check_schema(store)
            if self.settings.is_embedded and self._given_store is None:
                await self._load_collections(store)
            for name in ("", DOCUMENTS, SEARCH):
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
            self.metrics.ready.set(1)
            self.metrics.milvus_up.set(1)
            encoder, _ = self.rt.require_encoder()
            log.info("ready", extra={"model": encoder.model_id, "device": encoder.device})
            self.ready.set()
            self._watcher = asyncio.create_task(self._watch_milvus(store), name="mee-milvus-watch")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported by serve()
            self.startup_error = exc
            log.error("start-up failed: %s", exc if isinstance(exc, MilvusEmbedError) else repr(exc),
                      exc_info=not isinstance(exc, MilvusEmbedError))
            self.failed.set()

    async def _load_model(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        encoder: ServedEncoder
        if self._given_encoder is not None:
            encoder = self._given_encoder
        else:
            encoder, path = await loop.run_in_executor(self._encoder_executor, load_encoder, self.settings)
            # migrations size the dense fields from the checkpoint actually loaded (the demo one included)
            self.schema_settings = self.settings.replace(model=str(path))
        batcher = Batcher(encoder, token_budget=self.settings.token_budget, max_batch=self.settings.max_batch,
                          max_wait_ms=self.settings.max_wait_ms, max_queue=self.settings.max_queue,
                          max_length=self.settings.max_length, metrics=self.metrics, executor=self._encoder_executor)
        await batcher.start()
        self.rt.encoder, self.rt.batcher = encoder, batcher
        log.info("model loaded", extra={"model": encoder.model_id,
                                        "seconds": round(time.perf_counter() - started, 2)})
        await self._load_reranker()

    async def _load_reranker(self) -> None:
        """The cross-encoder, when one is given or configured (MEE_RERANKER_MODEL); on its own thread and queue."""
        s = self.settings
        reranker = self._given_reranker
        if reranker is None and s.reranker_model:
            from ..encoder.factory import reranker_from_settings

            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            reranker = await loop.run_in_executor(self._reranker_executor, reranker_from_settings, s)
            log.info("reranker loaded", extra={"model": s.reranker_model,
                                               "seconds": round(time.perf_counter() - started, 2)})
        if reranker is None:
            return
        rerank_batcher = RerankBatcher(reranker, token_budget=s.reranker_token_budget, max_batch=s.reranker_max_batch,
                                       max_wait_ms=s.max_wait_ms, max_queue=s.reranker_max_queue,
                                       max_length=s.reranker_max_length, metrics=self.metrics,
                                       executor=self._reranker_executor)
        await rerank_batcher.start()
        self.rt.reranker, self.rt.rerank_batcher = reranker, rerank_batcher

    async def _load_collections(self, store: WatchedBackend) -> None:
        """Embedded Lite loads a collection into memory on its first query, and answers nothing else meanwhile
        (50,000 BGE-M3 documents: about a minute), so the first search would stall and the health probes time
        out and report Milvus lost. Loading every collection before SERVING moves that wait into start-up."""
        await asyncio.get_running_loop().run_in_executor(
            self.rt.store_executor, store.reload_collections, STARTUP_LOAD_TIMEOUT_S)  # logs what it loaded

    async def _connect_milvus(self) -> WatchedBackend:
        """Connect, retrying while Milvus is unreachable (health stays NOT_SERVING): exponential backoff with
        full jitter (0.5 s doubling, capped at 10 s), each attempt logged, given up after
        ``milvus_startup_timeout_s`` (0: never) with Unavailable, which makes ``serve`` exit."""
        if self._given_store is not None:
            return self._given_store
        loop = asyncio.get_running_loop()
        budget = self.settings.milvus_startup_timeout_s
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                store = await loop.run_in_executor(self.rt.store_executor, connect_store, self.settings)
            except Unavailable as exc:
                self._milvus_error(str(exc))
                elapsed = time.monotonic() - started
                if budget and elapsed >= budget:
                    raise Unavailable(f"Milvus at {redact_uri(self.settings.milvus_uri)} stayed unreachable for "
                                      f"{elapsed:.0f} s ({attempt} attempts; milvus_startup_timeout_s={budget:g}): "
                                      f"{exc}") from None
                cap = min(10.0, 0.5 * 2 ** min(attempt - 1, 8))
                delay = random.uniform(cap / 2, cap)  # jitter: replicas restarted together do not retry in step
                if budget:
                    delay = min(delay, max(0.0, budget - elapsed))
                log.warning("Milvus unreachable (attempt %d), retrying in %.1fs: %s", attempt, delay, exc,
                            extra={"attempt": attempt, "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                continue
            if attempt > 1:
                log.info("connected to Milvus after %d attempts", attempt)
            return store

    # ------------------------------------------------------------------ Milvus health
    def _milvus_error(self, reason: str) -> None:
        self.metrics.milvus_last_error.info({"reason": reason[:500], "when": f"{time.time():.0f}"})

    async def _set_milvus_health(self, up: bool, reason: str = "") -> None:
        status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", DOCUMENTS, SEARCH):
            await self._health.set(name, status)
        self.metrics.milvus_up.set(1 if up else 0)
        self.metrics.ready.set(1 if up else 0)
        self.rt.store_down = "" if up else reason
        if up:
            self.rt.store_lost.clear()
        else:
            self.rt.store_lost.set()  # calls waiting on Milvus answer UNAVAILABLE now, not at their deadline

    async def _watch_milvus(self, store: WatchedBackend) -> None:
        """Probe Milvus; on failure go NOT_SERVING and reconnect until it answers (see the module doc)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        interval = s.milvus_health_interval_s
        timeout = PROBE_TIMEOUT_S
        lite = store.lite_server_alive() is not None
        failed_restarts = 0
        gave_up = False
        slow_probes = 0

        async def run(fn: Callable[..., Any], *args: Any) -> Any:
            return await loop.run_in_executor(self._watch_executor, fn, *args)

        while True:
            down = self.milvus_down_since is not None
            delay = interval / 2 if down else interval  # while down, look twice as often: recover sooner
            if slow_probes:
                delay = 0.0  # a probe just timed out: ask again at once, so a hung Milvus is found in seconds
            if down and lite and failed_restarts:
                delay = min(30.0, interval * 2 ** failed_restarts) * random.uniform(0.75, 1.0)
            await asyncio.sleep(delay)
            try:
                try:
                    await run(store.ping, timeout)
                    slow_probes = 0
                    if self.milvus_down_since is not None or store.needs_reload:
                        await run(store.reload_collections, timeout)
                except MilvusEmbedError as exc:
                    if isinstance(exc, DeadlineExceeded) and self.milvus_down_since is None:
                        # A busy Milvus (loading a large collection, a 2-core host under load) can miss one
                        # probe; only a run of them means hung. Refused connections and a dead Lite process
                        # raise Unavailable and count at once.
                        slow_probes += 1
                        if slow_probes < HUNG_AFTER_SLOW_PROBES:
                            log.warning("Milvus did not answer the health probe within %.0f s (%d of %d before "
                                        "it counts as lost)", timeout, slow_probes, HUNG_AFTER_SLOW_PROBES)
                            continue
                    if self.milvus_down_since is None:
                        await self._milvus_lost(str(exc))
                    elif not gave_up:  # after giving up, the metric keeps saying why
                        self._milvus_error(str(exc))
                    if gave_up:
                        continue
                    if lite and failed_restarts >= s.milvus_lite_restarts:
                        gave_up = True
                        reason = (f"the embedded Milvus Lite server died and {failed_restarts} restarts in a row "
                                  f"failed (milvus_lite_restarts={s.milvus_lite_restarts}); last error: {exc}. "
                                  "Restart the sidecar; check disk space and the data directory")
                        log.error("giving up on Milvus Lite: %s", reason)
                        self._milvus_error(reason)
                        self.rt.store_down = reason
                        continue
                    before = store.lite_restarts
                    try:
                        await run(store.reconnect, timeout)
                    except MilvusEmbedError as exc2:
                        self.metrics.milvus_reconnects.labels("failed").inc()
                        self._milvus_error(str(exc2))
                        if store.lite_restarts > before:
                            self.metrics.milvus_lite_restarts.inc()
                        failed_restarts += 1 if lite else 0
                        self._update_down_seconds()
                        continue
                    self.metrics.milvus_reconnects.labels("ok").inc()
                    if store.lite_restarts > before:
                        self.metrics.milvus_lite_restarts.inc()
                if self.milvus_down_since is not None:
                    await self._milvus_back()
                    failed_restarts = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any surprise
                log.error("Milvus health watcher error: %r", exc, exc_info=True)
            self._update_down_seconds()

    def _update_down_seconds(self) -> None:
        since = self.milvus_down_since
        self.metrics.milvus_down_seconds.set(0 if since is None else time.monotonic() - since)

    async def _milvus_lost(self, reason: str) -> None:
        self.milvus_down_since = time.monotonic()
        self.metrics.milvus_outages.inc()
        self._milvus_error(reason)
        message = (f"Milvus at {redact_uri(self.settings.milvus_uri)} is unreachable ({reason}); the sidecar is "
                   "reconnecting by itself: retry with backoff")
        await self._set_milvus_health(False, message)
        log.warning("Milvus lost: health NOT_SERVING until it answers again: %s", reason)

    async def _milvus_back(self) -> None:
        since = self.milvus_down_since or time.monotonic()
        self.milvus_down_since = None
        await self._set_milvus_health(True)
        log.info("Milvus reachable again: health SERVING", extra={"outage_s": round(time.monotonic() - since, 3)})

    async def _check_schema(self, store: WatchedBackend) -> None:
        if self._given_store is None:  # a store handed in is the caller's to prepare
            loop = asyncio.get_running_loop()
            try:
                revisions = await loop.run_in_executor(self.rt.store_executor, ensure_schema, self.schema_settings, store)
            except BaseException:
                with contextlib.suppress(Exception):
                    store.close()
                raise
            log.info("schema ok", extra={"collection": self.settings.collection, "revision": ",".join(revisions)})
        self.rt.store = store

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("shutting down", extra={"grace_s": grace, "in_flight": self._in_flight})
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        if self._startup is not None and not self._startup.done():
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._startup
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        http_stopping = asyncio.ensure_future(self._http.stop(grace)) if self._http is not None else None
        if self._server is not None:
            await self._server.stop(grace)
        if http_stopping is not None:
            await http_stopping
        if self.rt.batcher is not None:
            await self.rt.batcher.stop()
        if self.rt.rerank_batcher is not None:
            await self.rt.rerank_batcher.stop()
        self._encoder_executor.shutdown(wait=False, cancel_futures=True)
        self._reranker_executor.shutdown(wait=False, cancel_futures=True)
        if self.rt.store is not None and self._given_store is None:
            with contextlib.suppress(Exception):
                self.rt.store.close()
        self.rt.store_executor.shutdown(wait=False, cancel_futures=True)
        self._watch_executor.shutdown(wait=False, cancel_futures=True)
        if self._metrics_server is not None:
            with contextlib.suppress(Exception):
                self._metrics_server.shutdown()
        log.info("stopped")


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; raise the start-up error (model, schema) so the CLI maps its exit code."""
    sidecar = Sidecar(settings)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    stop_wait = asyncio.create_task(stop.wait())
    failed_wait = asyncio.create_task(sidecar.failed.wait())
    await asyncio.wait({stop_wait, failed_wait}, return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    failed_wait.cancel()
    await sidecar.stop(0.0 if sidecar.failed.is_set() else None)
    if sidecar.startup_error is not None:
        exc = sidecar.startup_error
        if isinstance(exc, MilvusEmbedError):
            raise exc
        raise FailedPrecondition(f"start-up failed: {type(exc).__name__}; see the log above") from exc
    return 0


__all__ = ["Sidecar", "serve", "load_encoder", "connect_store", "ensure_schema", "ResourceExhausted"]
