"""ColBERT codecs: exactness where promised, bounded error elsewhere, chunks that fit a VARCHAR."""

from __future__ import annotations

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


@pytest.mark.parametrize("dim", [1, 5, 64, 1023, 1024])
def test_int6_is_on_its_grid_and_never_longer_than_its_input(dim: int) -> None:
    m = unit_rows(60, dim, seed=4)
    m[0] *= 0.5  # not every row is unit length
    m[1, :] = 0.0
    m[1, 0] = -1.0  # a one-hot row: exact
    out = codecs.decode(codecs.encode(m, "int6"), "int6", dim)
    assert out.shape == (60, dim)
    # the levels: every decoded row is scale x integers in -31..31, with the largest element on +-31
    scale = np.abs(out).max(axis=1) / 31
    live = scale > 0
    levels = out[live] / scale[live, None]
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
    assert np.abs(np.rint(levels)).max() <= 31
    # the least-squares scale never makes a decoded row longer than its input (the MaxSim bound relies on it)
    assert np.all(np.linalg.norm(out, axis=1) <= np.linalg.norm(m, axis=1) * codecs.norm_bound("int6", dim))
    np.testing.assert_allclose(out[1], m[1], atol=1e-7)
    # and the error stays within a grid step of the input (the scale moves it by less than a step)
    step = np.abs(m).max(axis=1, keepdims=True) / 31
    assert np.all(np.abs(out - m) <= step + 1e-6)


def test_int6_records_are_text_one_character_per_element() -> None:
    assert codecs.record_size("int6", 1024) == 8 + 1024
    # a hand-written record: scale 0.5 (float32 bits 3f000000), levels 31, -31, 0, 1 -> chr(79 + level)
    record = b"3f000000" + bytes([79 + 31, 79 - 31, 79, 80])
    np.testing.assert_array_equal(codecs.decode(record, "int6", 4), [[15.5, -15.5, 0.0, 0.5]])
    chunks = codecs.to_chunks(unit_rows(300, 1024, seed=6), "int6")
    assert all(c.payload.isascii() and c.payload.isprintable() for c in chunks)  # stored as is, no base64
    assert len(chunks[0].payload) == codecs.tokens_per_row("int6", 1024) * 1032 <= 65535
    assert codecs.stored_bytes_per_token("int6", 1024) < 0.4 * codecs.stored_bytes_per_token("fp16", 1024)


@pytest.mark.parametrize("bad", [b"3f00000g" + b"OOOO", b"3f000000" + b"OO~O", b"3f000000" + b"OO/O"])
def test_int6_refuses_characters_outside_its_alphabet(bad: bytes) -> None:
    with pytest.raises(ValueError, match="alphabet"):
        codecs.decode(bad, "int6", 4)


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_norm_bound_holds_for_every_codec(codec: str) -> None:
    for dim in (16, 1024):
        m = unit_rows(200, dim, seed=5)
        m[:50] = np.where(np.arange(dim) < 3, 1.0, 1e-4)[None, :]  # spiky rows: the int8 worst case
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        out = codecs.decode(codecs.encode(m, codec), codec, dim)
        assert np.linalg.norm(out, axis=1).max() <= codecs.norm_bound(codec, dim)


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
    whole = codecs.decode(b"".join(codecs.from_payload(c.payload, codec) for c in chunks), codec, dim)
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
