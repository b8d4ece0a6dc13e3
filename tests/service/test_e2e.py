"""End to end: ``milvus-embed serve`` as a real subprocess (tiny checkpoint, embedded Milvus Lite in a tmp dir),
started once for the module, every RPC through the client and through raw gRPC stubs."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from milvus_embed_ext import cli
from milvus_embed_ext.errors import InvalidArgument, NotFound, Unauthenticated
from milvus_embed_ext.wire._generated import (
    documents_pb2,
    documents_pb2_grpc,
    embedder_pb2,
    embedder_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from tests._sidecar import running_sidecar

pytestmark = pytest.mark.e2e

KEYS = ("e2e-key-one-0123456789", "e2e-key-two-9876543210")
MAX_TEXTS = 32
MAX_MESSAGE = 1 << 20
WORDS = ["river", "mountain", "harbor", "violin", "quantum", "pepper", "lantern", "orbit", "meadow", "cobalt",
         "glacier", "saffron", "tundra", "falcon", "ember", "velvet", "canyon", "pixel", "sonnet", "marble"]
DOCS = [
    {"id": f"doc-{i:02d}",  # 40 distinct word triples
     "text": f"{WORDS[i % 20]} {WORDS[(i * 7 + 3 + i // 20 * 5) % 20]} {WORDS[(i * 3 + 1 + i // 20 * 11) % 20]} story {i}",
     "metadata": {"lang": "en" if i % 3 else "fr", "n": i}}
    for i in range(40)
]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with running_sidecar(tiny_model_dir, tmp_path_factory.mktemp("e2e"), keys=KEYS, max_texts_per_request=MAX_TEXTS,
                         max_message_bytes=MAX_MESSAGE, shutdown_grace_s=20) as srv:
        yield srv


@pytest.fixture(scope="module")
def loaded(server):
    """The 40 documents, written through the streaming path (chunks of 8)."""
    with server.client() as c:
        res = c.upsert(iter(DOCS), chunk_size=8)
    assert res.upserted == len(DOCS) and res.tokens > 0
    return server


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


AUTH = (("authorization", f"Bearer {KEYS[1]}"),)


# ------------------------------------------------------------------ auth, health, reflection


def test_health_is_open_and_every_service_is_serving(server):
    with server.channel() as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "milvus_embed_ext.v1.Embedder", "milvus_embed_ext.v1.Documents", "milvus_embed_ext.v1.Search"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_api_keys_guard_rpcs_and_reflection(server):
    with server.client(key=None) as c, pytest.raises(Unauthenticated, match="Bearer"):
        c.embed(["no key"])
    with server.client(key="wrong-key") as c, pytest.raises(Unauthenticated):
        c.embed(["wrong key"])
    with server.client(key=KEYS[1]) as c:
        assert c.embed(["second key works"]).dense.shape[0] == 1
    with server.channel() as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ServerReflectionInfo(iter([req]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=5, metadata=AUTH))
        names = {s.name for s in resp.list_services_response.service}
        assert {"milvus_embed_ext.v1.Embedder", "milvus_embed_ext.v1.Documents", "milvus_embed_ext.v1.Search",
                "grpc.health.v1.Health"} <= names


# ------------------------------------------------------------------ Embed


def test_embed_matches_the_library(server, tiny_encoder):
    texts = ["a short one", "a somewhat longer text about rivers and mountains", "émigré naïve 東京 🚀"]
    ref = tiny_encoder.encode(texts, dense=True, sparse=True, colbert=True, truncate_dims=[16])
    with server.client() as c:
        got = c.embed(texts, colbert=True, truncate_dims=[16])
        half = c.embed(texts, sparse=False, colbert=True, fp16=True)
    np.testing.assert_allclose(got.dense, ref.dense, atol=1e-5)
    np.testing.assert_allclose(got.truncated[16], ref.truncated[16], atol=1e-5)
    assert got.token_counts.tolist() == ref.token_counts.tolist()
    for g, r in zip(got.sparse, ref.sparse, strict=True):
        assert g.keys() == r.keys()
        np.testing.assert_allclose([g[k] for k in r], [r[k] for k in r], atol=1e-5)
    for g, r in zip(got.colbert, ref.colbert, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5)
    np.testing.assert_allclose(half.dense, ref.dense, atol=2e-3)
    assert half.sparse is None and half.colbert[0].shape == ref.colbert[0].shape
    assert got.timings.total_ms > 0 and got.model_fingerprint == tiny_encoder.fingerprint


def test_parallel_clients_give_the_sequential_results(loaded):
    texts = [f"{WORDS[i % 20]} and {WORDS[(i * 5) % 20]} text {i}" + " more" * (i % 7) for i in range(48)]
    queries = [f"{WORDS[i]} {WORDS[(i + 4) % 20]}" for i in range(12)]
    with loaded.client() as c:
        seq_emb = [c.embed([t], colbert=True) for t in texts]
        seq_hits = [[h.id for h in c.hybrid_search(q, top_k=5).hits] for q in queries]

    def embed_one(i: int):
        with loaded.client() as cc:
            return cc.embed([texts[i]], colbert=True)

    def search_one(i: int):
        with loaded.client() as cc:
            return [h.id for h in cc.hybrid_search(queries[i], top_k=5).hits]

    with ThreadPoolExecutor(16) as pool:
        par_emb = list(pool.map(embed_one, range(len(texts))))
        par_hits = list(pool.map(search_one, range(len(queries))))
    for s, p in zip(seq_emb, par_emb, strict=True):
        np.testing.assert_allclose(p.dense, s.dense, atol=1e-5)
        assert p.sparse[0].keys() == s.sparse[0].keys()
        np.testing.assert_allclose(p.colbert[0], s.colbert[0], atol=1e-5)
        assert p.token_counts.tolist() == s.token_counts.tolist()
    assert par_hits == seq_hits
    metrics = urllib.request.urlopen(loaded.metrics, timeout=10).read().decode()
    merged = [line for line in metrics.splitlines() if line.startswith("mee_batch_requests_count")]
    assert merged, "batch metrics missing"


# ------------------------------------------------------------------ Documents


def test_upsert_get_delete_roundtrip(loaded):
    with loaded.client() as c:
        rows = c.get(["doc-03", "doc-05"])
        assert [r["id"] for r in rows] == ["doc-03", "doc-05"]
        assert rows[0]["text"] == DOCS[3]["text"] and rows[0]["metadata"] == DOCS[3]["metadata"]
        with pytest.raises(NotFound, match="nope"):
            c.get(["doc-01", "nope"])
        rows = c.get(["doc-01", "nope"], allow_missing=True, output_fields=["text"])
        assert [r["id"] for r in rows] == ["doc-01"] and rows[0]["metadata"] is None
        vec = c.get(["doc-01"], with_vectors=True)[0]
        assert vec["dense"].shape == (c.embed(["x"]).dense.shape[1],) and vec["sparse"]
        # replace one, add one, through the unary path
        res = c.upsert([{"id": "doc-01", "text": "replaced text about falcons", "metadata": {"lang": "de"}},
                        {"id": "extra", "text": "an extra document"}])
        assert res.upserted == 2
        assert c.get(["doc-01"])[0]["metadata"] == {"lang": "de"}
        assert c.delete(["extra", "never-existed"]) == 1
        assert c.get(["extra"], allow_missing=True) == []
        with pytest.raises(NotFound, match="collection"):
            c.get(["doc-01"], collection="no_such_collection")


def test_search_finds_documents_filters_and_fuses(loaded):
    with loaded.client() as c:
        target = DOCS[7]
        res = c.hybrid_search(target["text"], top_k=3, output_fields=["text", "metadata"])
        assert res.hits[0].id == target["id"] and res.hits[0].text == target["text"]
        assert set(res.hits[0].scores) == {"dense", "sparse", "colbert"}
        assert res.query_tokens > 0 and "encode" in res.timings.stages_ms
        fr = c.hybrid_search(target["text"], top_k=40, filter='metadata["lang"] == "fr"', output_fields=["metadata"])
        assert fr.hits and all(h.metadata["lang"] == "fr" for h in fr.hits)
        rrf = c.hybrid_search(target["text"], top_k=5, fusion="rrf", candidates=["sparse", "dense"],
                              rescore=["dense", "sparse"])
        assert rrf.hits[0].id == target["id"] and set(rrf.hits[0].scores) == {"dense", "sparse"}
        page = c.hybrid_search(target["text"], top_k=2, offset=1)
        assert [h.id for h in page.hits] == [h.id for h in res.hits[1:3]]
        with pytest.raises(InvalidArgument):
            c.hybrid_search("x", filter="metadata[[[ broken")
        with pytest.raises(NotFound):
            c.hybrid_search("x", collection="no_such_collection")


# ------------------------------------------------------------------ malformed requests, raw stubs


def test_malformed_requests_get_the_right_codes_and_the_server_keeps_serving(loaded):
    with loaded.channel() as ch:
        emb = embedder_pb2_grpc.EmbedderStub(ch)
        docs = documents_pb2_grpc.DocumentsStub(ch)
        srch = search_pb2_grpc.SearchStub(ch)
        md = AUTH
        E = grpc.StatusCode
        assert _code(lambda: emb.Embed(embedder_pb2.EmbedRequest(texts=["x" * (MAX_MESSAGE + 10)]), metadata=md,
                                       timeout=10)) == E.RESOURCE_EXHAUSTED
        assert _code(lambda: emb.Embed(embedder_pb2.EmbedRequest(texts=["t"] * (MAX_TEXTS + 1)), metadata=md)) == \
            E.INVALID_ARGUMENT
        assert _code(lambda: emb.Embed(embedder_pb2.EmbedRequest(), metadata=md)) == E.INVALID_ARGUMENT
        assert _code(lambda: emb.Embed(embedder_pb2.EmbedRequest(texts=["t"], outputs=[77]), metadata=md)) == \
            E.INVALID_ARGUMENT
        raw = ch.unary_unary("/milvus_embed_ext.v1.Embedder/Embed")
        surrogate = embedder_pb2.EmbedRequest(texts=["@@@"]).SerializeToString().replace(b"@@@", b"\xed\xb3\x80")
        assert _code(lambda: raw(surrogate, metadata=md, timeout=10)) == E.INVALID_ARGUMENT
        assert _code(lambda: docs.Upsert(documents_pb2.UpsertRequest(
            documents=[documents_pb2.Document(text="no id")]), metadata=md)) == E.INVALID_ARGUMENT
        assert _code(lambda: docs.Upsert(documents_pb2.UpsertRequest(
            documents=[documents_pb2.Document(id="m", text="t", metadata_json="[1, 2]")]), metadata=md)) == \
            E.INVALID_ARGUMENT
        assert _code(lambda: docs.Get(documents_pb2.GetRequest(), metadata=md)) == E.INVALID_ARGUMENT
        assert _code(lambda: docs.Delete(documents_pb2.DeleteRequest(ids=[""]), metadata=md)) == E.INVALID_ARGUMENT
        assert _code(lambda: docs.UpsertStream(iter([]), metadata=md)) == E.INVALID_ARGUMENT
        assert _code(lambda: srch.HybridSearch(search_pb2.HybridSearchRequest(), metadata=md)) == E.INVALID_ARGUMENT
        assert _code(lambda: srch.HybridSearch(search_pb2.HybridSearchRequest(query="q", top_k=10**6), metadata=md)) \
            == E.INVALID_ARGUMENT
        bad_enum = search_pb2.HybridSearchRequest(query="q")
        bad_enum.fusion.method = 99
        assert _code(lambda: srch.HybridSearch(bad_enum, metadata=md)) == E.INVALID_ARGUMENT
        bad_field = search_pb2.HybridSearchRequest(query="q", output_fields=["dense"])
        assert _code(lambda: srch.HybridSearch(bad_field, metadata=md)) == E.INVALID_ARGUMENT
        assert _code(lambda: emb.Embed(embedder_pb2.EmbedRequest(texts=["t"]), metadata=md, timeout=1e-4)) == \
            E.DEADLINE_EXCEEDED
        # still serving, and nothing above was an INTERNAL error
        resp = emb.Embed(embedder_pb2.EmbedRequest(texts=["after the abuse"]), metadata=md, timeout=30)
        assert list(resp.token_counts)
    assert '"code": "INTERNAL"' not in loaded.log()


# ------------------------------------------------------------------ CLI, metrics, logs, shutdown


def test_cli_client_commands(loaded, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MEE_API_KEYS", KEYS[0])
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": f"cli-{i}", "text": f"cli document {WORDS[i]}"}) for i in range(3)))
    assert cli.main(["upsert", str(jsonl), "--address", loaded.address]) == 0
    assert json.loads(capsys.readouterr().out)["upserted"] == 3
    assert cli.main(["search", f"cli document {WORDS[1]}", "--top-k", "2", "--address", loaded.address]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["id"] == "cli-1" and first["text"] == f"cli document {WORDS[1]}"
    assert cli.main(["get", "cli-0", "--address", loaded.address]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "cli-0"
    assert cli.main(["delete", "cli-0", "cli-1", "cli-2", "--address", loaded.address]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 3}
    assert cli.main(["get", "cli-0", "--address", loaded.address]) == NotFound.exit_code
    assert cli.main(["embed", "hello", "--truncate-dims", "8", "--address", loaded.address]) == 0
    row = json.loads(capsys.readouterr().out)
    assert len(row["dense_8"]) == 8 and row["tokens"] > 0
    monkeypatch.setenv("MEE_API_KEYS", "not-a-valid-key")
    assert cli.main(["get", "doc-02", "--address", loaded.address]) == Unauthenticated.exit_code


def test_metrics_endpoint(loaded):
    with loaded.client() as c:
        c.embed(["count me"])
    text = urllib.request.urlopen(loaded.metrics, timeout=10).read().decode()
    assert 'mee_requests_total{code="OK",rpc="Embed"}' in text
    assert 'mee_requests_total{code="UNAUTHENTICATED",rpc="Embed"}' in text  # counted by the auth interceptor
    for name in ("mee_request_latency_seconds_bucket", "mee_batch_texts_bucket", "mee_queue_depth_texts",
                 "mee_encoded_tokens_total", "mee_encoder_tokens_per_second", "mee_ready 1.0"):
        assert name in text, name


def test_logs_are_json_and_carry_no_secrets(loaded):
    lines = [line for line in loaded.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r["msg"] == "ready" for r in records)
    assert any(r["msg"] == "rpc" and r["rpc"] == "HybridSearch" for r in records)
    for key in KEYS:
        assert key not in loaded.log()


def test_zz_sigterm_drains_an_in_flight_stream(loaded):
    """SIGTERM while a bulk upsert stream is open: the stream finishes OK, then the process exits 0."""
    sent_first = threading.Event()
    release = threading.Event()

    def chunks():
        for i in range(4):
            if i == 1:
                sent_first.set()
                release.wait(30)
            yield documents_pb2.UpsertRequest(documents=[documents_pb2.Document(id=f"drain-{i}", text=f"drain {i}")])

    result: dict = {}

    def run():
        with loaded.channel() as ch:
            try:
                result["resp"] = documents_pb2_grpc.DocumentsStub(ch).UpsertStream(chunks(), metadata=AUTH, timeout=60)
            except grpc.RpcError as err:
                result["err"] = err

    t = threading.Thread(target=run)
    t.start()
    assert sent_first.wait(30)
    time.sleep(0.3)
    loaded.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert loaded.proc.poll() is None, "the server must wait for the in-flight stream"
    release.set()
    t.join(60)
    assert "err" not in result, result.get("err")
    assert result["resp"].upserted == 4
    assert loaded.proc.wait(60) == 0
    assert "shutting down" in loaded.log()
