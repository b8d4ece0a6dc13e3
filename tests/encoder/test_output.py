"""M3Output row selection and concatenation (the service batcher splits results with them)."""

from __future__ import annotations

import numpy as np
import pytest

from milvus_embed_ext.encoder import M3Encoder, M3Output
from milvus_embed_ext.errors import InvalidArgument


def test_select_and_concat_round_trip(tiny_encoder: M3Encoder):
    texts = ["alpha beta", "Привет", "东京 🚀", "a much longer text about rivers, mills and villages"]
    out = tiny_encoder.encode(texts, truncate_dims=[16])
    picked = out.select([2, 0])
    assert len(picked) == 2
    np.testing.assert_array_equal(picked.dense, out.dense[[2, 0]])
    np.testing.assert_array_equal(picked.truncated[16], out.truncated[16][[2, 0]])
    assert picked.sparse == [out.sparse[2], out.sparse[0]]
    assert picked.colbert[0] is out.colbert[2]
    assert list(picked.token_counts) == [out.token_counts[2], out.token_counts[0]]

    again = M3Output.concat([out.select([0, 1]), out.select([2]), out.select([3])])
    np.testing.assert_array_equal(again.dense, out.dense)
    assert again.sparse == out.sparse
    assert list(again.token_counts) == list(out.token_counts)
    assert len(out.row(3)) == 1 and out.row(3).sparse == [out.sparse[3]]


def test_select_errors_and_empty():
    empty = M3Output()
    assert len(empty) == 0 and len(M3Output.concat([])) == 0
    with pytest.raises(InvalidArgument, match="out of range"):
        empty.select([0])
    a = M3Output(dense=np.zeros((1, 2), np.float32), token_counts=np.array([3]))
    b = M3Output(token_counts=np.array([3]))
    with pytest.raises(InvalidArgument, match="different representations"):
        M3Output.concat([a, b])
