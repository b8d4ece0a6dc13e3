"""Faults with nothing lost: Milvus dropped mid-stream, the sidecar SIGKILLed mid bulk upsert, a migration backfill
SIGKILLed and resumed.

Method: a unary writer (each OK reply acknowledges its documents) and a streaming bulk load (acknowledged only by
its final reply) run against a real sidecar; a fault is injected once both have made progress. Afterwards the Lite
DB is read directly (no sidecar holding it): every acknowledged document has every representation, no visible
document is half-written, and after the client retries what was not acknowledged (the documented contract:
retrying the same upsert converges) no ColBERT companion row is orphaned.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from milvus_embed_ext.wire._generated import documents_pb2, documents_pb2_grpc
from tests._sidecar import Server, lite_server_pids, start_sidecar
from tests.reliability.rel_helpers import corpus, ids_of, inspect_collection, record

HERE = Path(__file__).resolve().parent
FAILURE_CODES = {"UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED", "CANCELLED"}  # never INTERNAL / UNKNOWN
CHUNK = 8


def _pb(docs: list[dict[str, Any]], collection: str = "") -> documents_pb2.UpsertRequest:
    return documents_pb2.UpsertRequest(collection=collection, documents=[
        documents_pb2.Document(id=d["id"], text=d["text"], metadata_json=json.dumps(d["metadata"])) for d in docs])


class Load:
    """A unary writer and a streaming writer; remembers what was acknowledged and every failure code."""

    def __init__(self, srv: Server, unary: list[dict[str, Any]], stream: list[dict[str, Any]]) -> None:
        self.srv = srv
        self.unary_chunks = [unary[i:i + 4] for i in range(0, len(unary), 4)]
        self.stream_docs = stream
        self.acked: set[str] = set()
        self.codes: dict[str, int] = {}
        self.stream_sent = 0
        self.stream_code = ""
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def _code(self, code: str) -> None:
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1

    def unary(self) -> None:
        with self.srv.channel() as ch:
            stub = documents_pb2_grpc.DocumentsStub(ch)
            for chunk in self.unary_chunks:
                if self.stop.is_set():
                    return
                try:
                    stub.Upsert(_pb(chunk), timeout=30)
                except grpc.RpcError as err:
                    self._code(err.code().name)
                    continue
                self._code("OK")
                with self.lock:
                    self.acked.update(ids_of(chunk))

    def stream(self) -> None:
        def chunks():
            for i in range(0, len(self.stream_docs), CHUNK):
                self.stream_sent = i + CHUNK
                yield _pb(self.stream_docs[i:i + CHUNK])

        with self.srv.channel() as ch:
            try:
                documents_pb2_grpc.DocumentsStub(ch).UpsertStream(chunks(), timeout=120)
            except grpc.RpcError as err:
                self.stream_code = err.code().name
                self._code(err.code().name)
                return
        self.stream_code = "OK"
        self._code("OK")
        with self.lock:
            self.acked.update(ids_of(self.stream_docs))

    def run(self, fault: Any, *, after_acks: int, after_chunks: int) -> bool:
        """Start both writers, call ``fault()`` once they have made progress; True if the stream was cut."""
        threads = [threading.Thread(target=self.unary), threading.Thread(target=self.stream)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while (len(self.acked) < after_acks * 4 or self.stream_sent < after_chunks * CHUNK) and time.monotonic() < deadline:
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(0.01)
        cut = not self.stream_code
        fault()
        time.sleep(1.0)
        self.stop.set()
        for t in threads:
            t.join(150)
        return cut and self.stream_code != "OK"


def _retry_unacked(srv: Server, docs: list[dict[str, Any]], acked: set[str]) -> int:
    todo = [d for d in docs if d["id"] not in acked]
    with srv.client(timeout=120) as c:
        for i in range(0, len(todo), 64):
            c.upsert(todo[i:i + 64])
    return len(todo)


def _check_and_repair(srv: Server, model_dir: Path, load: Load, docs: list[dict[str, Any]], label: str,
                      cut: bool) -> None:
    srv.stop(signal.SIGTERM, timeout=30)
    before = inspect_collection(srv.work, model_dir)
    missing = load.acked - before.complete
    half_written = set(before.main) - before.complete
    srv.restart()
    retried = _retry_unacked(srv, docs, load.acked)
    srv.stop(signal.SIGTERM, timeout=30)
    after = inspect_collection(srv.work, model_dir)
    record(label, documents=len(docs), acknowledged=len(load.acked), stream_cut=cut, codes=load.codes,
           present_after_fault=len(before.main), acknowledged_missing=len(missing), half_written=len(half_written),
           orphan_rows_after_fault=before.orphans, retried=retried, present_after_retry=len(after.complete),
           orphan_rows_after_retry=after.orphans)
    assert not missing, f"acknowledged documents lost or incomplete: {sorted(missing)[:10]}"
    assert not half_written, f"documents visible without all representations: {sorted(half_written)[:10]}"
    assert set(load.codes) <= FAILURE_CODES | {"OK"}, load.codes
    assert after.complete == set(ids_of(docs)) == set(after.main)
    assert after.orphans == 0, f"{after.orphans} orphaned ColBERT rows after the retry"


@pytest.fixture()
def fresh(tiny_model_dir: Path, tmp_path: Path) -> Any:
    servers: list[Server] = []

    def start(**settings: Any) -> Server:
        srv = start_sidecar(tiny_model_dir, tmp_path / "work", metrics=False, shutdown_grace_s=5, **settings)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop(signal.SIGKILL)


N_UNARY, N_STREAM = 160, 320


@pytest.mark.slow
def test_milvus_dropped_mid_stream(fresh, tiny_model_dir: Path) -> None:
    """Milvus Lite's server process (the sidecar's child, reached over a unix socket) is SIGKILLed mid-load."""
    srv = fresh()
    docs_u, docs_s = corpus("u", N_UNARY), corpus("s", N_STREAM)
    lite = lite_server_pids(srv.pid)
    assert lite, "the embedded Milvus Lite server process was not found"
    load = Load(srv, docs_u, docs_s)
    cut = load.run(lambda: [os.kill(p, signal.SIGKILL) for p in lite], after_acks=4, after_chunks=6)
    assert srv.proc.poll() is None, "the sidecar must survive losing Milvus"
    with srv.client(timeout=20) as c:  # the sidecar answers with a status, not a crash
        try:
            c.get(["u-00000"], allow_missing=True)
        except Exception as exc:  # noqa: BLE001 - only the code matters
            assert getattr(exc, "grpc_code", None) is not None and exc.grpc_code.name in FAILURE_CODES, exc
    _check_and_repair(srv, tiny_model_dir, load, docs_u + docs_s, "fault: Milvus killed mid-stream", cut)


@pytest.mark.slow
def test_sidecar_sigkilled_mid_bulk_upsert(fresh, tiny_model_dir: Path) -> None:
    srv = fresh()
    docs_u, docs_s = corpus("u", N_UNARY), corpus("s", N_STREAM)
    load = Load(srv, docs_u, docs_s)
    cut = load.run(lambda: srv.proc.send_signal(signal.SIGKILL), after_acks=4, after_chunks=6)
    assert srv.proc.wait(30) == -signal.SIGKILL
    _check_and_repair(srv, tiny_model_dir, load, docs_u + docs_s, "fault: sidecar SIGKILL mid bulk upsert", cut)


# ------------------------------------------------------------------ migration backfill

REVISION_0003 = '''"""Add a 16-d prefix of the dense vector (reliability test revision).

Revision ID: 0003_dense_16
Revises: 0002_dense_256
"""

revision = "0003_dense_16"
down_revision = "0002_dense_256"


def upgrade(op):
    op.add_truncated_dense(16, projection="prefix")
'''


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("milvus-embed")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "milvus_embed_ext.cli"]
    return subprocess.run([*cmd, *args], env=env, cwd=env["MEE_WORK"], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["copy", "copyback"])
def test_migration_backfill_sigkilled_then_resumed(fresh, tiny_model_dir: Path, tmp_path: Path, phase: str) -> None:
    from milvus_embed_ext.migrations.script import builtin_migrations_dir

    scripts = tmp_path / "migrations"
    shutil.copytree(builtin_migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    srv = fresh(migrations_dir=str(scripts))
    docs = corpus("m", 400)
    with srv.client(timeout=120) as c:
        assert c.upsert(iter(docs), chunk_size=32).upserted == len(docs)
    srv.stop(signal.SIGTERM, timeout=30)
    (scripts / "0003_dense_16.py").write_text(REVISION_0003)

    overrides = {"milvus_uri": srv.env["MEE_MILVUS_URI"], "model": str(tiny_model_dir), "migrations_dir": str(scripts)}
    child = subprocess.Popen([sys.executable, str(HERE / "_migrate_child.py"), json.dumps(overrides), "16"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=srv.work)
    batches = 0
    try:
        for line in child.stdout:  # type: ignore[union-attr]
            if line.startswith("batch ") and line.split()[1].endswith(":" + phase):
                batches += 1
                if batches == 3:
                    child.send_signal(signal.SIGKILL)  # a real kill from outside, mid-backfill
                    break
    finally:
        child.wait(60)
    assert child.returncode == -signal.SIGKILL, f"the backfill ended before the kill (phase {phase})"
    # Milvus Lite's server exits once the killed process' file lock is gone.
    time.sleep(2.0)

    env = {**srv.env, "MEE_WORK": str(srv.work)}
    refused = _cli(env, "migrate", "upgrade", "--batch-size", "16")
    assert refused.returncode != 0 and "lock" in (refused.stderr + refused.stdout), refused
    unlocked = _cli(env, "migrate", "unlock", "--force")
    assert unlocked.returncode == 0, unlocked.stderr
    resumed = _cli(env, "migrate", "upgrade", "--batch-size", "16")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check = _cli(env, "migrate", "check")
    assert check.returncode == 0, check.stdout + check.stderr

    report = inspect_collection(srv.work, tiny_model_dir)
    record(f"fault: migration backfill SIGKILL ({phase})", documents=len(docs), batches_before_kill=batches,
           present_after_resume=len(report.main), complete=len(report.complete), orphan_rows=report.orphans)
    assert set(report.main) == set(ids_of(docs)) == report.complete  # the new 16-d field included
    assert report.orphans == 0
    srv.restart()  # the sidecar serves the migrated collection (schema at head)
    with srv.client(timeout=60) as c:
        res = c.hybrid_search(docs[7]["text"], top_k=3, candidates=["dense_truncated"])
        assert docs[7]["id"] in [h.id for h in res.hits]  # the tiny random model ranks near-duplicates arbitrarily
