"""Connection handling without a server: capabilities, URI redaction, error mapping, failures."""

from __future__ import annotations

from typing import Any

import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from milvus_embed_ext.store import MilvusStore, capabilities_for, parse_version, redact_uri


@pytest.mark.parametrize(("version", "add_field", "native", "f16"), [
    ("v2.3.9", False, False, False),
    ("v2.4.0", False, False, True),
    ("v2.6.0", True, False, True),
    ("v2.6.3", True, False, True),
    ("2.6.4-rc1", True, True, True),
    ("v2.7.0-gpu", True, True, True),
])
def test_capabilities_from_server_versions(version: str, add_field: bool, native: bool, f16: bool) -> None:
    caps = capabilities_for(version, lite=False)
    assert (caps.add_field, caps.native_multivector, caps.float16_vectors, caps.lite) == (add_field, native, f16, False)
    assert caps.aliases and caps.default_index_type == "HNSW"


def test_lite_and_unknown_versions() -> None:
    lite = capabilities_for("2.5.1", lite=True)
    assert lite.lite and not lite.aliases and not lite.add_field and not lite.native_multivector
    assert lite.index_types == ("FLAT", "IVF_FLAT") and lite.server_version == "milvus-lite 2.5.1"
    unknown = capabilities_for("nightly", lite=False)
    assert not unknown.native_multivector and not unknown.add_field
    assert parse_version("v2.6.4") == (2, 6, 4) and parse_version("2.6") == (2, 6, 0) and parse_version("x") is None


def test_redact_uri() -> None:
    assert redact_uri("https://root:Milvus@db.example:19530/prod") == "https://db.example:19530/prod"
    assert redact_uri("http://localhost:19530") == "http://localhost:19530"


class _Exc(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@pytest.mark.parametrize(("exc", "kind"), [
    (_Exc(1100, "Invalid expr: foo =="), InvalidArgument),
    (_Exc(2000, " => unsupported expr proto node:  at PlanProto.cpp:543\n: segcore error"), InvalidArgument),
    (_Exc(100, "collection not found[collection=x]"), NotFound),
    (_Exc(2, "Fail connecting to server on db:19530, illegal connection params or server unavailable"), Unavailable),
    (_Exc(1800, "auth check failure, please check username and password"), Unauthenticated),
    (_Exc(0, "UNIMPLEMENTED"), FailedPrecondition),
])
def test_error_mapping(exc: Exception, kind: type) -> None:
    store = MilvusStore(None, capabilities_for("2.5.1", lite=True), target="t", secrets=("s3cret",))
    mapped = store.map_error("do it", exc)
    assert isinstance(mapped, kind)


def test_an_invalid_filter_is_classified_once_as_a_typed_error() -> None:
    from milvus_embed_ext.errors import InvalidFilter

    store = MilvusStore(None, capabilities_for("2.5.1", lite=True), target="t")
    mapped = store.map_error("search", _Exc(1100, "Invalid expr: foo =="))
    assert isinstance(mapped, InvalidFilter) and isinstance(mapped, InvalidArgument)
    assert mapped.reason == "Invalid expr: foo ==" and str(mapped) == "invalid filter expression: Invalid expr: foo =="


def test_unreadable_vectors_are_a_typed_unavailable_with_the_same_message() -> None:
    from milvus_embed_ext.errors import VectorsUnreadable

    store = MilvusStore(None, capabilities_for("2.5.1", lite=True), target="t")
    mapped = store.map_error("fetch vectors", _Exc(65535, "Growing segment loss raw data"))
    assert isinstance(mapped, VectorsUnreadable) and isinstance(mapped, Unavailable)
    assert "raw data" in str(mapped)


def test_secrets_are_scrubbed_from_messages() -> None:
    store = MilvusStore(None, capabilities_for("", lite=False), target="https://db:19530", secrets=("tok-123",))
    err = store.map_error("connect", _Exc(2, "failed with token tok-123 at https://u:pw@db:19530"))
    assert "tok-123" not in str(err) and "pw@" not in str(err)


def test_unreachable_server_is_unavailable_without_credentials() -> None:
    settings = load_settings(env={}, overrides={
        "milvus_uri": "http://user:hunter2@127.0.0.1:9", "milvus_token": "tok-secret-42", "milvus_timeout_s": 1.5})
    with pytest.raises(Unavailable) as info:
        MilvusStore.connect(settings)
    text = str(info.value)
    assert "127.0.0.1:9" in text
    assert "hunter2" not in text and "tok-secret-42" not in text


def test_lite_path_must_end_in_db(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(InvalidArgument, match=r"\.db"):
        MilvusStore.connect(load_settings(env={}, overrides={"milvus_uri": str(tmp_path / "milvus.sqlite")}))


def test_tls_ca_needs_https(tmp_path) -> None:  # noqa: ANN001
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = load_settings(env={}, overrides={"milvus_uri": "http://db:19530", "milvus_tls_ca": str(ca)})
    with pytest.raises(InvalidArgument, match="https"):
        MilvusStore.connect(settings)


def test_lite_file_held_by_another_process_is_unavailable(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pymilvus import MilvusClient\n"
         "MilvusClient(uri=sys.argv[1]); print('ready', flush=True); time.sleep(120)", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(Unavailable, match="one process"):
            MilvusStore.connect(load_settings(env={}, overrides={"milvus_uri": str(db)}))
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_version_table_does_not_trust_versions_that_are_not_milvus_2() -> None:
    """milvus-lite 3.2.2 runs as a server and answers milvus_lite-3.2.2: newer than 2.6.4 by the numbers."""
    for version in ("milvus_lite-3.2.2", "v3.0.0"):
        caps = capabilities_for(version, lite=False)
        assert not caps.native_multivector and not caps.add_field and not caps.float16_vectors


class _ProbeClient:
    """A pymilvus stand-in for the capability probe: refuses what it is told to, records what it made."""

    def __init__(self, *, refuse_create: bool = False, drops_struct: bool = True) -> None:
        self.refuse_create, self.drops_struct = refuse_create, drops_struct
        self.collections: dict[str, Any] = {}

    def create_schema(self, **kw: Any) -> Any:
        from pymilvus import MilvusClient

        return MilvusClient.create_schema(**kw)

    def create_struct_field_schema(self) -> Any:
        from pymilvus import MilvusClient

        return MilvusClient.create_struct_field_schema()

    def create_collection(self, name: str, schema: Any = None, **kw: Any) -> None:
        if self.refuse_create:
            raise PermissionError("permission denied: CreateCollection")
        if any(getattr(f.dtype, "name", "") == "FLOAT16_VECTOR" for f in schema.fields):
            raise ValueError("Float16Vector not supported")
        self.collections[name] = schema

    def describe_collection(self, name: str) -> dict[str, Any]:
        schema = self.collections[name]
        fields = [{"name": f.name} for f in schema.fields]
        structs = [] if self.drops_struct else [{"name": "colbert"}]
        return {"fields": fields, "struct_array_fields": structs, "description": schema.description}

    def list_aliases(self, name: str) -> dict[str, Any]:
        return {"aliases": []}

    def add_collection_field(self, *a: Any, **kw: Any) -> None:
        raise RuntimeError("UNIMPLEMENTED")

    def drop_collection(self, name: str) -> None:
        self.collections.pop(name)


def test_probe_reports_what_the_server_does_and_cleans_up() -> None:
    from milvus_embed_ext.store.capabilities import probe_capabilities

    client = _ProbeClient(drops_struct=True)
    caps = probe_capabilities(client, "v2.6.9")  # the version says native; the server drops the field
    assert caps.probed and caps.aliases and not caps.native_multivector and not caps.add_field
    assert not caps.float16_vectors and caps.descriptions
    assert client.collections == {}


def test_probe_refused_falls_back_to_the_version_table() -> None:
    from milvus_embed_ext.store.capabilities import probe_capabilities

    caps = probe_capabilities(_ProbeClient(refuse_create=True), "v2.6.4")
    assert not caps.probed and caps == capabilities_for("v2.6.4", lite=False)


def test_a_name_that_is_no_alias_logs_no_pymilvus_error(caplog: pytest.LogCaptureFixture) -> None:
    """pymilvus logs every failed RPC at ERROR; "alias not found" is a normal answer to alias_target."""
    import logging

    from milvus_embed_ext.store.admin import CollectionAdmin

    class _Client:
        def describe_alias(self, name: str) -> dict[str, Any]:
            logging.getLogger("pymilvus.decorators").error("RPC error: [describe_alias], alias %s not found", name)
            raise _Exc(1602, f"alias {name} not found")

    store = MilvusStore(_Client(), capabilities_for("v2.6.0", lite=False), target="t")
    with caplog.at_level(logging.DEBUG):
        assert CollectionAdmin(store).alias_target("docs") is None
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
