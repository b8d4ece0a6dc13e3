"""Sharded re-encode backfills against a Milvus server process, with workers killed by SIGKILL.

The slow test seeds two identical collections with "old model" vectors, re-encodes one with a single
`migrate upgrade` and the other with three `migrate work` processes of which two are killed with -9 at
random moments and replaced, then finishes it with `migrate upgrade`; both must end identical.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from milvus_embed_ext import migrations as m
from milvus_embed_ext.cli import main
from milvus_embed_ext.config import load_settings
from milvus_embed_ext.encoder.output import M3Output
from milvus_embed_ext.errors import InvalidArgument
from milvus_embed_ext.migrations.history import SystemTable
from milvus_embed_ext.migrations.shards import read_plan
from milvus_embed_ext.store.client import MilvusStore
from milvus_embed_ext.store.documents import DocumentStore

REPO_ROOT = Path(__file__).resolve().parents[2]
REV = "0002_reencode"
SCRIPTS = {
    "0001_layout.py": '''
        """Companion ColBERT (portable), a 32-d prefix field, texts stored."""
        from milvus_embed_ext.store.layout import TruncatedField

        revision = "0001_layout"
        down_revision = None


        def upgrade(op):
            op.create_collection(op.layout(truncated=(TruncatedField(32, "prefix"),), colbert="companion",
                                           colbert_codec="fp16", index_type="FLAT"))
        ''',
    "0002_reencode.py": '''
        """Re-encode every document with the configured model."""
        revision = "0002_reencode"
        down_revision = "0001_layout"


        def upgrade(op):
            op.reencode()
        ''',
}
WORDS = ["river", "stone", "light", "market", "sugar", "engine", "quiet", "violet", "harbor", "orbit", "paper",
         "cloud", "tiger", "lemon", "glass", "winter", "copper", "signal", "meadow", "puzzle", "rocket", "velvet"]


def _scripts(tmp_path: Path) -> Path:
    d = tmp_path / "scripts"
    d.mkdir(exist_ok=True)
    for name, source in SCRIPTS.items():
        (d / name).write_text(textwrap.dedent(source).lstrip())
    return d


def _settings(uri: str, collection: str, scripts: Path, model: Path) -> Any:
    return load_settings(env={}, overrides={"milvus_uri": uri, "collection": collection, "model": str(model),
                                            "migrations_dir": str(scripts), "device": "cpu", "dtype": "fp32"})


def _docs(n: int) -> list[dict[str, Any]]:
    rng = random.Random(3)
    return [{"id": f"{rng.choice('abcdefgh')}{i:04d}", "metadata": {"i": i},
             "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 24)))} for i in range(n)]


def _seed(store: Any, name: str, docs: list[dict[str, Any]], dim: int) -> None:
    """Documents as an older model wrote them: random vectors of every kind."""
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(len(docs), dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    colbert = []
    for _ in docs:
        c = rng.normal(size=(int(rng.integers(2, 9)), dim)).astype(np.float32)
        colbert.append(c / np.linalg.norm(c, axis=1, keepdims=True))
    sparse = [{int(k): 0.5 for k in rng.choice(2000, 5, replace=False)} for _ in docs]
    ds = DocumentStore.open(store, name)
    ds.write(docs, M3Output(dense=dense, sparse=sparse, colbert=colbert))
    store.client.flush(name)
    store.client.flush(ds.layout.companion_name)


def _worker_cmd(settings: Any, *extra: str) -> list[str]:
    return [sys.executable, "-m", "milvus_embed_ext.cli", "migrate", "work", "--revision", REV,
            "--milvus-uri", settings.milvus_uri, "--collection", settings.collection, "--model", settings.model,
            "--migrations-dir", settings.migrations_dir, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "MEE_DEVICE": "cpu", "MEE_DTYPE": "fp32", "MEE_ENCODER_THREADS": "1"}


def _everything(store: Any, name: str) -> dict[str, Any]:
    """Every stored representation of every document, plus the companion rows (for orphans)."""
    ds = DocumentStore.open(store, name)
    ids = sorted({str(r["id"]) for page in ds.iter_documents(output_fields=["id"]) for r in page})
    docs = {d["id"]: d for d in ds.get(ids, output_fields=["id", "text", "metadata"])}
    vectors = ds.fetch_vectors(ids)
    mains = {r["id"]: r for r in store.client.query(name, filter='id != ""', limit=16384,
                                                     output_fields=["id", "colbert_version", "colbert_rows"])}
    companion = store.client.query(ds.layout.companion_name, filter='key != ""', limit=16384,
                                   output_fields=["key", "doc_id", "version"])
    return {"ids": ids, "docs": docs, "vectors": vectors, "mains": mains,
            "companion": {r["key"]: r for r in companion}}


def _assert_no_orphans(snap: dict[str, Any]) -> None:
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for row in snap["companion"].values():
        by_doc.setdefault(row["doc_id"], []).append(row)
    assert set(by_doc) == set(snap["mains"])
    for doc_id, main_row in snap["mains"].items():
        rows = by_doc[doc_id]
        assert {r["version"] for r in rows} == {main_row["colbert_version"]}, doc_id
        assert len(rows) == main_row["colbert_rows"], doc_id


def _sparse_close(a: dict[int, float], b: dict[int, float]) -> bool:
    keys = set(a) | set(b)
    return np.allclose([a.get(k, 0.0) for k in keys], [b.get(k, 0.0) for k in keys], atol=1e-4)


# ------------------------------------------------------------------------------------- default run
def test_a_worker_exits_0_when_the_revision_is_applied_and_refuses_a_revision_without_shards(
        milvus_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scripts = _scripts(tmp_path)
    model = tmp_path / "config-only-model"  # no weights: neither path loads the model
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64}')
    settings = _settings(milvus_server.uri, "applied_check", scripts, model)
    with MilvusStore.connect(settings) as store:
        m.stamp(m.config_from_settings(settings), "head", store=store)
    args = ["migrate", "work", "--revision", REV, "--milvus-uri", milvus_server.uri, "--collection", "applied_check",
            "--migrations-dir", str(scripts), "--model", str(model)]
    assert main(args) == 0
    assert f"revision {REV} of 'applied_check' is already applied; nothing to do" in capsys.readouterr().out
    args[args.index(REV)] = "0001_layout"
    args[args.index("applied_check")] = "not_migrated"
    assert main(args) == InvalidArgument.exit_code
    assert "has no sharded backfill" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- slow: -9
@pytest.mark.slow
def test_three_workers_two_killed_with_sigkill_end_exactly_like_one_worker(
        milvus_server, tmp_path: Path, tiny_model_dir: Path) -> None:
    scripts = _scripts(tmp_path)
    docs = _docs(480)
    single = _settings(milvus_server.uri, "single", scripts, tiny_model_dir)
    multi = _settings(milvus_server.uri, "multi", scripts, tiny_model_dir)
    with MilvusStore.connect(single) as store:
        for s in (single, multi):
            m.upgrade(m.config_from_settings(s), "0001_layout", store=store)
            _seed(store, s.collection, docs, dim=64)
        old = _everything(store, "multi")

        # the reference: one process, `migrate upgrade` alone
        m.upgrade(m.config_from_settings(single, batch_size=16, shards=8), store=store)

        # three workers at once; two killed with -9 at random moments, two replacements
        opts = ["--lease-ttl", "4", "--batch-size", "4", "--shards", "32", "--wait", "180"]
        logs = tmp_path / "logs"
        logs.mkdir()

        def start(i: int) -> subprocess.Popen:
            out = open(logs / f"worker{i}.log", "w")  # noqa: SIM115 - closed with the process
            return subprocess.Popen(_worker_cmd(multi, *opts, "--worker-index", str(i % 3), "--workers", "3"),
                                    stdout=out, stderr=subprocess.STDOUT, env=_env(), text=True)

        workers = [start(i) for i in range(3)]
        table = SystemTable(store.client)
        key = f"{REV}:up:0:shards"
        deadline = time.monotonic() + 240
        while read_plan(table, "multi", key) is None or table.locks("multi") or \
                not table.rows("shard", read_plan(table, "multi", key).group):
            assert time.monotonic() < deadline, "no worker opened the plan and finished a batch"
            assert any(w.poll() is None for w in workers), [(logs / f"worker{i}.log").read_text() for i in range(3)]
            time.sleep(0.2)
        group = read_plan(table, "multi", key).group
        rng = random.Random()
        victims = rng.sample(range(3), 2)
        killed_mid_work = 0
        for v in victims:
            time.sleep(rng.uniform(0.0, 2.5))
            if workers[v].poll() is None:
                killed_mid_work += len([r for r in table.rows("shard", group) if not r.get("done")]) > 0
                workers[v].kill()  # SIGKILL
        workers += [start(3), start(4)]
        for i, w in enumerate(workers):
            rc = w.wait(timeout=300)
            text = (logs / f"worker{i}.log").read_text()
            if i in victims and rc == -9:
                continue
            assert rc == 0, text
            assert "no shard of revision" in text or "already applied" in text, text
            print(f"worker {i}: {text.strip().splitlines()[-1]}")
        assert m.current(m.config_from_settings(multi), store=store).pending == [REV]  # not finished by workers

        # the finish step: verifies every shard, marks the revision applied (once)
        assert m.upgrade(m.config_from_settings(multi), store=store) == [REV]
        assert m.upgrade(m.config_from_settings(multi), store=store) == []
        log = [e for e in table.log("multi") if e["revision"] == REV]
        assert [e["action"] for e in log] == ["upgrade"]
        assert REV in table.applied("multi")
        assert table.rows("shard", group) == [] and table.rows("lease", group) == []

        done = subprocess.run(_worker_cmd(multi), capture_output=True, text=True, env=_env(), timeout=120)
        assert done.returncode == 0 and "already applied; nothing to do" in done.stdout, done.stdout + done.stderr

        a, b = _everything(store, "single"), _everything(store, "multi")
    print(f"workers killed while shards were left: {killed_mid_work} of {len(victims)}")
    assert a["ids"] == b["ids"] == sorted(d["id"] for d in docs)
    _assert_no_orphans(a)
    _assert_no_orphans(b)
    for doc_id in a["ids"]:
        assert a["docs"][doc_id] == b["docs"][doc_id]
        va, vb, vo = a["vectors"][doc_id], b["vectors"][doc_id], old["vectors"][doc_id]
        assert not np.allclose(vb.dense, vo.dense, atol=1e-3), f"{doc_id} was not re-encoded"
        np.testing.assert_allclose(vb.dense, va.dense, atol=1e-5)
        np.testing.assert_allclose(vb.truncated[32], va.truncated[32], atol=1e-5)
        assert _sparse_close(vb.sparse, va.sparse), doc_id
        assert va.colbert is not None and vb.colbert is not None
        assert vb.colbert.shape == va.colbert.shape
        np.testing.assert_allclose(vb.colbert, va.colbert, atol=2e-3)  # fp16 codec
