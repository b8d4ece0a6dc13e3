"""Every op and its reverse on Milvus Lite (no aliases, no rename, no add-field: those go through
rebuild + copy-back), and upgrade / downgrade / upgrade again leaving identical schema and data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from milvus_embed_ext import migrations as m
from milvus_embed_ext.errors import FailedPrecondition
from tests.migrations.mig_helpers import count, insert_docs, snapshot, write_scripts

N = 60

CHAIN = {
    "r1.py": '''
        revision = "r1"
        down_revision = None
        def upgrade(op):
            op.create_collection(op.layout())
    ''',
    "r3.py": '''
        revision = "r3"
        down_revision = "r1"
        def upgrade(op):
            op.create_index("dense", "IVF_FLAT", "IP", {"nlist": 4})
    ''',
    "r4.py": '''
        revision = "r4"
        down_revision = "r3"
        def upgrade(op):
            op.add_truncated_dense(16)
    ''',
    "r5.py": '''
        revision = "r5"
        down_revision = "r4"
        def upgrade(op):
            op.add_truncated_dense(8, projection="pca")
    ''',
    "r6.py": '''
        import dataclasses
        revision = "r6"
        down_revision = "r5"
        def upgrade(op):
            op.rebuild_collection(dataclasses.replace(op.current_layout(), max_id_length=128))
    ''',
    "r7.py": '''
        revision = "r7"
        down_revision = "r6"
        def _mark(ctx, seen):
            def fn(rows):
                return [{**r, "metadata": {**r["metadata"], "seen": seen}} for r in rows]
            ctx.backfill(ctx.collection, fn, batch_size=25)
        def upgrade(op):
            op.run_python(lambda ctx: _mark(ctx, True), lambda ctx: _mark(ctx, False), "mark every row")
    ''',
}


def _fields(store, name: str) -> dict[str, dict]:
    return {f["name"]: f for f in store.client.describe_collection(name)["fields"]}


def _index_type(store, name: str, field: str) -> str | None:
    for idx in store.client.list_indexes(name, field_name=field):
        info = store.client.describe_index(name, idx)
        if info.get("field_name") == field:
            return info["index_type"]
    return None


def test_every_op_and_its_reverse(lite, tmp_path: Path) -> None:
    settings = lite.scope(write_scripts(tmp_path / "chain", CHAIN))
    cfg = m.config_from_settings(settings, batch_size=25)
    name, st = settings.collection, lite.store

    assert m.upgrade(cfg, "r1", store=st) == ["r1"]
    assert st.client.has_collection(name) and st.client.has_collection(f"{name}__colbert")
    insert_docs(st, name, N)
    before = snapshot(st, name)

    m.upgrade(cfg, "r3", store=st)
    assert _index_type(st, name, "dense") == "IVF_FLAT"

    m.upgrade(cfg, "r4", store=st)
    rows = st.client.query(name, filter='id in ["doc00007", "doc00042"]', output_fields=["dense", "dense_16"])
    for r in rows:
        prefix = np.asarray(r["dense"][:16]) / np.linalg.norm(r["dense"][:16])
        np.testing.assert_allclose(r["dense_16"], prefix, atol=1e-5)
    assert _index_type(st, name, "dense") == "IVF_FLAT", "a rebuild must keep indexes set by revisions"

    m.upgrade(cfg, "r5", store=st)
    assert _fields(st, name)["dense_8"]["params"]["dim"] == 8
    assert st.client.query(f"{name}__pca", filter="dim == 8", output_fields=["key"]), "the fitted PCA is stored"
    r = st.client.query(name, filter='id == "doc00003"', output_fields=["dense_8"])[0]
    assert abs(np.linalg.norm(r["dense_8"]) - 1) < 1e-4

    m.upgrade(cfg, "r6", store=st)
    assert _fields(st, name)["id"]["params"]["max_length"] == 128

    m.upgrade(cfg, "r7", store=st)
    meta = st.client.query(name, filter="", output_fields=["metadata"], limit=100)
    assert len(meta) == N and all(r["metadata"]["seen"] is True for r in meta)
    assert m.check(cfg, store=st).problems == []

    # and back down, one revision at a time
    m.downgrade(cfg, "-1", store=st)
    assert all(r["metadata"]["seen"] is False for r in st.client.query(name, filter="", output_fields=["metadata"], limit=100))
    m.downgrade(cfg, "r5", store=st)
    assert _fields(st, name)["id"]["params"]["max_length"] == 512
    m.downgrade(cfg, "r4", store=st)
    assert "dense_8" not in _fields(st, name)
    assert not st.client.query(f"{name}__pca", filter="dim == 8", output_fields=["key"])
    m.downgrade(cfg, "r3", store=st)
    assert "dense_16" not in _fields(st, name)
    m.downgrade(cfg, "r1", store=st)
    assert _index_type(st, name, "dense") == "FLAT", "reverse of create_index restores the layout's index"
    assert count(st, name) == N
    after = snapshot(st, name)
    for row in after["rows"].values():
        row["metadata"].pop("seen")
    assert after == before
    assert m.check(cfg, store=st).problems == []

    m.downgrade(cfg, "base", store=st)
    assert not st.client.has_collection(name) and not st.client.has_collection(f"{name}__colbert")
    assert m.current(cfg, store=st).applied == {}
    leftovers = [c for c in st.client.list_collections() if c.startswith(f"{name}__m")]
    assert leftovers == []


@pytest.mark.parametrize(("body", "message"), [
    ('op.alter_properties({"collection.ttl.seconds": 3600})', "Milvus Lite .* cannot store collection properties"),
    ('op.add_field("tag", "VARCHAR", max_length=16)', "Milvus Lite .* neither add_collection_field nor nullable"),
])
def test_server_only_ops_are_refused_on_lite_with_a_clear_message(lite, tmp_path: Path, body: str,
                                                                   message: str) -> None:
    """Lite 2.5.1 rejects properties, nullable fields and defaults; these ops are for servers."""
    scripts = write_scripts(tmp_path / "srv", {
        "p1.py": 'revision = "p1"\ndown_revision = None\ndef upgrade(op):\n    op.create_collection()\n',
        "p2.py": f'revision = "p2"\ndown_revision = "p1"\ndef upgrade(op):\n    {body}\n',
    })
    settings = lite.scope(scripts)
    with pytest.raises(FailedPrecondition, match=message):
        m.upgrade(settings, store=lite.store)
    assert set(m.current(settings, store=lite.store).applied) == {"p1"}
    step = m.plan(settings, store=lite.store)[0]
    assert step.ops[0].reverse().reverse() == step.ops[0]


ROUND = {
    "a.py": 'revision = "a"\ndown_revision = None\ndef upgrade(op):\n    op.create_collection()\n',
    "b.py": 'revision = "b"\ndown_revision = "a"\ndef upgrade(op):\n    op.add_truncated_dense(32)\n'
            '    op.create_index("dense_32", "IVF_FLAT", "IP", {"nlist": 4})\n',
}


def test_upgrade_downgrade_upgrade_is_identical(lite, tmp_path: Path) -> None:
    settings = lite.scope(write_scripts(tmp_path / "round", ROUND))
    cfg = m.config_from_settings(settings, batch_size=16)
    st, name = lite.store, settings.collection
    m.upgrade(cfg, "a", store=st)
    insert_docs(st, name, 40)
    # Non-ASCII ids must survive the backfill's id-filtered reads (a JSON-escaped filter matched none).
    insert_docs(st, name, 5, start=40, id_prefix="文档/ü-😀-")
    m.upgrade(cfg, store=st)
    first = snapshot(st, name)
    assert len(first["rows"]) == 45 and "文档/ü-😀-00042" in first["rows"]
    assert [f[0] for f in first["fields"]].count("dense_32") == 1
    assert m.downgrade(cfg, "a", store=st) == ["b"]
    assert "dense_32" not in [f[0] for f in snapshot(st, name)["fields"]]
    assert m.upgrade(cfg, store=st) == ["b"]
    assert snapshot(st, name) == first
    events = [(e["action"], e["revision"]) for e in m.history(cfg, store=st)[1]]
    assert events == [("upgrade", "a"), ("upgrade", "b"), ("downgrade", "b"), ("upgrade", "b")]
