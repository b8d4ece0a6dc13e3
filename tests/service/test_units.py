"""Pure pieces of the service: status mapping, auth, wire codec, client request building, proto freshness."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from milvus_embed_ext import errors as e
from milvus_embed_ext.client import build_embed_request, build_search_request, to_document_pb
from milvus_embed_ext.devtools import protogen
from milvus_embed_ext.service.auth import bearer_token, key_matches
from milvus_embed_ext.service.errors import from_rpc_error, to_status
from milvus_embed_ext.service.handlers import plan_overrides
from milvus_embed_ext.wire import codec
from milvus_embed_ext.wire._generated import common_pb2, search_pb2

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("exc", "code"), [
    (e.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (e.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (e.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
    (e.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
    (e.ConsistencyError("x"), grpc.StatusCode.ABORTED),
    (TimeoutError(), grpc.StatusCode.DEADLINE_EXCEEDED),
])
def test_domain_errors_map_to_one_code(exc, code):
    assert to_status(exc)[0] == code


def test_unexpected_errors_are_internal_and_generic(caplog):
    code, message = to_status(KeyError("secret-detail s3cr3tpassword"), rpc="Embed", secrets=["s3cr3tpassword"])
    assert code == grpc.StatusCode.INTERNAL
    assert "secret-detail" not in message and "error_id=" in message
    assert "s3cr3tpassword" not in caplog.text and "secret-detail" in caplog.text


def test_secrets_are_scrubbed_from_domain_messages():
    _, message = to_status(e.Unavailable("cannot reach http://root:hunter22@milvus"), secrets=["hunter22"])
    assert "hunter22" not in message and "***" in message


def test_client_side_reverse_mapping():
    class Err(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.NOT_FOUND

        def details(self):
            return "collection 'x' does not exist"

    out = from_rpc_error(Err())
    assert isinstance(out, e.NotFound) and "collection 'x'" in str(out)


def test_bearer_parsing_and_constant_time_match():
    assert bearer_token([("x", "1"), ("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([]) is None
    assert key_matches("k2", ["k1", "k2"]) and not key_matches("k3", ["k1", "k2"]) and not key_matches(None, ["k1"])
    assert not key_matches("k", ["k1"])


def test_codec_roundtrip_fp32_fp16_and_bad_payload():
    a = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(codec.unpack_matrix(codec.pack_matrix(a)), a)
    half = codec.unpack_matrix(codec.pack_matrix(a, common_pb2.DTYPE_FLOAT16))
    np.testing.assert_allclose(half, a, rtol=2e-3, atol=2e-3)
    assert codec.unpack_sparse(codec.pack_sparse({7: 0.5, 3: 0.25})) == {3: 0.25, 7: 0.5}
    bad = common_pb2.Matrix(shape=[2, 2], dtype=common_pb2.DTYPE_FLOAT32, data=b"\0" * 12)
    with pytest.raises(e.InvalidArgument, match="needs 16"):
        codec.unpack_matrix(bad)
    with pytest.raises(e.InvalidArgument, match="not a known DType"):
        codec.unpack_matrix(common_pb2.Matrix(shape=[1], dtype=9, data=b"\0" * 4))


def test_client_rejects_lone_surrogates_and_bad_documents_before_sending():
    with pytest.raises(e.InvalidArgument, match=r"texts\[1\].*lone surrogate"):
        build_embed_request(["ok", "bad \ud800"], dense=True, sparse=False, colbert=False, truncate_dims=(),
                            fp16=False, max_length=None)
    with pytest.raises(e.InvalidArgument, match="no id"):
        to_document_pb({"text": "x"}, "documents[0]")
    with pytest.raises(e.InvalidArgument, match="unknown key"):
        to_document_pb({"id": "a", "text": "x", "meta": {}}, "documents[0]")
    assert to_document_pb({"id": "a", "text": "x", "metadata": {"n": 1}}, "d").metadata_json == '{"n": 1}'


def test_search_options_become_plan_overrides():
    req = build_search_request(
        "q", collection="", top_k=5, offset=0, filter="", output_fields=["text"], candidates=["sparse", "dense_truncated"],
        rescore=["dense", "colbert"], candidate_k=50, truncate_dim=None, allow_partial=True, fusion="rrf",
        weights={"sparse": 0.0}, rrf_k=10, normalization=None)
    assert plan_overrides(req) == {
        "routes": ("sparse", "dense_truncated"), "representations": ("dense", "colbert"), "depth": 50,
        "allow_partial": True, "fusion": "rrf", "rrf_k": 10.0, "weights": {"sparse": 0.0}}
    assert plan_overrides(search_pb2.HybridSearchRequest(query="q")) == {}
    bad = search_pb2.HybridSearchRequest(query="q")
    bad.plan.candidates.append(search_pb2.REPRESENTATION_COLBERT)
    with pytest.raises(e.InvalidArgument, match="ColBERT only re-scores"):
        plan_overrides(bad)
    bad = search_pb2.HybridSearchRequest(query="q")
    bad.fusion.method = 42
    with pytest.raises(e.InvalidArgument, match="fusion.method=42"):
        plan_overrides(bad)


def test_committed_stubs_are_fresh():
    proc = subprocess.run([sys.executable, "-m", "milvus_embed_ext.devtools.protogen", "--check"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_check_detects_a_proto_edit(tmp_path):
    proto_root = tmp_path / "proto"
    shutil.copytree(REPO / "proto", proto_root)
    target = proto_root / "milvus_embed_ext" / "v1" / "common.proto"
    target.write_text(target.read_text().replace("double total_ms = 3;", "double total_ms = 3;\n  double extra_ms = 5;"))
    problems = protogen.check(protogen.GENERATED_DIR, proto_root)
    assert any("differs: " in p and "common_pb2.py" in p for p in problems)
    out = tmp_path / "gen"
    protogen.generate(out, proto_root)
    assert protogen.check(out, proto_root) == []
    (out / "stray_pb2.py").write_text("")
    assert any("stale file" in p for p in protogen.check(out, proto_root))


@pytest.mark.parametrize("top_k", [-1, 0, True, 2.5])
def test_client_refuses_bad_top_k_naming_it(top_k):
    with pytest.raises(e.InvalidArgument, match="top_k"):
        build_search_request("q", collection="", top_k=top_k, offset=0, filter="", output_fields=(), candidates=None,
                             rescore=None, candidate_k=None, truncate_dim=None, allow_partial=False, fusion=None,
                             weights=None, rrf_k=None, normalization=None)


def test_client_refuses_negative_offset_naming_it():
    with pytest.raises(e.InvalidArgument, match="offset must be at least 0, got -3"):
        build_search_request("q", collection="", top_k=3, offset=-3, filter="", output_fields=(), candidates=None,
                             rescore=None, candidate_k=None, truncate_dim=None, allow_partial=False, fusion=None,
                             weights=None, rrf_k=None, normalization=None)


def test_json_objects_are_parsed_one_way_with_where_and_fix() -> None:
    from milvus_embed_ext.service.validation import parse_json_object, parse_metadata

    with pytest.raises(e.InvalidArgument, match=r"docs.jsonl:3 is not valid JSON \(.* at position 1\); write one"):
        parse_json_object("{x", "docs.jsonl:3", fix="write one document object per line")
    with pytest.raises(e.InvalidArgument, match=r"metadata_json must be a JSON object like .*, got list"):
        parse_metadata("[1]", "metadata_json")
    assert parse_metadata("", "m") is None and parse_metadata('{"a": 1}', "m") == {"a": 1}
