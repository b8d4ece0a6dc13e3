"""Prometheus metrics of the sidecar, on their own registry (several servers may live in one process)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from ..errors import InvalidArgument

log = logging.getLogger("milvus_embed_ext.service")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class ServiceMetrics:
    """Requests and latency by RPC and status code; batch sizes, queue depth, encoder throughput."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("mee_requests", "RPCs finished, by method and gRPC status code",
                                ["rpc", "code"], registry=r)
        self.latency = Histogram("mee_request_latency_seconds", "RPC wall time, by method and status code",
                                 ["rpc", "code"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("mee_requests_in_flight", "RPCs being served", registry=r)
        self.queue_depth = Gauge("mee_queue_depth_texts", "texts waiting for the encoder", registry=r)
        self.batch_texts = Histogram("mee_batch_texts", "texts per encoder call (merged requests)",
                                     buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("mee_batch_requests", "requests merged into one encoder call",
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("mee_batch_tokens", "tokens per encoder call",
                                      buckets=_TOKEN_BUCKETS, registry=r)
        self.tokens = Counter("mee_encoded_tokens", "tokens encoded (rate() gives tokens per second)", registry=r)
        self.tokens_per_second = Gauge("mee_encoder_tokens_per_second", "throughput of the last encoder call",
                                       registry=r)
        self.inference_seconds = Histogram("mee_inference_seconds", "encoder call wall time",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.rerank_queue_depth = Gauge("mee_rerank_queue_depth_pairs", "pairs waiting for the reranker", registry=r)
        self.rerank_pairs = Counter("mee_reranked_pairs", "(query, passage) pairs scored by the reranker", registry=r)
        self.rerank_seconds = Histogram("mee_rerank_seconds", "reranker call wall time",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("mee_ready", "1 when the model is loaded and Milvus answers", registry=r)
        self.search_stage = Histogram("mee_search_stage_seconds",
                                      "hybrid search time per stage (encode, candidates, fetch, rescore, fuse, ...)",
                                      ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.milvus_latency = Histogram("mee_milvus_call_seconds", "Milvus calls by pymilvus method and outcome (ok|error)",
                                        ["op", "outcome"], buckets=_LATENCY_BUCKETS, registry=r)
        self.milvus_up = Gauge("mee_milvus_up", "1 while the health probe reaches Milvus, 0 while it does not",
                               registry=r)
        self.milvus_last_error = Info("mee_milvus_last_error", "why the last Milvus health probe or reconnect "
                                      "failed (reason, when as unix seconds)", registry=r)
        self.milvus_down_seconds = Gauge("mee_milvus_down_seconds", "seconds since Milvus became unreachable "
                                         "(0 while it answers)", registry=r)
        self.milvus_outages = Counter("mee_milvus_outages", "times Milvus became unreachable after serving",
                                      registry=r)
        self.milvus_reconnects = Counter("mee_milvus_reconnects", "reconnect attempts, by result",
                                         ["result"], registry=r)
        self.milvus_lite_restarts = Counter("mee_milvus_lite_restarts", "embedded Milvus Lite server processes "
                                            "restarted after they died", registry=r)

    def observe_request(self, rpc: str, code: str, seconds: float) -> None:
        self.requests.labels(rpc, code).inc()
        self.latency.labels(rpc, code).observe(seconds)

    def observe_rerank(self, n_requests: int, n_pairs: int, n_tokens: int, seconds: float) -> None:
        self.rerank_pairs.inc(n_pairs)
        self.rerank_seconds.observe(seconds)

    def observe_batch(self, n_requests: int, n_texts: int, n_tokens: int, seconds: float) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_texts.observe(n_texts)
        self.batch_tokens.observe(n_tokens)
        self.tokens.inc(n_tokens)
        self.inference_seconds.observe(seconds)
        if seconds > 0:
            self.tokens_per_second.set(n_tokens / seconds)

    def observe_search_stages(self, stages_ms: Mapping[str, float]) -> None:
        """One observation per stage of a search (the stage names come from the planner's timings)."""
        for stage, ms in stages_ms.items():
            self.search_stage.labels(stage).observe(max(float(ms), 0.0) / 1000.0)

    def observe_milvus_call(self, op: str, seconds: float, error: BaseException | None) -> None:
        """The store's call observer: latency by method and outcome (health is the watcher's: ``mee_milvus_up``)."""
        op = op if op.isidentifier() else "other"  # lambdas and partials
        self.milvus_latency.labels(op, "ok" if error is None else "error").observe(seconds)


def parse_host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"{what} must be host:port, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def start_metrics_endpoint(listen: str, metrics: ServiceMetrics) -> object:
    """Serve ``/metrics`` on ``listen`` (host:port) in a daemon thread. Returns the server (has shutdown())."""
    host, port = parse_host_port(listen, "metrics_listen (MEE_METRICS_LISTEN)")
    try:
        server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise InvalidArgument(f"cannot serve metrics on {listen}: {exc.strerror}; pick a free port") from None
    log.info("metrics endpoint on http://%s:%d/metrics", host, port)
    return server
