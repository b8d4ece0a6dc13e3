"""Migrations against a Milvus server process: the alias swap, the rename swap, properties, add_field and check.

The built-in revisions run with a model whose dense width is 320, so 0002 adds ``dense_256`` through a rebuild
(copy, verify, swap) and its downgrade removes it the same way. On a server the swap is two renames, or an
alias move where the collection name is an alias. These paths never run on the embedded Lite (no aliases, no
rename); here they run for real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from milvus_embed_ext import migrations as m
from milvus_embed_ext.store import DocumentStore, codecs
from tests.migrations.mig_helpers import write_scripts
from tests.server.srv_helpers import write_docs

N = 60


def _assert_complete(store: Any, name: str, encoded: Any, *, dense_256: bool) -> None:
    """Every document with every representation: dense, sparse, ColBERT (companion), and dense_256 when asked."""
    ds = DocumentStore.open(store, name)
    assert ds.count() == N
    assert [t.dim for t in ds.layout.truncated] == ([256] if dense_256 else [])
    ids = [f"d{i:04d}" for i in range(N)]
    got = ds.fetch_vectors(ids)
    assert sorted(got) == ids
    for i, doc_id in enumerate(ids):
        v = got[doc_id]
        np.testing.assert_allclose(v.dense, encoded.dense[i], atol=1e-6)
        assert v.colbert is not None and v.colbert.shape == encoded.colbert[i].shape
        # exactly what the layout's codec stores (the swaps copy rows; they must not re-quantise them)
        codec = ds.layout.colbert_codec
        stored = codecs.decode(codecs.encode(encoded.colbert[i], codec), codec, encoded.colbert[i].shape[1])
        np.testing.assert_allclose(v.colbert, stored, atol=1e-6)
        assert set(v.sparse) == set(encoded.sparse[i])
        if dense_256:
            want = encoded.dense[i][:256] / np.linalg.norm(encoded.dense[i][:256])
            np.testing.assert_allclose(v.truncated[256], want, atol=1e-5)


def _check_ok(settings: Any, store: Any) -> None:
    report = m.check(settings, store=store)
    assert report.problems == [], report.problems


def test_upgrade_and_downgrade_through_the_rename_swap(server_store: Any, server_settings: Any, coll: str) -> None:
    settings = server_settings.replace(collection=coll)
    m.upgrade(settings, "0001_initial", store=server_store)
    encoded = write_docs(DocumentStore.open(server_store, coll), N)
    _check_ok(settings, server_store)
    assert m.upgrade(settings, "head", store=server_store) == ["0002_dense_256"]
    assert not server_store.capabilities.lite  # the server path: two renames, no copy-back
    leftovers = [c for c in server_store.list_collections() if c.startswith(f"{coll}__m")]
    assert leftovers == []  # the copy was renamed to the name, the old collection dropped
    _assert_complete(server_store, coll, encoded, dense_256=True)
    _check_ok(settings, server_store)
    m.downgrade(settings, "0001_initial", store=server_store)
    _assert_complete(server_store, coll, encoded, dense_256=False)
    _check_ok(settings, server_store)
    m.downgrade(settings, "base", store=server_store)
    assert not server_store.has_collection(coll) and not server_store.has_collection(f"{coll}__colbert")


def test_upgrade_and_downgrade_through_the_alias_swap(server_store: Any, server_settings: Any, coll: str) -> None:
    """Where the collection name is an alias (how ops run blue/green), the rebuild moves the alias."""
    settings = server_settings.replace(collection=coll)
    m.upgrade(settings, "0001_initial", store=server_store)
    encoded = write_docs(DocumentStore.open(server_store, coll), N)
    client = server_store.client
    client.rename_collection(coll, f"{coll}_v1")
    client.create_alias(f"{coll}_v1", coll)
    assert client.describe_alias(coll)["collection_name"] == f"{coll}_v1"
    _check_ok(settings, server_store)  # everything works through the alias

    m.upgrade(settings, "head", store=server_store)
    physical = client.describe_alias(coll)["collection_name"]
    assert physical != f"{coll}_v1" and not server_store.has_collection(f"{coll}_v1")  # alias moved, old dropped
    _assert_complete(server_store, coll, encoded, dense_256=True)
    _check_ok(settings, server_store)

    m.downgrade(settings, "0001_initial", store=server_store)
    assert client.describe_alias(coll)["collection_name"] not in (physical, f"{coll}_v1")
    assert not server_store.has_collection(physical)
    _assert_complete(server_store, coll, encoded, dense_256=False)
    _check_ok(settings, server_store)
    m.downgrade(settings, "base", store=server_store)  # drops the alias and the collection behind it
    assert coll not in client.list_aliases().get("aliases", [])
    assert not [c for c in server_store.list_collections() if c.startswith(coll)]


def test_properties_and_add_field(server_store: Any, server_settings: Any, coll: str, tmp_path: Path) -> None:
    """Collection properties are set, checked and reverted; add_field (no add_collection_field on this server)
    goes through a rebuild, and the new nullable field is there afterwards."""
    scripts = write_scripts(tmp_path / "scripts", {
        "0001_init.py": """
            revision = "0001"
            down_revision = None

            def upgrade(op):
                op.create_collection(op.layout(truncated=()))
        """,
        "0002_props.py": """
            revision = "0002"
            down_revision = "0001"

            def upgrade(op):
                op.alter_properties({"collection.ttl.seconds": "86400"})
        """,
        "0003_field.py": """
            revision = "0003"
            down_revision = "0002"

            def upgrade(op):
                op.add_field("lang", "VARCHAR", max_length=16)
        """,
    })
    settings = server_settings.replace(collection=coll, migrations_dir=str(scripts))
    m.upgrade(settings, "0001", store=server_store)
    encoded = write_docs(DocumentStore.open(server_store, coll), N)
    m.upgrade(settings, "0002", store=server_store)
    props = server_store.client.describe_collection(coll)["properties"]
    assert props.get("collection.ttl.seconds") == "86400"
    _check_ok(settings, server_store)
    server_store.client.alter_collection_properties(coll, {"collection.ttl.seconds": "5"})  # drift
    assert any("collection.ttl.seconds" in p for p in m.check(settings, store=server_store).problems)
    server_store.client.alter_collection_properties(coll, {"collection.ttl.seconds": "86400"})

    m.upgrade(settings, "head", store=server_store)
    fields = {f["name"] for f in server_store.client.describe_collection(coll)["fields"]}
    assert "lang" in fields
    assert server_store.client.describe_collection(coll)["properties"].get("collection.ttl.seconds") == "86400"
    _assert_complete(server_store, coll, encoded, dense_256=False)
    _check_ok(settings, server_store)

    m.downgrade(settings, "0001", store=server_store)
    described = server_store.client.describe_collection(coll)
    assert "lang" not in {f["name"] for f in described["fields"]}
    assert "collection.ttl.seconds" not in described["properties"]
    _check_ok(settings, server_store)
    m.downgrade(settings, "base", store=server_store)


@pytest.mark.parametrize("target", ["head"])
def test_migrate_cli_against_the_server(server_settings: Any, coll: str, target: str, capsys: Any) -> None:
    """`milvus-embed migrate upgrade / check / current / downgrade` with MEE_MILVUS_URI=http://..."""
    from milvus_embed_ext.cli import main

    env_args = ["--milvus-uri", server_settings.milvus_uri, "--collection", coll, "--model", server_settings.model]
    assert main(["migrate", "upgrade", target, *env_args]) == 0
    assert main(["migrate", "check", *env_args]) == 0
    assert main(["migrate", "current", *env_args]) == 0
    assert "0002_dense_256" in capsys.readouterr().out
    assert main(["migrate", "downgrade", "base", *env_args]) == 0
