"""`reencode` on embedded Milvus Lite: `migrate upgrade` alone is the single worker; a crash resumes per shard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from milvus_embed_ext import migrations as m
from milvus_embed_ext.encoder.output import M3Output
from milvus_embed_ext.migrations.history import SystemTable
from milvus_embed_ext.store.documents import DocumentStore
from tests.migrations.mig_helpers import Crash, write_scripts

N = 60
SCRIPTS = {
    "0001_layout.py": '''
        revision = "0001_layout"
        down_revision = None


        def upgrade(op):
            op.create_collection(op.layout(truncated=(), colbert="companion"))
        ''',
    "0002_reencode.py": '''
        revision = "0002_reencode"
        down_revision = "0001_layout"


        def upgrade(op):
            op.reencode(batch_size=5)
        ''',
}


def test_upgrade_reencodes_as_one_worker_and_resumes_after_a_crash(lite, tmp_path: Path, tiny_model_dir: Path,
                                                                   tiny_encoder) -> None:
    settings = lite.scope(write_scripts(tmp_path / "s", SCRIPTS), model=str(tiny_model_dir), device="cpu",
                          dtype="fp32")
    cfg = m.config_from_settings(settings, shards=6)
    st, name = lite.store, settings.collection
    m.upgrade(cfg, "0001_layout", store=st)
    ds = DocumentStore.open(st, name)
    docs = [{"id": f"d{i:03d}", "text": f"document {i} about {'rivers' if i % 2 else 'stones'} and {i * 7}",
             "metadata": {"i": i}} for i in range(N)]
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(N, 64)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)  # unit rows, as BGE-M3's (the store checks ColBERT's)
    ds.write(docs, M3Output(dense=dense, sparse=[{7: 0.5}] * N, colbert=[dense[i:i + 1] for i in range(N)]))
    assert "reencode" in "\n".join(m.plan(cfg, store=st)[0].lines())

    batches: list[str] = []

    def crash(key: str, done: int) -> None:
        batches.append(key)
        if len(batches) == 4:
            raise Crash(key)

    with pytest.raises(Crash):
        m.upgrade(cfg, store=st, hooks=m.RunHooks(after_batch=crash))
    table = SystemTable(st.client)
    group = f"{name}/0002_reencode/up/0"
    states = table.rows("shard", group)
    assert states and any(r.get("last_id") for r in states), "per-shard checkpoints are in the history"
    assert set(m.current(cfg, store=st).applied) == {"0001_layout"}

    # an exception releases the lease (a SIGKILL does not: tests/server_backfill); the rerun resumes
    assert table.rows("lease", group) == []
    assert m.upgrade(cfg, store=st) == ["0002_reencode"]
    assert table.rows("shard", group) == [] and table.rows("lease", group) == [] and table.rows("ckpt", name) == []

    want = tiny_encoder.encode([d["text"] for d in docs], **ds.encode_kwargs())
    got = ds.fetch_vectors([d["id"] for d in docs])
    for i, d in enumerate(docs):
        np.testing.assert_allclose(got[d["id"]].dense, want.dense[i], atol=1e-5)
        assert got[d["id"]].colbert is not None and got[d["id"]].colbert.shape == want.colbert[i].shape
    companion = st.client.query(ds.layout.companion_name, filter='key != ""', output_fields=["doc_id", "version"],
                                limit=16384)
    mains = {r["id"]: r["colbert_version"] for r in st.client.query(name, filter='id != ""', limit=16384,
                                                                     output_fields=["id", "colbert_version"])}
    assert {(r["doc_id"], r["version"]) for r in companion} == set(mains.items()), "no orphan ColBERT rows"
    assert [e["action"] for e in table.log(name) if e["revision"] == "0002_reencode"] == ["upgrade"]

    # the finish step's sample check catches a document that does not hold this model's vectors
    from milvus_embed_ext.errors import ConsistencyError
    from milvus_embed_ext.migrations.executor import OpContext
    from milvus_embed_ext.migrations.reencode import ReencodeJob

    ds.write(docs[:1], M3Output(dense=dense[:1], sparse=[{7: 0.5}], colbert=[dense[:1]]))
    job = ReencodeJob(OpContext(st, settings, table, name, "check", "up", 0), name)
    job.check_sample([d["id"] for d in docs[1:5]])
    with pytest.raises(ConsistencyError, match="another model"):
        job.check_sample([d["id"] for d in docs[:5]])
