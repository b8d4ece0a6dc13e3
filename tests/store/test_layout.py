"""Collection layouts are data: validation, (de)serialisation, resolution per backend, schemas."""

from __future__ import annotations

import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import FailedPrecondition, InvalidArgument
from milvus_embed_ext.store import CollectionLayout, TruncatedField, capabilities_for
from milvus_embed_ext.store.layout import main_index_params, main_schema, schema_problems

LITE = capabilities_for("2.5.1", lite=True)
OLD_SERVER = capabilities_for("v2.5.10", lite=False)
NEW_SERVER = capabilities_for("v2.6.4", lite=False)


def test_round_trip_through_dict_and_description() -> None:
    layout = CollectionLayout("docs", 1024, (TruncatedField(256), TruncatedField(128, "pca")), store_text=False,
                              colbert="companion", colbert_codec="int8", index_type="IVF_FLAT", max_id_length=64,
                              extra={"model": "abc"})
    assert CollectionLayout.from_dict(layout.to_dict()) == layout
    back = CollectionLayout.from_description(layout.to_description())
    assert back == layout and back.extra == {"model": "abc"}
    assert CollectionLayout.from_description("some user collection") is None
    assert CollectionLayout("x", 8, [4]).truncated == (TruncatedField(4),)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "bad-name"}, "invalid"),
    ({"name": "x__colbert"}, "reserved"),
    ({"name": "a" * 300}, "limit"),
    ({"dense_dim": 1}, "dense_dim"),
    ({"truncated": (TruncatedField(16), TruncatedField(16))}, "distinct"),
    ({"truncated": (TruncatedField(64),)}, "between 2 and 63"),
    ({"truncated": (TruncatedField(16, "svd"),)}, "prefix or pca"),
    ({"colbert": "maybe"}, "colbert must be"),
    ({"colbert_codec": "pq"}, "colbert_codec"),
    ({"index_type": "DISKANN"}, "index_type"),
    ({"max_id_length": 70000}, "max_id_length"),
])
def test_invalid_layouts_are_refused(kwargs: dict, match: str) -> None:
    args = {"name": "docs", "dense_dim": 64, **kwargs}
    with pytest.raises(InvalidArgument, match=match):
        CollectionLayout(**args)


def test_from_dict_refuses_unknown_keys_and_formats() -> None:
    d = CollectionLayout("docs", 64).to_dict()
    with pytest.raises(InvalidArgument, match="unknown"):
        CollectionLayout.from_dict({**d, "colour": "red"})
    with pytest.raises(FailedPrecondition, match="format"):
        CollectionLayout.from_dict({**d, "format": 99})


def test_resolution_per_backend() -> None:
    layout = CollectionLayout("docs", 64)
    assert (layout.resolved(LITE).colbert, layout.resolved(LITE).index_type) == ("companion", "FLAT")
    assert (layout.resolved(OLD_SERVER).colbert, layout.resolved(OLD_SERVER).index_type) == ("companion", "HNSW")
    assert layout.resolved(NEW_SERVER).colbert == "native"
    with pytest.raises(FailedPrecondition, match="2.6.4"):
        CollectionLayout("docs", 64, colbert="native").resolved(OLD_SERVER)
    with pytest.raises(FailedPrecondition, match="FLAT, IVF_FLAT"):
        CollectionLayout("docs", 64, index_type="HNSW").resolved(LITE)


def test_from_settings_uses_truncate_dims_codec_and_index_type() -> None:
    s = load_settings(env={}, overrides={"truncate_dims": "32,16", "colbert_codec": "bits", "index_type": "IVF_FLAT",
                                         "collection": "kb"})
    layout = CollectionLayout.from_settings(s, dense_dim=64, pca_dims=(16,))
    assert layout.name == "kb" and layout.colbert_codec == "bits" and layout.index_type == "IVF_FLAT"
    assert layout.truncated == (TruncatedField(32), TruncatedField(16, "pca"))


def _described(schema) -> dict:  # noqa: ANN001 - the shape describe_collection returns
    d = schema.to_dict()
    return {"fields": [{"name": f["name"], "type": f["type"], "params": f.get("params", {})} for f in d["fields"]],
            "struct_array_fields": d.get("struct_fields", [])}


def test_companion_schema_fields_and_drift_detection() -> None:
    layout = CollectionLayout("docs", 64, (TruncatedField(16),)).resolved(LITE)
    schema = main_schema(layout)
    names = [f.name for f in schema.fields]
    assert names == ["id", "text", "metadata", "dense", "dense_16", "sparse", "colbert_version", "colbert_rows"]
    assert schema_problems(layout, _described(schema)) == []
    other = CollectionLayout("docs", 32, (TruncatedField(8),)).resolved(LITE)
    problems = schema_problems(layout, _described(main_schema(other)))
    assert "field dense has dim=32, expected 64" in problems
    assert "field dense_16 is missing" in problems and "unexpected field dense_8" in problems


def test_native_schema_has_a_struct_field_with_max_sim_index() -> None:
    layout = CollectionLayout("docs", 64).resolved(NEW_SERVER)
    schema = main_schema(layout).to_dict()
    (struct,) = schema["struct_fields"]
    assert struct["name"] == "colbert" and struct["fields"][0]["params"]["dim"] == 64
    assert "colbert_version" not in [f["name"] for f in schema["fields"]]

    class FakeClient:
        @staticmethod
        def prepare_index_params():  # noqa: ANN205
            from pymilvus import MilvusClient

            return MilvusClient.prepare_index_params()

    params = {p.field_name: p for p in main_index_params(layout, FakeClient())}
    assert params["colbert[vector]"].to_dict()["metric_type"] == "MAX_SIM_IP"
    assert params["dense"].index_type == "HNSW" and params["sparse"].index_type == "SPARSE_INVERTED_INDEX"


def test_unresolved_layouts_cannot_build_schemas() -> None:
    with pytest.raises(ValueError, match="resolve"):
        main_schema(CollectionLayout("docs", 64))
