"""ColBERT token-matrix codecs for the portable (companion collection) store.

A document's ColBERT output is a float32 matrix [tokens, dim] with L2-normalised rows. Each codec
packs it as a sequence of fixed-size per-token records, so a matrix can be split on token
boundaries over several VARCHAR rows and every chunk decodes on its own:

``fp32``   dim x float32                          (exact)
``fp16``   dim x float16                          (IEEE half, little endian)
``int8``   float32 scale + dim x int8             (symmetric, per-vector scale = max|x| / 127)
``int6``   8 hex digits of a float32 scale +       (levels -31..31 on max|x| / 31; the scale is then the
           dim printable ASCII characters           least-squares one, so a decoded vector is never longer
                                                   than its input: MaxSim bounds stay exact at norm 1)

int6 is a *text* codec: its records are ASCII already, so they are stored as they are (one character per
element, as dense as base64 of packed 6-bit values) and decode with one subtraction, no base64 and no bit
unpacking. The others are binary: their records are stored base64-encoded.
``bits``   float16 scale + ceil(dim / 8) bytes    (sign bits; scale = mean|x|, the L1-optimal
                                                   magnitude, so float queries score on the same
                                                   scale as fp32)

Pure numpy; no Milvus here, so this module is unit-tested and benchmarked on its own.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument
from ..limits import COLBERT_CODECS

CODECS: tuple[str, ...] = COLBERT_CODECS

TEXT_CODECS = frozenset({"int6"})
"""Codecs whose records are printable ASCII, stored without base64."""

# A VARCHAR holds at most 65535 bytes; base64 turns 3 raw bytes into 4 characters.
MAX_VARCHAR_BYTES = 65535
MAX_RAW_BYTES_PER_ROW = (MAX_VARCHAR_BYTES // 4) * 3  # 49149 raw bytes -> 65532 base64 chars


def record_size(codec: str, dim: int) -> int:
    """Bytes one token vector takes in the given codec."""
    if dim <= 0:
        raise InvalidArgument(f"ColBERT dim must be positive, got {dim}")
    if codec == "fp32":
        return 4 * dim
    if codec == "fp16":
        return 2 * dim
    if codec == "int8":
        return 4 + dim
    if codec == "int6":
        return _INT6_SCALE_CHARS + dim
    if codec == "bits":
        return 2 + (dim + 7) // 8
    raise InvalidArgument(f"unknown ColBERT codec {codec!r}; choose one of {', '.join(CODECS)}")


def tokens_per_row(codec: str, dim: int) -> int:
    """Token vectors that fit in one companion row (a 65535-byte VARCHAR; base64 for binary codecs)."""
    n = (MAX_VARCHAR_BYTES if codec in TEXT_CODECS else MAX_RAW_BYTES_PER_ROW) // record_size(codec, dim)
    if n < 1:
        raise InvalidArgument(
            f"a {dim}-d ColBERT vector in codec {codec} does not fit in one 65535-byte VARCHAR row; "
            "use fp16, int8 or bits"
        )
    return n


def encode(matrix: np.ndarray, codec: str) -> bytes:
    """Pack a float [tokens, dim] matrix as ``tokens`` fixed-size records."""
    m = np.asarray(matrix, dtype=np.float32)
    if m.ndim != 2:
        raise InvalidArgument(f"ColBERT vectors must be a 2-d [tokens, dim] matrix, got shape {m.shape}")
    n, dim = m.shape
    size = record_size(codec, dim)
    if n == 0:
        return b""
    if codec == "fp32":
        return m.astype("<f4").tobytes()
    if codec == "fp16":
        return m.astype("<f2").tobytes()
    out = np.empty((n, size), dtype=np.uint8)
    if codec == "int8":
        scale = np.abs(m).max(axis=1) / 127.0
        safe = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.rint(m / safe[:, None]), -127, 127).astype(np.int8)
        out[:, :4] = scale.astype("<f4").reshape(n, 1).view(np.uint8)
        out[:, 4:] = q.view(np.uint8)
        return out.tobytes()
    if codec == "int6":
        return _encode_int6(m)
    # bits
    scale = np.abs(m).mean(axis=1)
    out[:, :2] = scale.astype("<f2").reshape(n, 1).view(np.uint8)
    out[:, 2:] = np.packbits(m >= 0, axis=1)
    return out.tobytes()


def norm_bound(codec: str, dim: int) -> float:
    """How much longer than its input a decoded vector can be (a factor >= 1), for MaxSim upper bounds.

    fp16 rounds each element by at most 2**-11 relative. int8 rounds each element by at most half a step,
    ``max|x| / 254 <= ||x|| / 254``, so the error vector is at most ``sqrt(dim) / 254`` of the norm. ``bits``
    decodes to norm ``mean|x| * sqrt(dim) <= ||x||`` (Cauchy-Schwarz), times its float16 scale's rounding.
    ``int6`` decodes to ``s * L`` with the least-squares ``s = x.L / L.L``, of norm ``|x.L| / ||L|| <= ||x||``
    (Cauchy-Schwarz again), up to float32 rounding.
    """
    if codec not in CODECS:
        raise InvalidArgument(f"unknown ColBERT codec {codec!r}; choose one of {', '.join(CODECS)}")
    if codec == "int8":
        return 1.0 + math.sqrt(dim) / 254.0 + 1e-6
    return {"fp32": 1.0 + 1e-6, "fp16": 1.0 + 1e-3, "int6": 1.0 + 1e-5, "bits": 1.0 + 1e-3}[codec]


def decode(data: bytes, codec: str, dim: int) -> np.ndarray:
    """Inverse of :func:`encode`: float32 [tokens, dim]."""
    size = record_size(codec, dim)
    if len(data) % size:
        raise ValueError(f"{len(data)} bytes is not a whole number of {codec} records of {size} bytes")
    n = len(data) // size
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if codec == "fp32":
        return np.frombuffer(data, dtype="<f4").reshape(n, dim).astype(np.float32)
    if codec == "fp16":
        return np.frombuffer(data, dtype="<f2").reshape(n, dim).astype(np.float32)
    raw = np.frombuffer(data, dtype=np.uint8).reshape(n, size)
    if codec == "int6":
        return _decode_int6(raw, dim)
    if codec == "int8":
        scale = raw[:, :4].copy().view("<f4").reshape(n).astype(np.float32)
        q = raw[:, 4:].copy().view(np.int8).astype(np.float32)
        return q * scale[:, None]
    scale = raw[:, :2].copy().view("<f2").reshape(n).astype(np.float32)
    signs = np.unpackbits(raw[:, 2:], axis=1, count=dim).astype(np.float32) * 2.0 - 1.0
    return signs * scale[:, None]


_INT6_ZERO = 79  # level -31..31 is stored as the character chr(79 + level): '0' (48) .. 'n' (110)
_INT6_SCALE_CHARS = 8  # the float32 scale's bits as 8 lowercase hex digits, big endian
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
_HEX_VALUES[_HEX_DIGITS] = np.arange(16, dtype=np.uint8)


def _encode_int6(m: np.ndarray) -> bytes:
    n, dim = m.shape
    step = np.abs(m).max(axis=1) / 31.0
    safe = np.where(step > 0, step, 1.0)
    levels = np.clip(np.rint(m / safe[:, None]), -31, 31)
    # the least-squares scale for these levels: never longer than the input, and closer to it than the grid's
    energy = (levels * levels).sum(axis=1)
    scale = np.where(energy > 0, (m * levels).sum(axis=1) / np.where(energy > 0, energy, 1.0), 0.0)
    out = np.empty((n, _INT6_SCALE_CHARS + dim), dtype=np.uint8)
    bits = scale.astype(">f4").view(">u4").astype(np.uint32)
    for i in range(_INT6_SCALE_CHARS):  # most significant nibble first
        out[:, i] = _HEX_DIGITS[(bits >> (4 * (_INT6_SCALE_CHARS - 1 - i))) & 0xF]
    out[:, _INT6_SCALE_CHARS:] = (levels + _INT6_ZERO).astype(np.uint8)
    return out.tobytes()


def _decode_int6(raw: np.ndarray, dim: int) -> np.ndarray:
    n = raw.shape[0]
    nibbles = _HEX_VALUES[raw[:, :_INT6_SCALE_CHARS]].astype(np.uint32)
    chars = raw[:, _INT6_SCALE_CHARS:]
    if nibbles.max(initial=0) > 15 or chars.min(initial=_INT6_ZERO) < _INT6_ZERO - 31 \
            or chars.max(initial=_INT6_ZERO) > _INT6_ZERO + 31:
        raise ValueError("int6 ColBERT records hold characters outside their alphabet")
    bits = np.zeros(n, dtype=np.uint32)
    for i in range(_INT6_SCALE_CHARS):
        bits = (bits << 4) | nibbles[:, i]
    scale = bits.view(np.float32)
    levels = (chars - np.uint8(_INT6_ZERO)).view(np.int8)  # wraps to -31..31 in two's complement
    return levels.astype(np.float32) * scale[:, None]


def to_payload(raw: bytes, codec: str) -> str:
    """A VARCHAR's text for packed records: as they are for text codecs, base64 for binary ones."""
    return raw.decode("ascii") if codec in TEXT_CODECS else base64.b64encode(raw).decode("ascii")


def from_payload(payload: str, codec: str) -> bytes:
    """Inverse of :func:`to_payload`."""
    return payload.encode("ascii") if codec in TEXT_CODECS else base64.b64decode(payload)


@dataclass(frozen=True)
class Chunk:
    index: int
    n_tokens: int
    payload: str  # VARCHAR text: the records themselves (text codecs) or their base64


def to_chunks(matrix: np.ndarray, codec: str) -> list[Chunk]:
    """Encode and split on token boundaries into payloads that fit one VARCHAR each."""
    m = np.asarray(matrix, dtype=np.float32)
    per_row = tokens_per_row(codec, m.shape[1])
    chunks = []
    for i, start in enumerate(range(0, m.shape[0], per_row)):
        part = m[start:start + per_row]
        chunks.append(Chunk(i, part.shape[0], to_payload(encode(part, codec), codec)))
    return chunks


def from_chunks(payloads: Iterator[str] | list[str], codec: str, dim: int) -> np.ndarray:
    """Decode payloads given in chunk order and stack them into one matrix."""
    parts = [decode(from_payload(p, codec), codec, dim) for p in payloads]
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def decode_documents(chunks_by_doc: Mapping[str, Sequence[tuple[str, str]]], dim: int) -> dict[str, np.ndarray]:
    """Decode many documents' chunks, each a list of ``(codec, payload)`` in chunk order, at once.

    Records of one codec are decoded in a single numpy pass over all documents and split back by their token
    counts: per chunk, numpy's fixed cost would otherwise be most of a search's ColBERT read.
    """
    raw_by_codec: dict[str, list[tuple[str, bytes]]] = {}
    out: dict[str, np.ndarray] = {}
    for doc_id, chunks in chunks_by_doc.items():
        codecs_used = {codec for codec, _ in chunks}
        if len(codecs_used) != 1:  # none (no tokens), or rows of mixed codecs: decode chunk by chunk
            parts = [decode(from_payload(p, c), c, dim) for c, p in chunks]
            out[doc_id] = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
            continue
        codec = codecs_used.pop()
        raw_by_codec.setdefault(codec, []).append((doc_id, b"".join(from_payload(p, codec) for _, p in chunks)))
    for codec, docs in raw_by_codec.items():
        size = record_size(codec, dim)
        matrix = decode(b"".join(raw for _, raw in docs), codec, dim)
        start = 0
        for doc_id, raw in docs:
            n = len(raw) // size
            out[doc_id] = matrix[start:start + n]
            start += n
    return out


def stored_bytes_per_token(codec: str, dim: int) -> float:
    """Characters stored per token once packed into full rows (the payload, not row overhead)."""
    per_row = tokens_per_row(codec, dim)
    raw = per_row * record_size(codec, dim)
    if codec in TEXT_CODECS:
        return float(record_size(codec, dim))
    return 4 * -(-raw // 3) / per_row
