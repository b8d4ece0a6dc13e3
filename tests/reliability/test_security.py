"""Security: API keys on every RPC (health open, reflection guarded), TLS and mutual TLS with certificates made
here, secrets never in logs or error messages, and filters/collection names that cannot reach other data."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from milvus_embed_ext.wire._generated import documents_pb2, embedder_pb2, search_pb2
from tests._fakes import NullStore
from tests._pki import make_pki
from tests.reliability.rel_helpers import KEYS, MILVUS_TOKEN, TENANT_A, TENANT_B, record

E = grpc.StatusCode
GOOD = {
    "/milvus_embed_ext.v1.Embedder/Embed": embedder_pb2.EmbedRequest(texts=["hello"]),
    "/milvus_embed_ext.v1.Embedder/Rerank": embedder_pb2.RerankRequest(query="hello", passages=["hi", "bye"]),
    "/milvus_embed_ext.v1.Documents/Upsert": documents_pb2.UpsertRequest(
        collection="no_such_collection", documents=[documents_pb2.Document(id="k", text="t")]),
    "/milvus_embed_ext.v1.Documents/UpsertStream": documents_pb2.UpsertRequest(
        collection="no_such_collection", documents=[documents_pb2.Document(id="k", text="t")]),
    "/milvus_embed_ext.v1.Documents/Get": documents_pb2.GetRequest(collection=TENANT_A, ids=["a-00001"]),
    "/milvus_embed_ext.v1.Documents/Delete": documents_pb2.DeleteRequest(collection="no_such_collection", ids=["x"]),
    "/milvus_embed_ext.v1.Search/HybridSearch": search_pb2.HybridSearchRequest(query="river", collection=TENANT_A),
}
BAD_HEADERS: list[tuple[tuple[str, str], ...]] = [
    (),
    (("authorization", "Bearer wrong-key"),),
    (("authorization", f"Basic {KEYS[0]}"),),
    (("authorization", KEYS[0]),),
    (("authorization", f"Bearer {KEYS[0]}x"),),
    (("authorization", f"Bearer {KEYS[0][:-1]}"),),
    (("authorization", f"Bearer {KEYS[0]},{KEYS[1]}"),),
    (("authorization", "Bearer "),),
    (("x-api-key", KEYS[0]),),
    (("authorization", "Bearer wrong-key"), ("authorization", f"Bearer {KEYS[0]}")),
]


def _code(fn: Any) -> tuple[str, str]:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


def _call(ch: grpc.Channel, method: str, request: Any, metadata: Any, timeout: float = 30) -> tuple[str, str]:
    raw = request.SerializeToString()
    if method.endswith("UpsertStream"):
        return _code(lambda: ch.stream_unary(method)(iter([raw]), metadata=metadata, timeout=timeout))
    return _code(lambda: ch.unary_unary(method)(raw, metadata=metadata, timeout=timeout))


# ------------------------------------------------------------------ API keys


def test_every_rpc_and_reflection_demand_a_key_health_does_not(sidecar) -> None:
    tried = 0
    with sidecar.channel() as ch:
        for method, request in GOOD.items():
            for headers in BAD_HEADERS:
                code, details = _call(ch, method, request, headers)
                tried += 1
                assert code == "UNAUTHENTICATED", (method, headers, code, details)
                assert KEYS[0] not in details and KEYS[1] not in details
            for key in KEYS:  # either key passes the guard (what follows is the RPC's own answer)
                code, _ = _call(ch, method, request, (("authorization", f"Bearer {key}"),))
                assert code != "UNAUTHENTICATED", (method, code)
            code, _ = _call(ch, method, request, (("authorization", f"bearer   {KEYS[1]}  "),))
            assert code != "UNAUTHENTICATED", "the scheme is case-insensitive and surrounding blanks are ignored"
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        for headers in BAD_HEADERS:
            code, _ = _code(lambda h=headers: list(reflection.ServerReflectionInfo(iter([req]), metadata=h, timeout=10)))
            tried += 1
            assert code == "UNAUTHENTICATED"
        (resp,) = list(reflection.ServerReflectionInfo(iter([req]), metadata=sidecar.metadata(), timeout=10))
        assert resp.list_services_response.service
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "milvus_embed_ext.v1.Search"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
        # a method that does not exist says so without a key, and reveals nothing else
        code, details = _call(ch, "/milvus_embed_ext.v1.Embedder/Nope", GOOD["/milvus_embed_ext.v1.Embedder/Embed"], ())
        assert code == "UNIMPLEMENTED" and "key" not in details.lower()
    record("auth", rejected_calls=tried, methods=len(GOOD) + 1)


# ------------------------------------------------------------------ secrets


def test_secrets_never_reach_logs_or_error_messages(sidecar) -> None:
    """Provoke every error path with the keys inside requests too; then search the DEBUG log and every message."""
    secrets = (*KEYS, MILVUS_TOKEN, MILVUS_TOKEN.split(":", 1)[1])
    md = sidecar.metadata()
    details: list[str] = []
    with sidecar.channel() as ch:
        requests = [
            ("/milvus_embed_ext.v1.Search/HybridSearch", search_pb2.HybridSearchRequest(
                query="q", collection=TENANT_A, filter=f'metadata["k"] == "{KEYS[0]}" &&& {KEYS[1]}')),
            ("/milvus_embed_ext.v1.Search/HybridSearch", search_pb2.HybridSearchRequest(
                query="q", collection=f"x{KEYS[1]}".replace("-", "_"))),
            ("/milvus_embed_ext.v1.Search/HybridSearch", search_pb2.HybridSearchRequest(
                query="q", collection=TENANT_A, filter=f'{MILVUS_TOKEN} == "{MILVUS_TOKEN}"')),
            ("/milvus_embed_ext.v1.Documents/Get", documents_pb2.GetRequest(collection=TENANT_A, ids=[KEYS[0]])),
            ("/milvus_embed_ext.v1.Documents/Upsert", documents_pb2.UpsertRequest(
                documents=[documents_pb2.Document(id=KEYS[0], text="t", metadata_json=f"{{{KEYS[1]}")])),
            ("/milvus_embed_ext.v1.Embedder/Embed", embedder_pb2.EmbedRequest(texts=[KEYS[0]], outputs=[99])),
        ]
        for method, request in requests:
            code, text = _call(ch, method, request, md)
            assert code in {"INVALID_ARGUMENT", "NOT_FOUND"}, (method, code, text)
            details.append(text)
        for headers in BAD_HEADERS:
            details.append(_call(ch, "/milvus_embed_ext.v1.Embedder/Embed", GOOD["/milvus_embed_ext.v1.Embedder/Embed"],
                                 headers)[1])
    log = sidecar.log()
    assert '"level": "DEBUG"' in log or "DEBUG" in log, "the sidecar runs at DEBUG here, the most verbose level"
    for secret in secrets:
        assert secret not in log, f"a secret reached the server log (stderr): …{secret[-4:]}"
        for text in details:
            assert secret not in text, f"a secret reached an error message: {text!r}"
    record("secrets", log_bytes=len(log.encode()), error_messages=len(details), secrets_checked=len(secrets))


# ------------------------------------------------------------------ filters and collection names

A_IDS = {f"a-{i:05d}" for i in range(24)}
INJECTIONS = [
    # other collections, by name or through their fields
    f'{TENANT_B}.id != ""', f'collection == "{TENANT_B}"', 'id in ["b-00001", "b-00002"]',
    'metadata["secret"] == "tenant-b-only"', f'id like "b-%" || {TENANT_B}.id like "%"',
    'doc_id != ""', 'key like "%"', 'version > ""', 'data != ""', 'chunk >= 0', 'n_tokens > 0',
    'scope != ""', 'kind == "lock"', 'dim > 0', 'placeholder != []',
    # fields of this collection it was not given (internal bookkeeping and vectors)
    'colbert_version != ""', 'colbert_rows > 0', 'colbert_version like "%"', 'dense != []', 'dense_256 != []',
    'sparse != {}', 'array_length(dense) > 0', '$meta["x"] == 1', 'id != "" || colbert_rows >= 0',
    # expression tricks
    'id != "" || true', '1 == 1', 'true', '") || ("', '" || id != "', 'metadata["n"] >= 0) || (1 == 1',
    'metadata["n"] >= 0; drop collection tenant_b', 'metadata["n"] >= 0 -- comment', '/* */ id != ""',
    'metadata["\\" || id != \\""] == 1', 'metadata["n"] in [1, 2] or not (id == "x")', '{tenant} == 1',
    'json_contains(metadata["tags"], "x")', 'exists metadata["n"]', 'metadata is not null',
    'text_match(text, "river")', 'random_sample(0.5)', '(' * 200 + 'id != ""' + ')' * 200,
    " || ".join(f'id == "a-{i:05d}"' for i in range(400)), 'id > "" && id < "\U0010ffff"', 'id == "\x00"',
    'metadata["n"] == 1e309', 'metadata["n"] / 0 == 1', 'metadata["n"] % 0 == 1', 'id like "%%%%%%%%%%%"',
]
INTERNAL_COLLECTIONS = [f"{TENANT_A}__colbert", f"{TENANT_A}__pca", "documents__colbert", "mee_migrations",
                        f"{TENANT_B}__colbert"]


def test_filters_cannot_reach_other_collections_or_fields(sidecar) -> None:
    md = sidecar.metadata()
    outcomes: dict[str, int] = {}
    hits_seen = 0
    with sidecar.channel() as ch:
        search = ch.unary_unary("/milvus_embed_ext.v1.Search/HybridSearch")
        for expr in INJECTIONS:
            req = search_pb2.HybridSearchRequest(query="river mountain note", collection=TENANT_A, filter=expr,
                                                 top_k=50, output_fields=["text", "metadata"])
            try:
                resp = search_pb2.HybridSearchResponse.FromString(search(req.SerializeToString(), metadata=md, timeout=60))
            except grpc.RpcError as err:
                assert err.code() == E.INVALID_ARGUMENT, (expr, err.code(), err.details())
                outcomes["INVALID_ARGUMENT"] = outcomes.get("INVALID_ARGUMENT", 0) + 1
                continue
            outcomes["OK"] = outcomes.get("OK", 0) + 1
            for hit in resp.hits:
                hits_seen += 1
                assert hit.id in A_IDS, (expr, hit.id)
                meta = json.loads(hit.metadata_json)
                assert meta["tenant"] == "a" and meta.get("secret") != "tenant-b-only", (expr, meta)
            assert sidecar.proc.poll() is None
    record("filter injection", filters=len(INJECTIONS), outcomes=outcomes, hits_checked=hits_seen)
    assert outcomes.get("OK", 0) >= 5, "the harmless tricks must still run (and return tenant A's documents only)"


@pytest.mark.parametrize("expr", [
    f'{TENANT_B}.id != ""', 'doc_id != ""', 'colbert_version != ""', 'colbert_rows > 0', 'dense != []', 'sparse != {}',
    'metadata != {}', '$meta["x"] == 1', 'random_sample(0.5)', '{tenant} == 1', 'id == "a" || version > ""',
    '1 == 1', 'true', '"id" == "id"',
])
def test_filters_naming_fields_not_given_are_refused_before_milvus(expr: str) -> None:
    from milvus_embed_ext.errors import InvalidArgument
    from milvus_embed_ext.service.validation import check_filter

    with pytest.raises(InvalidArgument, match="filter"):
        check_filter(expr)


@pytest.mark.parametrize("expr", [
    'metadata["lang"] == "en"', 'id in ["a-1", "a-2"] and not (text like "river%")', 'metadata["n"] >= 1e3',
    'json_contains(metadata["tags"], "x")', 'metadata["k"] == "{not a template} colbert_version"',
    'exists metadata["n"]', 'metadata["n"] IN [1, 2] OR id == "it\\"s"', 'array_length(metadata["a"]) > 0',
])
def test_ordinary_filters_pass_the_check(expr: str) -> None:
    from milvus_embed_ext.service.validation import check_filter

    check_filter(expr)


def test_collection_names_cannot_open_internal_collections(sidecar) -> None:
    md = sidecar.metadata()
    refused = 0
    with sidecar.channel() as ch:
        for name in INTERNAL_COLLECTIONS + ["../tenant_b", "tenant_b;", "TENANT_B", "tenant_b ", ""]:
            requests = {
                "/milvus_embed_ext.v1.Search/HybridSearch": search_pb2.HybridSearchRequest(query="x", collection=name),
                "/milvus_embed_ext.v1.Documents/Get": documents_pb2.GetRequest(collection=name, ids=["b-00001"],
                                                                               allow_missing=True),
                "/milvus_embed_ext.v1.Documents/Delete": documents_pb2.DeleteRequest(collection=name, ids=["b-00001"]),
                "/milvus_embed_ext.v1.Documents/Upsert": documents_pb2.UpsertRequest(
                    collection=name, documents=[documents_pb2.Document(id="intruder", text="x")]),
            }
            for method, request in requests.items():
                code, details = _call(ch, method, request, md)
                if name == "":  # the default collection: allowed, and it holds none of tenant B's ids
                    assert code in {"OK", "NOT_FOUND"}, (method, code, details)
                    continue
                assert code in {"NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}, (name, method, code, details)
                refused += 1
        # tenant B is untouched
        got = documents_pb2.GetResponse.FromString(ch.unary_unary("/milvus_embed_ext.v1.Documents/Get")(
            documents_pb2.GetRequest(collection=TENANT_B, ids=["b-00001"]).SerializeToString(), metadata=md, timeout=30))
        assert [d.id for d in got.documents] == ["b-00001"]
    record("internal collection names", refused_calls=refused)


# ------------------------------------------------------------------ TLS and mutual TLS (in-process server, no Milvus)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two CAs (trusted, rogue), a server certificate for localhost/127.0.0.1, a client from each CA."""
    return make_pki(tmp_path_factory.mktemp("pki"), {"server": "ca", "client": "ca", "intruder": "rogue"})


def _embed_code(address: str, creds: grpc.ChannelCredentials | None, key: str | None) -> str:
    ch = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    with ch:
        md = (("authorization", f"Bearer {key}"),) if key else ()
        return _call(ch, "/milvus_embed_ext.v1.Embedder/Embed", GOOD["/milvus_embed_ext.v1.Embedder/Embed"], md,
                     timeout=10)[0]


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_and_mutual_tls_with_api_keys(tiny_encoder, pki: Path, mutual: bool) -> None:
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.service.server import Sidecar

    def creds(ca: str | None = "ca", client: str | None = None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=(pki / f"{ca}.pem").read_bytes() if ca else None,
            private_key=(pki / f"{client}.key").read_bytes() if client else None,
            certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None)

    async def main() -> dict[str, str]:
        overrides = {"listen": "127.0.0.1:0", "http_listen": "", "max_length": 512, "api_keys": KEYS,
                     "tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key")}
        if mutual:
            overrides["tls_client_ca"] = str(pki / "ca.pem")
        sc = Sidecar(load_settings(env={}, overrides=overrides), encoder=tiny_encoder, store=NullStore())
        await sc.start()
        await asyncio.wait_for(sc.ready.wait(), 30)
        address = f"localhost:{sc.port}"
        cases = {
            "trusted client cert + key": (creds(client="client"), KEYS[0]),
            "trusted client cert, no key": (creds(client="client"), None),
            "no client cert + key": (creds(), KEYS[0]),
            "rogue-CA client cert + key": (creds(client="intruder"), KEYS[0]),
            "server not trusted (rogue CA)": (creds(ca="rogue", client="client"), KEYS[0]),
            "plaintext + key": (None, KEYS[0]),
        }
        try:
            return {name: await asyncio.to_thread(_embed_code, address, c, k) for name, (c, k) in cases.items()}
        finally:
            await sc.stop(1)

    got = asyncio.run(main())
    want = {
        "trusted client cert + key": "OK",
        "trusted client cert, no key": "UNAUTHENTICATED",
        "no client cert + key": "UNAVAILABLE" if mutual else "OK",
        "rogue-CA client cert + key": "UNAVAILABLE" if mutual else "OK",
        "server not trusted (rogue CA)": "UNAVAILABLE",
        "plaintext + key": "UNAVAILABLE",
    }
    assert got == want
    record(f"{'mutual ' if mutual else ''}TLS", cases=len(got))


def test_log_lines_of_any_logger_are_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    """The server's log handler scrubs secrets from every line, third-party loggers and tracebacks included."""
    import logging

    from milvus_embed_ext.service.logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    libs = {name: (lg.level, list(lg.handlers), lg.propagate) for name in
            ("urllib3", "filelock", "pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer", "grpc")
            for lg in [logging.getLogger(name)]}
    secret = 'k3y-with-"quote"-and-ü'
    try:
        configure_logging("DEBUG", "json", secrets=(secret, KEYS[0]))
        logging.getLogger("pymilvus.decorators").debug("request filter=%s", f'metadata["k"] == "{KEYS[0]}"')
        try:
            raise ValueError(secret)
        except ValueError:
            logging.getLogger("some.lib").exception("failed with %r", {"token": secret})
        configure_logging("DEBUG", "text", secrets=(secret,))
        logging.getLogger("x").warning("plain %s", secret)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, (level, handlers, propagate) in libs.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
    err = capsys.readouterr().err
    assert err.count("***") >= 4 and "request filter" in err and "plain" in err
    for form in (secret, KEYS[0], json.dumps(secret)[1:-1], repr(secret)[1:-1]):
        assert form not in err
