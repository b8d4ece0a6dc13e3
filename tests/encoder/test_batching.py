"""Token-budget batching: a permutation, within budget, length-sorted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milvus_embed_ext.encoder import plan_batches
from milvus_embed_ext.encoder.batching import FILL_TOKENS, MAX_PADDING, padded_tokens
from milvus_embed_ext.errors import InvalidArgument


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=2, max_value=600), max_size=80),
    budget=st.integers(min_value=1, max_value=4000),
    max_batch=st.integers(min_value=1, max_value=20),
)
def test_plan_is_a_bounded_permutation(lengths, budget, max_batch):
    batches = plan_batches(lengths, budget, max_batch)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    lens = np.asarray(lengths)
    for b in batches:
        assert 1 <= len(b) <= max_batch
        longest = int(lens[b].max())
        assert len(b) == 1 or len(b) * longest <= budget
        # bounded padding once the batch is past the fill size
        shortest = int(lens[b].min())
        assert (len(b) - 1) * longest < FILL_TOKENS or shortest >= (1 - MAX_PADDING) * longest
    # longest first: batch maxima never increase
    maxima = [int(lens[b].max()) for b in batches]
    assert maxima == sorted(maxima, reverse=True)


def test_sorting_reduces_padding():
    lengths = [500, 10, 490, 12, 480, 11, 470, 9]
    batches = plan_batches(lengths, token_budget=2000, max_batch=4)
    assert [sorted(b.tolist()) for b in batches] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert padded_tokens(lengths, batches) == 4 * 500 + 4 * 12


def test_mixed_lengths_are_not_padded_to_the_longest():
    lengths = list(range(500, 40, -30))  # 500, 470, ..., 50: one batch by budget alone
    batches = plan_batches(lengths, token_budget=16384, max_batch=64)
    assert len(batches) > 1
    assert padded_tokens(lengths, batches) < 1.25 * sum(lengths)


def test_short_texts_batch_together():
    lengths = [12, 3, 9, 5, 20, 7]  # queries: padding is cheaper than one forward pass each
    assert [len(b) for b in plan_batches(lengths, token_budget=4096, max_batch=64)] == [6]


def test_long_text_runs_alone():
    batches = plan_batches([5000, 10, 10], token_budget=100, max_batch=8)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_empty_and_bad_arguments():
    assert plan_batches([], 10, 2) == []
    with pytest.raises(InvalidArgument, match="token_budget"):
        plan_batches([1], 0, 2)
    with pytest.raises(InvalidArgument, match="max_batch"):
        plan_batches([1], 10, 0)
