"""The sidecar with ``MEE_MILVUS_URI=http://127.0.0.1:P``: a real ``milvus-embed serve`` against a Milvus server
process, every Documents and Search RPC through the client."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from milvus_embed_ext import migrations as m
from milvus_embed_ext.errors import FailedPrecondition, NotFound
from milvus_embed_ext.store import DocumentStore
from tests._sidecar import Server, running_sidecar

COLL = "srv_e2e"
WORDS = ["river", "mountain", "harbor", "violin", "quantum", "pepper", "lantern", "orbit", "meadow", "cobalt"]
DOCS = [{"id": f"doc-{i:02d}", "text": f"{WORDS[i % 10]} {WORDS[(i * 3 + 1) % 10]} story {i}",
         "metadata": {"lang": "en" if i % 3 else "fr", "n": i}} for i in range(30)]


@pytest.fixture(scope="module")
def sidecar(milvus_server: Any, server_store: Any, server_settings: Any, tiny_model_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = server_settings.replace(collection=COLL, model=str(tiny_model_dir))
    m.upgrade(settings, "head", store=server_store)  # servers are never migrated implicitly
    try:
        with running_sidecar(tiny_model_dir, tmp_path_factory.mktemp("srv-e2e"), milvus_uri=milvus_server.uri,
                             collection=COLL, milvus_health_interval_s=1) as srv:
            yield srv
    finally:
        m.downgrade(settings, "base", store=server_store)


def test_serving_and_metrics_say_milvus_is_up(sidecar: Server) -> None:
    with sidecar.channel() as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    text = urllib.request.urlopen(sidecar.metrics, timeout=5).read().decode()
    assert "mee_milvus_up 1.0" in text
    assert "connected to Milvus milvus_lite-3" in sidecar.log()


def test_upsert_search_get_delete(sidecar: Server, server_store: Any) -> None:
    with sidecar.client() as c:
        assert c.upsert(DOCS[:4]).upserted == 4                              # unary
        assert c.upsert(iter(DOCS[4:]), chunk_size=8).upserted == len(DOCS) - 4  # stream
        res = c.hybrid_search(DOCS[7]["text"], top_k=5, output_fields=["text", "metadata"])
        assert "doc-07" in [h.id for h in res.hits[:3]]  # doc-27 has the same words (tiny random model)
        filtered = c.hybrid_search(DOCS[7]["text"], top_k=10, filter='metadata["lang"] == "fr"',
                                   output_fields=["metadata"])
        assert filtered.hits and all(h.metadata["lang"] == "fr" for h in filtered.hits)
        assert "doc-07" not in {h.id for h in filtered.hits}  # 7 % 3 != 0: "en"
        got = c.get(["doc-03", "doc-01", "doc-01"], with_vectors=True)
        assert [g["id"] for g in got] == ["doc-03", "doc-01"]  # the server's repeated-id answer is not passed on
        assert got[0]["text"] == DOCS[3]["text"] and got[0]["metadata"] == DOCS[3]["metadata"]
        # every representation is stored: dense, sparse and the ColBERT rows the main row commits to
        stored = DocumentStore.open(server_store, COLL).fetch_vectors([d["id"] for d in DOCS])
        assert len(stored) == len(DOCS)
        for v in stored.values():
            assert v.dense.shape[0] > 0 and abs(float(np.linalg.norm(v.dense)) - 1) < 1e-3
            assert v.sparse and v.colbert is not None and v.colbert.shape[0] > 0
        assert c.delete(["doc-03", "doc-29", "nope"]) == 2
        assert [g["id"] for g in c.get(["doc-03", "doc-04"], allow_missing=True)] == ["doc-04"]
        with pytest.raises(NotFound):
            c.get(["doc-03"])
        with pytest.raises((NotFound, FailedPrecondition)):
            c.hybrid_search("x", collection="no_such_collection")
