"""Capabilities are probed from the server, and what it lacks is refused cleanly (milvus-lite 3.2.2 server)."""

from __future__ import annotations

from typing import Any

import pytest

from milvus_embed_ext.errors import FailedPrecondition
from milvus_embed_ext.store import CollectionLayout, DocumentStore, MilvusStore, capabilities_for
from milvus_embed_ext.store.capabilities import PROBE_PREFIX

DIM = 16


def test_capabilities_are_probed_not_parsed(server_store: Any) -> None:
    caps = server_store.capabilities
    assert caps.probed and not caps.lite
    assert caps.server_version.startswith("milvus_lite-3.")  # parses as 3.x: newer than any 2.6 server
    # What milvus-lite 3.2.2 really does (measured): aliases yes; add_collection_field, Array-of-Struct and
    # FLOAT16 vectors no.
    assert caps.aliases is True
    assert caps.add_field is False
    assert caps.native_multivector is False
    assert caps.float16_vectors is False
    assert caps.descriptions is False  # dropped at create time: the store keeps the layout in a property
    assert caps.default_index_type == "HNSW"
    assert not [c for c in server_store.list_collections() if c.startswith(PROBE_PREFIX)]  # scratch dropped


def test_auto_layout_picks_companion_colbert(server_store: Any, coll: str) -> None:
    ds = DocumentStore.create(server_store, CollectionLayout(coll, DIM))
    try:
        assert ds.layout.colbert == "companion" and ds.layout.index_type == "HNSW"
        assert ds.check() == []
        reopened = DocumentStore.open(server_store, coll)  # the layout is read back (description shim)
        assert reopened.layout == ds.layout
        raw = server_store.client._client.describe_collection(coll)  # noqa: SLF001 - the unshimmed answer
        assert raw["description"] == "" and "mee.description" in raw["properties"]
        assert "mee.description" not in server_store.client.describe_collection(coll)["properties"]
    finally:
        ds.drop()


def test_native_colbert_is_refused_before_anything_is_created(server_store: Any, coll: str) -> None:
    with pytest.raises(FailedPrecondition, match="native multi-vector"):
        DocumentStore.create(server_store, CollectionLayout(coll, DIM, colbert="native"))
    assert not server_store.has_collection(coll)


def test_silently_dropped_field_is_caught_at_create(server_store: Any, coll: str) -> None:
    """A store that believes the version table (3.2.2 > 2.6.4: native fields) asks for an Array-of-Struct field;
    the server accepts and drops it; the create path reads the collection back and refuses it."""
    believer = MilvusStore.from_client(server_store.client, capabilities_for("v2.6.4", lite=False), target="t")
    with pytest.raises(FailedPrecondition, match="silently dropped") as err:
        DocumentStore.create(believer, CollectionLayout(coll, DIM, colbert="native"))
    assert "native ColBERT field colbert is missing" in str(err.value)
    assert not server_store.has_collection(coll)  # dropped again, so a corrected retry can create it


def test_add_collection_field_is_unimplemented_but_probed_once(server_store: Any, server_settings: Any) -> None:
    """The probe's answer is cached per URI and version: a second store does not create scratch collections."""
    again = MilvusStore.connect(server_settings)
    try:
        assert again.capabilities is server_store.capabilities or again.capabilities == server_store.capabilities
    finally:
        again.close()
    assert server_store.has_collection("anything") is False  # the first store's connection survived the close
