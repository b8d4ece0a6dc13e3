"""ColBERT codecs: exactness where promised, bounded error elsewhere, chunks that fit a VARCHAR."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from milvus_embed_ext.errors import InvalidArgument
from milvus_embed_ext.store import codecs


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    m = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


@pytest.mark.parametrize("codec", codecs.CODECS)
@pytest.mark.parametrize("dim", [8, 13, 1024])
def test_record_sizes_and_shapes(codec: str, dim: int) -> None:
    m = unit_rows(7, dim)
    data = codecs.encode(m, codec)
    assert len(data) == 7 * codecs.record_size(codec, dim)
    out = codecs.decode(data, codec, dim)
    assert out.shape == (7, dim) and out.dtype == np.float32


def test_fp32_is_exact_and_fp16_is_close() -> None:
    m = unit_rows(20, 64)
    assert np.array_equal(codecs.decode(codecs.encode(m, "fp32"), "fp32", 64), m)
    assert np.abs(codecs.decode(codecs.encode(m, "fp16"), "fp16", 64) - m).max() < 1e-3


def test_int8_error_is_within_half_a_step() -> None:
    m = unit_rows(50, 96, seed=1)
    out = codecs.decode(codecs.encode(m, "int8"), "int8", 96)
    step = np.abs(m).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(out - m) <= step / 2 + 1e-6)


def test_bits_keep_signs_and_mean_magnitude() -> None:
    m = unit_rows(30, 77, seed=2)
    out = codecs.decode(codecs.encode(m, "bits"), "bits", 77)
    assert np.array_equal(np.sign(out), np.where(m >= 0, 1.0, -1.0))
    np.testing.assert_allclose(np.abs(out).mean(axis=1), np.abs(m).mean(axis=1), rtol=1e-3)


def test_zero_vectors_and_empty_matrices() -> None:
    z = np.zeros((2, 16), dtype=np.float32)
    for codec in codecs.CODECS:
        assert np.all(codecs.decode(codecs.encode(z, codec), codec, 16) == 0)
        assert codecs.encode(np.zeros((0, 16)), codec) == b""
        assert codecs.decode(b"", codec, 16).shape == (0, 16)


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_chunks_fit_a_varchar_and_reassemble(codec: str) -> None:
    dim = 1024
    m = unit_rows(700, dim, seed=3)
    chunks = codecs.to_chunks(m, codec)
    per_row = codecs.tokens_per_row(codec, dim)
    assert len(chunks) == -(-700 // per_row)
    assert all(len(c.payload.encode()) <= 65535 for c in chunks)
    assert sum(c.n_tokens for c in chunks) == 700
    whole = codecs.decode(b"".join(base64.b64decode(c.payload) for c in chunks), codec, dim)
    np.testing.assert_array_equal(codecs.from_chunks([c.payload for c in chunks], codec, dim), whole)
    assert codecs.stored_bytes_per_token(codec, dim) >= codecs.record_size(codec, dim)


def test_bad_input_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown ColBERT codec"):
        codecs.encode(unit_rows(2, 8), "pq")
    with pytest.raises(InvalidArgument, match="2-d"):
        codecs.encode(np.zeros(8), "fp16")
    with pytest.raises(ValueError, match="whole number"):
        codecs.decode(b"abc", "fp16", 8)
    with pytest.raises(InvalidArgument, match="does not fit"):
        codecs.tokens_per_row("fp32", 20000)


def test_decode_documents_equals_chunk_by_chunk_decoding():
    rng = np.random.default_rng(3)
    dim = 24
    docs = {f"d{i}": unit_rows(int(n), dim, seed=i) for i, n in enumerate(rng.integers(0, 900, size=12))}
    chunks = {}
    for i, (doc_id, m) in enumerate(docs.items()):
        codec = codecs.CODECS[i % len(codecs.CODECS)]
        chunks[doc_id] = [(codec, c.payload) for c in codecs.to_chunks(m, codec)]
    chunks["mixed"] = ([("fp16", c.payload) for c in codecs.to_chunks(docs["d1"], "fp16")]
                       + [("int8", c.payload) for c in codecs.to_chunks(docs["d2"], "int8")])
    got = codecs.decode_documents(chunks, dim)
    assert set(got) == set(chunks)
    for doc_id, parts in chunks.items():
        expected = (np.concatenate([codecs.from_chunks([p], c, dim) for c, p in parts]) if parts
                    else np.zeros((0, dim), np.float32))
        np.testing.assert_array_equal(got[doc_id], expected)
