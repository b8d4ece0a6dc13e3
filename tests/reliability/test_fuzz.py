"""Fuzzing every RPC of a real sidecar with hypothesis, as raw protobuf bytes sent through a generic channel.

Requests are built at the wire level (so they can hold what no protobuf library would serialise: lone surrogates,
invalid UTF-8, wrong wire types, unknown fields, truncated bytes), from a schema of each request message, mixed
with realistic values (existing collections and ids, valid filters) so that the deep paths run too. Each RPC has an
allowed set of status codes; INTERNAL and UNKNOWN are never allowed, and the server must stay up and keep serving.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milvus_embed_ext.wire._generated import embedder_pb2
from tests.reliability.rel_helpers import MAX_MESSAGE, MAX_TEXTS, record

E = grpc.StatusCode
OK = "OK"
DOC_RPCS = frozenset({OK, E.INVALID_ARGUMENT.name, E.NOT_FOUND.name, E.RESOURCE_EXHAUSTED.name})
ALLOWED: dict[str, frozenset[str]] = {
    "/milvus_embed_ext.v1.Embedder/Embed": frozenset({OK, E.INVALID_ARGUMENT.name, E.RESOURCE_EXHAUSTED.name}),
    "/milvus_embed_ext.v1.Embedder/Rerank": frozenset({OK, E.INVALID_ARGUMENT.name, E.RESOURCE_EXHAUSTED.name}),
    "/milvus_embed_ext.v1.Documents/Upsert": DOC_RPCS,
    "/milvus_embed_ext.v1.Documents/UpsertStream": DOC_RPCS,
    "/milvus_embed_ext.v1.Documents/Get": DOC_RPCS,
    "/milvus_embed_ext.v1.Documents/Delete": DOC_RPCS,
    "/milvus_embed_ext.v1.Search/HybridSearch": DOC_RPCS,
}

# ------------------------------------------------------------------ protobuf wire encoding


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(no: int, wire: int) -> bytes:
    return varint((no << 3) | wire)


def length_delimited(no: int, payload: bytes) -> bytes:
    return tag(no, 2) + varint(len(payload)) + payload


# ------------------------------------------------------------------ nasty values

surrogates = st.characters(categories=["Cs"])
controls = st.characters(categories=["Cc", "Cf", "Zl", "Zp"])
anything = st.characters(codec=None, categories=None, exclude_categories=())
nasty_text = st.text(st.one_of(anything, surrogates, controls, st.sampled_from("'\"\\[]{}()%*&|!=<>$\n\t\x00")),
                     max_size=40)


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


REALISTIC = {
    "collection": ["", "", "documents", "no_such_collection", "Bad-Name!"],  # tenants belong to test_security
    "id": ["a-00001", "fuzz-1", "fuzz-2", "fuzz-3", "émigré-東京", "x" * 600],
    "filter": ['metadata["n"] > 3', 'id in ["a-00001"]', 'metadata["tenant"] == "a"', "", "metadata[[[",
               'text like "river%"'],
    "text": ["river mountain", "émigré 東京 🚀", ""],
    "metadata": ['{"lang": "en"}', "", '{"n": 3}', "[1, 2]", "{", '{"a": {"b": [1, {"c": null}]}}', "null"],
    "field": ["text", "metadata", "dense", ""],
}


@st.composite
def string_bytes(draw: Any, kind: str, nasty: bool) -> bytes:
    """A string field's payload: realistic or any valid unicode (controls included); when ``nasty`` also lone
    surrogates, invalid UTF-8 and huge values."""
    choice = draw(st.integers(0, 9 if nasty else 5))
    if choice <= 3:
        return _utf8(draw(st.sampled_from(REALISTIC.get(kind, REALISTIC["text"]))))
    if choice <= 5:
        return _utf8(draw(st.text(max_size=30)))
    if choice <= 7:
        return _utf8(draw(nasty_text))
    if choice == 8:
        return draw(st.binary(max_size=24))
    size = draw(st.sampled_from([0, 1, 5000, 70_000, MAX_MESSAGE + 1024]))
    return _utf8(draw(st.sampled_from(["x", "é", "🚀", " "]))) * size


ints = st.one_of(st.integers(0, 20), st.sampled_from([0, 1, 4, 9, 64, 65, 256, 512, 513, 2**31 - 1, 2**32 - 1]),
                 st.integers(0, 2**64 - 1))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -1.0, 1e38]))

# clean-mode integers per kind: enums mostly valid (largest valid value given), dims, counts
CLEAN_INTS = {
    "enum2": st.integers(0, 2), "enum3": st.integers(1, 3), "enum4": st.integers(0, 4), "dim": st.sampled_from([8, 16, 32, 64]),
    "count": st.sampled_from([0, 1, 3, 10, 50]), "int": st.integers(0, 4),
}
# field number -> (kind, repeated); kinds: str:<realistic key>, int kinds above, bool, float, or a nested schema
DOCUMENT = {1: ("str:id", False), 2: ("str:text", False), 3: ("str:metadata", False)}
SCHEMAS: dict[str, dict[int, tuple[Any, bool]]] = {
    "/milvus_embed_ext.v1.Embedder/Embed": {1: ("str:text", True), 2: ("enum3", True), 3: ("dim", True),
                                            4: ("enum2", False), 5: ("count", False)},
    "/milvus_embed_ext.v1.Embedder/Rerank": {1: ("str:text", False), 2: ("str:text", True), 3: ("bool", False)},
    "/milvus_embed_ext.v1.Documents/Upsert": {1: ("str:collection", False), 2: (DOCUMENT, True)},
    "/milvus_embed_ext.v1.Documents/Get": {1: ("str:collection", False), 2: ("str:id", True),
                                           3: ("str:field", True), 4: ("bool", False), 5: ("bool", False),
                                           6: ("enum2", False)},
    "/milvus_embed_ext.v1.Documents/Delete": {1: ("str:collection", False), 2: ("str:id", True)},
    "/milvus_embed_ext.v1.Search/HybridSearch": {
        1: ("str:text", False), 2: ("str:collection", False),
        3: ({1: ("enum4", True), 2: ("count", False), 3: ("dim", False), 4: ("enum3", True), 5: ("bool", False),
             6: ("enum3", True)}, False),
        4: ({1: ("enum4", False), 2: ({1: ("float", False), 2: ("float", False), 3: ("float", False)}, False),
             3: ("count", False), 4: ("enum3", False)}, False),
        5: ("str:filter", False), 6: ("count", False), 7: ("count", False), 8: ("str:field", True),
        9: ({1: ("bool", False), 2: ("count", False), 3: ("enum2", False), 4: ("float", False)}, False)},
}
SCHEMAS["/milvus_embed_ext.v1.Documents/UpsertStream"] = SCHEMAS["/milvus_embed_ext.v1.Documents/Upsert"]


@st.composite
def wrong_wire(draw: Any, no: int) -> bytes:
    """A field with the wrong wire type, an unknown number, or a truncated length."""
    wire = draw(st.sampled_from([0, 1, 2, 5, 3, 4]))
    if wire == 0:
        return tag(no, 0) + varint(draw(ints))
    if wire == 1:
        return tag(no, 1) + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return tag(no, 5) + draw(st.binary(min_size=4, max_size=4))
    if wire == 2:
        payload = draw(st.binary(max_size=16))
        return tag(no, 2) + varint(len(payload) + draw(st.integers(0, 3))) + payload  # maybe a lie
    return tag(no, wire)  # groups: start/end without a partner


@st.composite
def message(draw: Any, schema: dict[int, tuple[Any, bool]], nasty: bool | None = None) -> bytes:
    """Fields of ``schema``; ``nasty`` messages (a third) also get wrong wire types, unknown fields, truncation."""
    if nasty is None:
        nasty = draw(st.integers(0, 2)) == 0
    out = b""
    for no, (kind, repeated) in schema.items():
        if draw(st.integers(0, 3)) == 0:  # each field present three times in four
            continue
        n = draw(st.sampled_from([1, 1, 1, 2, 3, MAX_TEXTS + 1] if nasty else [1, 1, 2, 3])) if repeated else 1
        for _ in range(n):
            if nasty and draw(st.integers(0, 9)) == 0:
                out += draw(wrong_wire(no))
            elif isinstance(kind, dict):
                out += length_delimited(no, draw(message(kind, nasty)))
            elif kind.startswith("str"):
                out += length_delimited(no, draw(string_bytes(kind.partition(":")[2], nasty)))
            elif kind == "float":
                out += tag(no, 5) + struct.pack("<f", draw(floats))
            elif kind == "bool":
                out += tag(no, 0) + varint(draw(st.sampled_from([0, 1, 2, 2**63])))
            elif repeated and draw(st.booleans()):  # packed repeated varints
                values = ints if nasty else CLEAN_INTS[kind]
                out += length_delimited(no, b"".join(varint(draw(values)) for _ in range(draw(st.integers(0, 3)))))
            else:
                out += tag(no, 0) + varint(draw(ints if nasty else CLEAN_INTS[kind]))
    if nasty and draw(st.booleans()):
        out += draw(wrong_wire(draw(st.integers(1, 40))))
    if nasty and draw(st.integers(0, 4)) == 0 and out:
        out = out[: draw(st.integers(0, len(out) - 1))]  # truncated mid-field
    return out


def request_bytes(method: str) -> st.SearchStrategy[bytes]:
    return st.integers(0, 9).flatmap(lambda k: st.binary(max_size=64) if k == 0 else message(SCHEMAS[method]))


# ------------------------------------------------------------------ the test

FAST_EXAMPLES = int(os.environ.get("MEE_FUZZ_EXAMPLES", "60"))
SLOW_EXAMPLES = int(os.environ.get("MEE_FUZZ_SLOW_EXAMPLES", "600"))


def _call(channel: grpc.Channel, method: str, payload: Any, metadata: Any) -> str:
    try:
        if method.endswith("UpsertStream"):
            channel.stream_unary(method)(iter(payload), metadata=metadata, timeout=60)
        else:
            channel.unary_unary(method)(payload, metadata=metadata, timeout=60)
    except grpc.RpcError as err:
        return err.code().name
    return OK


def _fuzz(sidecar: Any, method: str, examples: int, label: str) -> None:
    seen: Counter[str] = Counter()
    bad: list[tuple[str, bytes]] = []
    md = sidecar.metadata()
    strategy = st.lists(request_bytes(method), max_size=3) if method.endswith("UpsertStream") else request_bytes(method)

    with sidecar.channel() as ch:
        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(payload=strategy)
        def run(payload: Any) -> None:
            code = _call(ch, method, payload, md)
            seen[code] += 1
            if code not in ALLOWED[method]:
                bad.append((code, payload if isinstance(payload, bytes) else b"|".join(payload)))
            assert sidecar.proc.poll() is None, f"the server died on {payload[:200]!r}:\n{sidecar.log()[-3000:]}"

        run()
        # still serving after the abuse: health and a real call
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reply = embedder_pb2.EmbedResponse.FromString(ch.unary_unary("/milvus_embed_ext.v1.Embedder/Embed")(
            embedder_pb2.EmbedRequest(texts=["still serving"]).SerializeToString(), metadata=md, timeout=60))
        assert list(reply.token_counts)
    record(f"fuzz {label} {method.rsplit('/', 1)[1]}", cases=sum(seen.values()), codes=dict(seen))
    assert not bad, f"codes outside {sorted(ALLOWED[method])}: " + "; ".join(f"{c} for {p[:160]!r}" for c, p in bad[:5])


@pytest.mark.parametrize("method", sorted(ALLOWED))
def test_fuzz_every_rpc(sidecar, method: str) -> None:
    _fuzz(sidecar, method, FAST_EXAMPLES, "fast")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(ALLOWED))
def test_fuzz_every_rpc_thoroughly(sidecar, method: str) -> None:
    _fuzz(sidecar, method, SLOW_EXAMPLES, "slow")


def test_server_log_has_no_internal_errors_after_fuzzing(sidecar) -> None:
    """Runs after the fuzzers (file order): no handler failed unexpectedly, even where the client saw a valid code."""
    log = sidecar.log()
    assert '"code": "INTERNAL"' not in log and "internal error in" not in log, log[-3000:]
