"""Milvus call latency and health from the store's call observer, and search stage latency."""

from __future__ import annotations

import pytest

from milvus_embed_ext.errors import InvalidArgument, Unavailable
from milvus_embed_ext.service.metrics import ServiceMetrics
from milvus_embed_ext.store.capabilities import capabilities_for
from milvus_embed_ext.store.client import MilvusStore


class FakeClient:
    def __init__(self) -> None:
        self.fail: Exception | None = None

    def search(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        if self.fail is not None:
            raise self.fail
        return [[]]


def _value(metrics: ServiceMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_calls_are_timed_by_method_and_outcome() -> None:
    """Health (mee_milvus_up) is the watcher's (tests/service/test_milvus_health.py); calls only time."""
    metrics, client = ServiceMetrics(), FakeClient()
    store = MilvusStore.from_client(client, capabilities_for("2.5.1", lite=True))
    store.observer = metrics.observe_milvus_call

    store.call("search", client.search, "c")
    assert _value(metrics, "mee_milvus_call_seconds_count", {"op": "search", "outcome": "ok"}) == 1

    client.fail = ConnectionError("connection refused")
    with pytest.raises(Unavailable):
        store.call("search", client.search, "c")
    assert _value(metrics, "mee_milvus_call_seconds_count", {"op": "search", "outcome": "error"}) == 1

    client.fail = type("MilvusException", (Exception,), {"code": 1100})("Invalid expr: x ==")
    with pytest.raises(InvalidArgument):
        store.call("search", client.search, "c")
    assert _value(metrics, "mee_milvus_call_seconds_count", {"op": "search", "outcome": "error"}) == 2
    assert _value(metrics, "mee_milvus_up") == 0  # untouched by calls: nothing connected a watcher here

    store.call("lambda", lambda: None)
    assert _value(metrics, "mee_milvus_call_seconds_count", {"op": "other", "outcome": "ok"}) == 1


def test_observer_errors_never_fail_a_call() -> None:
    store = MilvusStore.from_client(FakeClient(), capabilities_for("2.5.1", lite=True))
    store.observer = lambda *a: 1 / 0
    assert store.call("search", store.client.search) == [[]]


def test_search_stages_are_observed_under_their_own_names() -> None:
    metrics = ServiceMetrics()
    metrics.observe_search_stages({"encode": 9.0, "candidates.dense": 2.0, "a_new_stage": 1.5, "total": 20.0})
    for stage in ("encode", "candidates.dense", "a_new_stage", "total"):
        assert _value(metrics, "mee_search_stage_seconds_count", {"stage": stage}) == 1
    assert _value(metrics, "mee_search_stage_seconds_sum", {"stage": "total"}) == pytest.approx(0.02)
