"""Milvus faults against a real sidecar: the Milvus server process SIGKILLed while searches and upserts run, then
restarted on the same data directory; and the embedded Lite server process SIGKILLed under the sidecar.

Required (issue 14): within a few seconds health goes NOT_SERVING and the metrics say why; requests fail fast
with UNAVAILABLE (or ABORTED for a write cut between its two steps) and a message that says to retry, never
hanging until their deadline; the sidecar reconnects by itself (same process); every acknowledged write is
present afterwards with every representation. Figures go to ``$MEE_RELIABILITY_REPORT`` (docs/reliability.md).

Load: a unary writer (4 new documents per call; each OK acknowledges them), a streaming writer (chunks of 8, 3
chunks per stream; acknowledged by the final reply), and a searcher, all on raw stubs with no client-side retry
(so what the sidecar answered is what is recorded), plus one SidecarClient writer with the client's retry
policy (what an application sees). A health poller records every transition.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from milvus_embed_ext import migrations as m
from milvus_embed_ext.errors import MilvusEmbedError
from milvus_embed_ext.store import DocumentStore, MilvusStore
from milvus_embed_ext.wire._generated import documents_pb2, documents_pb2_grpc, search_pb2, search_pb2_grpc
from tests._milvus_server import MilvusServer
from tests._sidecar import Server, lite_server_pids, start_sidecar

pytestmark = pytest.mark.slow

COLL = "faults"
CYCLES = 3
OUTAGE_S = 4.0
DEADLINE_S = 30.0
ALLOWED_FAILURES = {"UNAVAILABLE", "ABORTED"}  # both say "retry"; never DEADLINE_EXCEEDED, INTERNAL, UNKNOWN
SERVING = health_pb2.HealthCheckResponse.SERVING


def record(name: str, **figures: Any) -> None:
    """Print measured figures and append them to $MEE_RELIABILITY_REPORT (JSON lines) when set."""
    print(f"[reliability] {name}: {json.dumps(figures, sort_keys=True)}")
    path = os.environ.get("MEE_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": name, **figures}, sort_keys=True) + "\n")


def _doc(doc_id: str) -> documents_pb2.Document:
    return documents_pb2.Document(id=doc_id, text=f"document {doc_id} about rivers and lanterns",
                                  metadata_json=json.dumps({"src": doc_id.split("-")[0]}))


class Load:
    """Writers and a searcher on raw stubs; everything acknowledged and every answer (code, seconds, message)."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.acked: set[str] = set()
        self.answers: list[tuple[float, str, str, float, str]] = []  # (t, rpc, code, seconds, message)
        self.health: list[tuple[float, str]] = []
        self.client_results: dict[str, int] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=f, daemon=True) for f in
                        (self.unary, self.stream, self.search, self.client_writer, self.poll_health)]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(DEADLINE_S + 10)

    def _answer(self, rpc: str, started: float, err: grpc.RpcError | None) -> None:
        code = "OK" if err is None else err.code().name
        message = "" if err is None else (err.details() or "")
        with self.lock:
            self.answers.append((started, rpc, code, time.monotonic() - started, message))

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def ok_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for a in self.answers if a[0] >= t and a[2] == "OK")

    def wait_ok(self, since: float, n: int = 3, within_s: float = 60.0) -> None:
        """Wait until ``n`` requests sent after ``since`` answered OK; fail with the last answers if none do."""
        deadline = time.monotonic() + within_s
        while self.ok_since(since) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.ok_since(since) >= n, f"no successful request after recovery: {self.answers[-5:]}"

    def _call(self, rpc: str, call: Callable[[], object], backoff_s: float) -> bool:
        """One RPC with its answer recorded; True when it succeeded, else after waiting ``backoff_s``."""
        started = time.monotonic()
        try:
            call()
        except grpc.RpcError as err:
            self._answer(rpc, started, err)
            time.sleep(backoff_s)
            return False
        self._answer(rpc, started, None)
        return True

    def unary(self) -> None:
        with self.srv.channel() as ch:
            stub = documents_pb2_grpc.DocumentsStub(ch)
            n = 0
            while not self.stop.is_set():
                ids = [f"u-{n:05d}-{k}" for k in range(4)]
                n += 1
                request = documents_pb2.UpsertRequest(documents=[_doc(i) for i in ids])
                if self._call("Upsert", partial(stub.Upsert, request, timeout=DEADLINE_S), 0.2):
                    with self.lock:
                        self.acked.update(ids)

    def stream(self) -> None:
        with self.srv.channel() as ch:
            stub = documents_pb2_grpc.DocumentsStub(ch)
            n = 0
            while not self.stop.is_set():
                chunks = [[f"s-{n:05d}-{c}-{k}" for k in range(8)] for c in range(3)]
                n += 1
                requests = iter([documents_pb2.UpsertRequest(documents=[_doc(i) for i in chunk]) for chunk in chunks])
                if self._call("UpsertStream", partial(stub.UpsertStream, requests, timeout=DEADLINE_S), 0.2):
                    with self.lock:
                        self.acked.update(i for chunk in chunks for i in chunk)

    def search(self) -> None:
        with self.srv.channel() as ch:
            stub = search_pb2_grpc.SearchStub(ch)
            request = search_pb2.HybridSearchRequest(query="rivers and lanterns", top_k=5,
                                                     filter='metadata["src"] == "u"')
            while not self.stop.is_set():
                self._call("HybridSearch", partial(stub.HybridSearch, request, timeout=DEADLINE_S), 0.1)

    def client_writer(self) -> None:
        """What an application sees: SidecarClient, whose channel retries UNAVAILABLE on Upsert."""
        with self.srv.client(timeout=DEADLINE_S) as client:
            n = 0
            while not self.stop.is_set():
                ids = [f"c-{n:05d}-{k}" for k in range(2)]
                n += 1
                try:
                    client.upsert([{"id": i, "text": f"client document {i}"} for i in ids])
                except MilvusEmbedError as exc:
                    name = type(exc).__name__
                    with self.lock:
                        self.client_results[name] = self.client_results.get(name, 0) + 1
                    time.sleep(0.2)
                    continue
                with self.lock:
                    self.client_results["ok"] = self.client_results.get("ok", 0) + 1
                    self.acked.update(ids)
                time.sleep(0.05)

    def poll_health(self) -> None:
        with self.srv.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            last = ""
            while not self.stop.is_set():
                try:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)
                except grpc.RpcError as err:
                    status = f"error:{err.code().name}"
                if status != last:
                    with self.lock:
                        self.health.append((time.monotonic(), status))
                    last = status
                time.sleep(0.05)

    def wait_health(self, status: str, after: float, timeout: float = 90.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for t, s in self.health:
                    if t >= after and s == status:
                        return t
            time.sleep(0.05)
        raise AssertionError(f"health never became {status} after the fault: {self.health[-10:]}\n"
                             f"{self.srv.log()[-3000:]}")


def _metrics(srv: Server) -> str:
    return urllib.request.urlopen(srv.metrics, timeout=5).read().decode()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


def _assert_complete(store: Any, acked: set[str], collection: str = COLL) -> dict[str, int]:
    """Every acknowledged document is there with text, dense, sparse and its committed ColBERT rows."""
    ds = DocumentStore.open(store, collection)
    ids = sorted(acked)
    got = {}
    for i in range(0, len(ids), 256):
        got.update(ds.fetch_vectors(ids[i:i + 256]))
    missing = sorted(set(ids) - set(got))
    incomplete = sorted(i for i, v in got.items()
                        if v.colbert is None or v.colbert.shape[0] == 0 or not v.sparse
                        or not np.isfinite(v.dense).all() or v.dense.shape[0] != ds.layout.dense_dim)
    texts = {d["id"]: d.get("text") for d in ds.get(ids[:512], output_fields=["text"])}
    wrong_text = [i for i, t in texts.items() if i not in t]
    assert not missing, f"{len(missing)} acknowledged documents lost: {missing[:10]}"
    assert not incomplete, f"{len(incomplete)} acknowledged documents incomplete: {incomplete[:10]}"
    assert not wrong_text
    return {"acked": len(ids), "lost": len(missing), "incomplete": len(incomplete)}


def _summarise(load: Load, windows: list[tuple[float, float]]) -> dict[str, Any]:
    """Answers of calls that overlapped an outage window (fault .. health SERVING again): the calls running when
    Milvus went away and those started before it was back."""
    codes: dict[str, int] = {}
    failed_s: list[float] = []
    messages_without_retry = []
    with load.lock:
        answers = list(load.answers)
    for started, rpc, code, seconds, message in answers:
        if not any(started <= b and started + seconds >= a for a, b in windows):
            continue
        codes[f"{rpc}:{code}"] = codes.get(f"{rpc}:{code}", 0) + 1
        if code != "OK":
            failed_s.append(seconds)
            if "retry" not in message.lower():
                messages_without_retry.append(f"{rpc} {code}: {message}")
    return {"codes": codes, "failed_p50_ms": round(float(np.median(failed_s)) * 1000, 1) if failed_s else None,
            "failed_max_ms": round(max(failed_s) * 1000, 1) if failed_s else None,
            "messages_without_retry": messages_without_retry[:5]}


def _outcome(load: Load, windows: list[tuple[float, float]], settings: Any,
             collection: str = COLL) -> tuple[dict[str, Any], dict[str, int]]:
    """After a run: the answers during the outages summarised, and every acknowledged write checked present."""
    summary = _summarise(load, windows)
    with MilvusStore.connect(settings) as store:
        complete = _assert_complete(store, load.acked, collection)
    return summary, complete


def _assert_failures_say_retry(summary: dict[str, Any]) -> None:
    """Every failure during an outage has an allowed code and a message that says to retry."""
    codes_seen = {k.split(":")[1] for k in summary["codes"]}
    assert codes_seen <= {"OK"} | ALLOWED_FAILURES, summary["codes"]
    assert summary["messages_without_retry"] == [], summary["messages_without_retry"]


@pytest.fixture
def milvus(milvus_bin: Path, tmp_path: Path) -> Iterator[MilvusServer]:
    srv = MilvusServer(milvus_bin, tmp_path / "milvus-data").start()
    try:
        yield srv
    finally:
        srv.stop()


def test_milvus_server_killed_and_restarted_under_load(milvus: MilvusServer, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    from milvus_embed_ext.config import load_settings

    settings = load_settings(env={}, overrides={"milvus_uri": milvus.uri, "collection": COLL,
                                                "model": str(tiny_model_dir)})
    with MilvusStore.connect(settings) as store:
        m.upgrade(settings, "head", store=store)
    srv = start_sidecar(tiny_model_dir, tmp_path / "sidecar", milvus_uri=milvus.uri, collection=COLL)
    pid = srv.pid
    load = Load(srv).start()
    cycles: list[dict[str, Any]] = []
    windows: list[tuple[float, float]] = []
    try:
        for cycle in range(CYCLES):
            target = load.acked_count() + 24
            deadline = time.monotonic() + 120
            while load.acked_count() < target and time.monotonic() < deadline:
                time.sleep(0.1)
            assert load.acked_count() >= target, f"no progress before fault {cycle}: {load.answers[-5:]}"
            killed = time.monotonic()
            milvus.kill()
            not_serving = load.wait_health("NOT_SERVING", killed)
            text = _metrics(srv)
            assert _metric(text, "mee_milvus_up") == 0.0
            assert 'mee_milvus_last_error_info{reason="' in text  # why, for the dashboard
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed)))
            restarted = time.monotonic()
            milvus.start()
            ready = time.monotonic()
            serving = load.wait_health("SERVING", restarted)  # the sidecar may be back before start() returns
            windows.append((killed, serving))
            assert srv.proc.poll() is None and srv.pid == pid  # reconnected by itself, no sidecar restart
            load.wait_ok(serving)
            cycles.append({"detect_s": round(not_serving - killed, 2),
                           "milvus_start_to_ready_s": round(ready - restarted, 2),
                           "milvus_start_to_serving_s": round(serving - restarted, 2),
                           "outage_s": round(serving - killed, 2)})
        assert _metric(_metrics(srv), "mee_milvus_outages_total") == CYCLES
    finally:
        load.finish()
        srv.stop()
    summary, complete = _outcome(load, windows, settings)
    record("milvus_server_kill_restart", cycles=cycles, **summary, client_results=load.client_results, **complete,
           requests_total=len(load.answers))
    _assert_failures_say_retry(summary)
    assert any(k.endswith(":UNAVAILABLE") for k in summary["codes"])  # the outage was seen by requests


def test_embedded_lite_server_process_killed_is_restarted(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The embedded default: Lite's server process dies under the sidecar; the sidecar restarts it."""
    srv = start_sidecar(tiny_model_dir, tmp_path / "lite")
    load = Load(srv).start()
    cycles: list[dict[str, Any]] = []
    windows: list[tuple[float, float]] = []
    try:
        for cycle in range(2):
            target = load.acked_count() + 24
            deadline = time.monotonic() + 120
            while load.acked_count() < target and time.monotonic() < deadline:
                time.sleep(0.1)
            assert load.acked_count() >= target, f"no progress before fault {cycle}"
            (lite_pid,) = lite_server_pids(srv.pid)
            killed = time.monotonic()
            os.kill(lite_pid, 9)
            not_serving = load.wait_health("NOT_SERVING", killed)
            serving = load.wait_health("SERVING", not_serving)
            windows.append((killed, serving))
            assert srv.proc.poll() is None
            new_pids = lite_server_pids(srv.pid)
            assert new_pids and lite_pid not in new_pids  # a fresh Lite server process
            load.wait_ok(serving)
            cycles.append({"detect_s": round(not_serving - killed, 2), "outage_s": round(serving - killed, 2)})
        text = _metrics(srv)
        assert _metric(text, "mee_milvus_lite_restarts_total") == 2
        assert _metric(text, "mee_milvus_up") == 1.0
    finally:
        load.finish()
        srv.stop()
    from milvus_embed_ext.config import load_settings

    settings = load_settings(env={}, overrides={"milvus_uri": str(tmp_path / "lite" / "milvus.db")})
    summary, complete = _outcome(load, windows, settings, "documents")
    record("embedded_lite_kill", cycles=cycles, **summary, client_results=load.client_results, **complete,
           requests_total=len(load.answers))
    _assert_failures_say_retry(summary)



def test_milvus_server_hung_then_resumed(milvus: MilvusServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    """SIGSTOP: Milvus stops answering but keeps its connections open (a hung process, a cut network). Calls
    already waiting on it answer UNAVAILABLE once the probe times out, not at their 30 s deadline."""
    import signal

    from milvus_embed_ext.config import load_settings

    settings = load_settings(env={}, overrides={"milvus_uri": milvus.uri, "collection": COLL,
                                                "model": str(tiny_model_dir)})
    with MilvusStore.connect(settings) as store:
        m.upgrade(settings, "head", store=store)
    srv = start_sidecar(tiny_model_dir, tmp_path / "sidecar", milvus_uri=milvus.uri, collection=COLL)
    load = Load(srv).start()
    windows: list[tuple[float, float]] = []
    try:
        target = load.acked_count() + 24
        deadline = time.monotonic() + 120
        while load.acked_count() < target and time.monotonic() < deadline:
            time.sleep(0.1)
        assert milvus.proc is not None
        stopped = time.monotonic()
        milvus.proc.send_signal(signal.SIGSTOP)
        try:
            not_serving = load.wait_health("NOT_SERVING", stopped)
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        finally:
            resumed = time.monotonic()
            milvus.proc.send_signal(signal.SIGCONT)
        serving = load.wait_health("SERVING", resumed)
        windows.append((stopped, serving))
        load.wait_ok(serving)
    finally:
        load.finish()
        srv.stop()
    summary, complete = _outcome(load, windows, settings)
    record("milvus_server_hung", detect_s=round(not_serving - stopped, 2), recover_s=round(serving - resumed, 2),
           **summary, client_results=load.client_results, **complete, requests_total=len(load.answers))
    _assert_failures_say_retry(summary)  # ALLOWED_FAILURES has no DEADLINE_EXCEEDED: nothing hung
