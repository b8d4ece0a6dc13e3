"""The HTTP face in-process: every route's vectors against gRPC Embed, TEI's and OpenAI's error shapes, Milvus's
exact TEI request, auth, the shared concurrency limit, deadlines, disconnects, the reranker route and TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from milvus_embed_ext.client import SidecarClient
from milvus_embed_ext.service.httpapi.core import _keep_tail
from tests._pki import make_pki

KEY = "k-http-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["BGE-M3 puts dense, sparse and multi-vector outputs in one model.",
         "Milvus stores vectors; the sidecar computes them.",
         "Ein kurzer deutscher Satz über Vektoren.",
         "向量数据库"]


@pytest.fixture(scope="module")
def http(http_sidecar):
    with httpx.Client(base_url=http_sidecar.base, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_ref(http_sidecar):
    with SidecarClient(http_sidecar.grpc, api_key=KEY, timeout=30) as client:
        yield client


def f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


# ------------------------------------------------------------------ vectors equal gRPC Embed


def test_tei_routes_equal_grpc_embed(http, grpc_ref):
    ref = grpc_ref.embed(TEXTS, dense=True, sparse=True, colbert=True, truncate_dims=[16])
    for path in ("/embed", "/"):
        r = http.post(path, json={"inputs": TEXTS})
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(f32(r.json()), ref.dense)
    one = http.post("/embed", json={"inputs": TEXTS[0]}).json()  # a single string still gives [[...]]
    np.testing.assert_array_equal(f32(one), grpc_ref.embed(TEXTS[:1], sparse=False).dense)
    r = http.post("/embed", json={"inputs": TEXTS, "dimensions": 16})
    np.testing.assert_array_equal(f32(r.json()), ref.truncated[16])
    np.testing.assert_allclose(np.linalg.norm(f32(r.json()), axis=1), 1.0, rtol=1e-5)

    sparse = http.post("/embed_sparse", json={"inputs": TEXTS}).json()
    for row, want in zip(sparse, ref.sparse, strict=True):
        assert [v["index"] for v in row] == sorted(want)
        assert {v["index"]: np.float32(v["value"]) for v in row} == {k: np.float32(w) for k, w in want.items()}
        assert row and all(v["value"] > 0 for v in row)

    colbert = http.post("/embed_all", json={"inputs": TEXTS}).json()
    for got, want in zip(colbert, ref.colbert, strict=True):
        np.testing.assert_array_equal(f32(got), want)


def test_openai_route_equals_grpc_embed(http, grpc_ref):
    ref = grpc_ref.embed(TEXTS, dense=True, sparse=False, truncate_dims=[8])
    body = http.post("/v1/embeddings", json={"model": "bge-m3", "input": TEXTS}).json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    np.testing.assert_array_equal(f32([d["embedding"] for d in body["data"]]), ref.dense)
    assert body["usage"] == {"prompt_tokens": int(ref.token_counts.sum()), "total_tokens": int(ref.token_counts.sum())}
    b64 = http.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64", "dimensions": 8}).json()
    vecs = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]]
    np.testing.assert_array_equal(np.stack(vecs), ref.truncated[8])
    alias = http.post("/embeddings", json={"input": TEXTS[1]}).json()
    # the same batch gives the same bits (a different batch pads differently: ~1e-7 apart)
    np.testing.assert_array_equal(f32(alias["data"][0]["embedding"]), grpc_ref.embed([TEXTS[1]], sparse=False).dense[0])


def test_milvus_tei_provider_request_replayed(http_sidecar, grpc_ref):
    """The bytes Milvus 2.6's `tei` text-embedding provider sends (models/tei/tei.go: Go's encoding/json of
    {inputs, truncate omitempty, truncation_direction omitempty}, Content-Type and Bearer headers, 32 per batch)."""
    texts = [f"document number {i} about vector search" for i in range(32)]
    ref = grpc_ref.embed(texts, sparse=False)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    bodies = [
        json.dumps({"inputs": texts, "truncate": True, "truncation_direction": "Right"}, separators=(",", ":")),
        json.dumps({"inputs": texts}, separators=(",", ":")),  # truncate=false is omitted by omitempty
        json.dumps({"inputs": ["query: " + t for t in texts[:3]], "truncate": True}, separators=(",", ":")),
    ]
    with httpx.Client(timeout=30) as raw:
        for i, body in enumerate(bodies):
            r = raw.post(http_sidecar.base + "/embed", content=body.encode(), headers=headers)
            assert r.status_code == 200, r.text
            got = f32(r.json())
            assert got.ndim == 2 and got.shape[1] == ref.dense.shape[1]
            if i < 2:
                np.testing.assert_array_equal(got, ref.dense)
        ranker = raw.post(http_sidecar.base + "/rerank", headers=headers,
                          content=json.dumps({"query": "q", "texts": ["a", "b"]}).encode())
        assert ranker.status_code == 424 and "MEE_RERANKER_MODEL" in ranker.json()["error"]


# ------------------------------------------------------------------ errors, in each dialect's shape


@pytest.mark.parametrize(("body", "status", "error_type", "says"), [
    ({"inputs": []}, 400, "Empty", "cannot be empty"),
    ({"inputs": ["x"] * 41}, 413, "Validation", "maximum allowed batch size 40"),
    ({"inputs": "long " * 600, "truncate": False}, 413, "Validation", "must have less than 512 tokens"),
    ({"inputs": 5}, 422, "Validation", "must be a string or a list of strings"),
    ({"inputs": ["ok", 3.5]}, 422, "Validation", "`inputs[1]` must be a string"),
    ({"inputs": [101, 102]}, 422, "Validation", "token ids"),
    ({"inputs": "x", "truncate": "yes"}, 422, "Validation", "`truncate` must be true or false"),
    ({"inputs": "x", "truncation_direction": "Up"}, 422, "Validation", "Left"),
    ({"inputs": "x", "dimensions": 0}, 422, "Validation", "should be positive"),
    ({"inputs": "x", "dimensions": -3}, 422, "Validation", "should be positive"),
    ({"inputs": "x", "dimensions": 10_000}, 422, "Validation", "larger than the model's dimension"),
    ({"inputs": "x", "normalize": False}, 422, "Validation", "normalize"),
    ({"inputs": "x", "prompt_name": "query"}, 422, "Validation", "no named prompts"),
    ({"texts": ["x"]}, 422, "Validation", "`inputs` is required"),
])
def test_tei_errors(http, body, status, error_type, says):
    r = http.post("/embed", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "error_type"}
    assert r.json()["error_type"] == error_type and says in r.json()["error"]


def test_long_text_is_truncated_unless_truncate_is_false(http, grpc_ref):
    text = "long " * 600
    assert http.post("/embed", json={"inputs": text}).status_code == 200  # auto-truncate, as gRPC does
    right = f32(http.post("/embed", json={"inputs": text, "truncate": True}).json())
    np.testing.assert_array_equal(right, grpc_ref.embed([text], sparse=False).dense)
    mixed = "début " * 10 + "long " * 600 + "fin de texte"
    left = http.post("/embed", json={"inputs": mixed, "truncate": True, "truncation_direction": "Left"})
    assert left.status_code == 200
    assert not np.array_equal(f32(left.json()), f32(http.post("/embed", json={"inputs": mixed}).json()))


def test_left_truncation_keeps_the_tail_tokens(tiny_encoder):
    tok = tiny_encoder.plain_tokenizer()
    text = "Zu Beginn steht ein Satz. " + "vector search engines " * 80 + "and the very last words"
    enc = tok.encode(text)
    for limit in (16, 64, 200):
        kept = _keep_tail(text, enc, limit)
        ids = tok.encode(kept).ids
        assert len(ids) <= limit
        assert ids[1:-1] == enc.ids[-1 - len(ids[1:-1]):-1]  # exactly the last tokens of the full text
        assert len(ids) >= limit - 4  # cut at a word start: at most a word's pieces are dropped


@pytest.mark.parametrize(("body", "status", "param", "says"), [
    ({"input": []}, 400, None, "cannot be empty"),
    ({"input": ["x"] * 41}, 400, None, "maximum allowed batch size 40"),
    ({"input": ""}, 400, "input", "empty string"),
    ({"input": [[1, 2, 3]]}, 400, "input", "check_embedding_ctx_length=False"),
    ({"input": {"text": "x"}}, 400, "input", "must be a string or a list of strings"),
    ({"input": "x", "dimensions": 0}, 400, "dimensions", "should be positive"),
    ({"input": "x", "dimensions": 10_000}, 400, "dimensions", "larger than the model's dimension"),
    ({"input": "x", "dimensions": "8"}, 400, "dimensions", "must be an integer"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format", "float"),
    ({}, 400, "input", "`input` is required"),
])
def test_openai_errors(http, body, status, param, says):
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and says in err["message"]


def test_bodies_that_are_not_json_objects(http):
    for content, dialect in ((b"{not json", "/embed"), (b"[1, 2]", "/embed"), (b"", "/v1/embeddings")):
        r = http.post(dialect, content=content, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422), r.text
        assert "JSON" in r.text or "empty" in r.text
    big = json.dumps({"inputs": ["x" * 1000] * 2000}).encode()  # > max_message_bytes (1 MiB)
    r = http.post("/embed", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation" and "max_message_bytes" in r.json()["error"]
    r = http.post("/v1/embeddings", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "max_message_bytes" in r.json()["error"]["message"]


# ------------------------------------------------------------------ auth, limits, deadlines, cancellation


def test_api_keys_guard_every_route_but_health(http_sidecar):
    with httpx.Client(base_url=http_sidecar.base, timeout=10) as anon:
        assert anon.get("/health").status_code == 200 and anon.get("/").status_code == 200
        r = anon.post("/embed", json={"inputs": "x"})
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]
        r = anon.post("/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer wrong-key"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert anon.get("/info").status_code == 401 and anon.get("/v1/models").status_code == 401


def test_concurrency_limit_is_shared_with_grpc(http, http_sidecar):
    sc = http_sidecar.sc
    held = sc.settings.max_concurrent
    http_sidecar.call(_bump(sc, held))  # as if gRPC calls filled every slot
    try:
        r = http.post("/embed", json={"inputs": "x"})
        assert r.status_code == 429 and r.json()["error_type"] == "Overloaded" and "max_concurrent" in r.json()["error"]
        r = http.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    finally:
        http_sidecar.call(_bump(sc, -held))
    assert http.post("/embed", json={"inputs": "x"}).status_code == 200


async def _bump(sc, n: int) -> None:
    sc._in_flight += n


def test_deadline_and_disconnect_leave_the_queue(http, http_sidecar, gate_encoder):
    sc = http_sidecar.sc
    gate_encoder.gate.clear()
    gate_encoder.started.clear()
    try:
        busy = threading.Thread(target=lambda: http.post("/embed", json={"inputs": "holds the encoder"}))
        busy.start()
        assert gate_encoder.started.wait(10)
        r = http.post("/embed", json={"inputs": "waits"}, headers={"X-Request-Timeout": "0.3"})
        assert r.status_code == 504 and r.json()["error_type"] == "Backend" and "deadline" in r.json()["error"]
        assert http.post("/embed", json={"inputs": "x"}, headers={"X-Request-Timeout": "soon"}).status_code == 422
        with pytest.raises(httpx.TimeoutException):  # the client gives up: the server drops the queued work
            httpx.post(http_sidecar.base + "/embed", json={"inputs": ["gone1", "gone2"]}, headers=AUTH, timeout=0.5)
        deadline = time.monotonic() + 5
        while sc.rt.batcher.queued_texts and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sc.rt.batcher.queued_texts == 0
    finally:
        gate_encoder.gate.set()
    busy.join(20)
    assert http.post("/embed", json={"inputs": "after"}).status_code == 200


def test_metrics_and_health(http, http_sidecar):
    http.post("/embed", json={"inputs": "counted"})
    http.post("/embed", json={"inputs": []})
    registry = http_sidecar.sc.metrics.registry
    assert registry.get_sample_value("mee_requests_total", {"rpc": "http:/embed", "code": "OK"}) >= 1
    assert registry.get_sample_value("mee_requests_total", {"rpc": "http:/embed", "code": "INVALID_ARGUMENT"}) >= 1
    info = http.get("/info").json()
    assert info["max_input_length"] == 512 and info["max_client_batch_size"] == 40 and info["auto_truncate"] is True
    assert info["model_type"] == {"embedding": {"pooling": "cls"}} and info["dense_dim"] > 0
    models = http.get("/v1/models").json()
    assert models["data"][0]["id"] == info["model_id"]
    face = http_sidecar.sc._http
    face.guard.stopping = True
    try:
        r = httpx.get(http_sidecar.base + "/health", timeout=5)
        assert r.status_code == 503 and r.json()["error_type"] == "Unhealthy"
    finally:
        face.guard.stopping = False


def test_tokenize(http, tiny_encoder):
    text = "héllo wörld, 向量"
    rows = http.post("/tokenize", json={"inputs": [text, "abc"]}).json()
    assert [t["id"] for t in rows[0]] == tiny_encoder.tokenize([text])[0]
    raw = text.encode()
    for t in rows[0]:
        if t["special"]:
            assert t["start"] is None and t["stop"] is None
        else:
            assert raw[t["start"]:t["stop"]].decode() == t["text"]
    plain = http.post("/tokenize", json={"inputs": "abc", "add_special_tokens": False}).json()
    assert not any(t["special"] for t in plain[0])


# ------------------------------------------------------------------ /rerank against the Reranker protocol


class FakeScorer:
    """Scores by shared words with the query (deterministic), records the normalize flag."""

    def __init__(self, is_async: bool = False) -> None:
        self.is_async = is_async
        self.calls: list[tuple[str, list[str], bool]] = []

    def _score(self, query: str, passages, normalize: bool) -> list[float]:
        self.calls.append((query, list(passages), normalize))
        q = set(query.split())
        raw = [float(len(q & set(p.split()))) - 0.5 for p in passages]
        return [1 / (1 + np.exp(-r)) for r in raw] if normalize else raw

    def rerank(self, query, passages, normalize):
        if not self.is_async:
            return self._score(query, passages, normalize)

        async def later():
            await asyncio.sleep(0)
            return self._score(query, passages, normalize)

        return later()


@pytest.mark.parametrize("is_async", [False, True])
def test_rerank_route_with_a_scorer(http, http_sidecar, is_async):
    scorer = FakeScorer(is_async)
    core = http_sidecar.sc._http.core
    runtime_reranker = core._reranker  # the sidecar's own (none: it carries no reranker)
    core._reranker = lambda: scorer
    try:
        texts = ["nothing here", "vector search in milvus", "milvus"]
        r = http.post("/rerank", json={"query": "milvus vector search", "texts": texts, "return_text": True})
        assert r.status_code == 200, r.text
        ranks = r.json()
        assert [x["index"] for x in ranks] == [1, 2, 0]
        assert [x["text"] for x in ranks] == [texts[1], texts[2], texts[0]]
        assert all(0 < x["score"] < 1 for x in ranks) and scorer.calls[-1][2] is True
        raw = http.post("/rerank", json={"query": "milvus", "texts": texts, "raw_scores": True}).json()
        assert scorer.calls[-1][2] is False and "text" not in raw[0] and raw[0]["score"] == 0.5
        assert http.post("/rerank", json={"query": "q", "texts": []}).json()["error_type"] == "Empty"
        assert http.post("/rerank", json={"query": 1, "texts": ["a"]}).status_code == 422
        assert http.get("/info").json()["reranker"] is True
    finally:
        core._reranker = runtime_reranker
    r = http.post("/rerank", json={"query": "q", "texts": ["a"]})
    assert r.status_code == 424 and r.json() == {
        "error": "no reranker configured: set MEE_RERANKER_MODEL to a cross-encoder checkpoint to serve /rerank",
        "error_type": "Backend"}


# ------------------------------------------------------------------ settings, start-up, TLS


def test_http_off_and_busy_port(tiny_encoder):
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.errors import InvalidArgument
    from milvus_embed_ext.service.httpapi import face
    from tests.service.conftest import ThreadedSidecar

    side = ThreadedSidecar(tiny_encoder, http_listen="")
    try:
        assert side.sc.http_port == 0 and side.sc._http is None
    finally:
        side.close()
    with face.bind("127.0.0.1:0") as taken, pytest.raises(InvalidArgument, match="MEE_HTTP_LISTEN"):
        # no Nagle: otherwise every JSON response waits ~40 ms for the client's delayed ACK
        assert taken.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        taken.listen()
        face.bind(f"127.0.0.1:{taken.getsockname()[1]}").close()
    assert load_settings(env={"MEE_HTTP_LISTEN": ""}).http_listen == ""
    assert load_settings(env={}).http_listen == "127.0.0.1:8080"
    with pytest.raises(InvalidArgument, match="own port"):
        load_settings(env={}, overrides={"listen": "127.0.0.1:9000", "http_listen": "127.0.0.1:9000"})


def test_https_and_mutual_tls(tiny_encoder, tmp_path):
    make_pki(tmp_path)
    from tests.service.conftest import ThreadedSidecar

    side = ThreadedSidecar(tiny_encoder, tls_cert=str(tmp_path / "server.pem"), tls_key=str(tmp_path / "server.key"),
                           tls_client_ca=str(tmp_path / "ca.pem"))
    url = f"https://127.0.0.1:{side.sc.http_port}/embed"
    try:
        import ssl

        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        r = httpx.post(url, json={"inputs": "over mutual TLS"}, verify=ctx, timeout=10)
        assert r.status_code == 200
        np.testing.assert_allclose(f32(r.json()), tiny_encoder.encode(["over mutual TLS"]).dense, atol=1e-5)
        no_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with pytest.raises(httpx.HTTPError):
            httpx.post(url, json={"inputs": "no client cert"}, verify=no_cert, timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.post(url.replace("https", "http"), json={"inputs": "plaintext"}, timeout=5)
    finally:
        side.close()
