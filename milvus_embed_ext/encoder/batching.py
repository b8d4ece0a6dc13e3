"""Length-sorted, token-budgeted batches: little padding, bounded memory per forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

from ..errors import InvalidArgument

# A row may be at most this much shorter than its batch's longest row (padding is pure waste, worst on CPU)...
MAX_PADDING = 0.25
# ...once the batch already holds this many padded tokens. Below it, batching wins: every forward pass
# streams all the weights (2.3 GB for BGE-M3 in fp32) once, whatever the batch size, so tiny passes are slow.
FILL_TOKENS = 256


def plan_batches(lengths: Sequence[int] | np.ndarray, token_budget: int, max_batch: int, *,
                 max_padding: float = MAX_PADDING, fill_tokens: int = FILL_TOKENS) -> list[np.ndarray]:
    """Split text indices into forward passes.

    Texts are sorted by length, longest first. A batch grows while ``rows * longest_row <= token_budget``
    (padded tokens: what the forward pass really costs), ``rows <= max_batch``, and the next text is at
    most ``max_padding`` shorter than the longest (checked once the batch holds ``fill_tokens`` padded
    tokens, so short queries still batch together). A text longer than the budget runs alone.
    Returns arrays of original indices; concatenated, they are a permutation of ``range(len(lengths))``.
    """
    if token_budget <= 0:
        raise InvalidArgument(f"token_budget must be > 0, got {token_budget}")
    if max_batch <= 0:
        raise InvalidArgument(f"max_batch must be > 0, got {max_batch}")
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.size == 0:
        return []
    order = np.argsort(-lens, kind="stable")
    sorted_lens = lens[order].tolist()
    batches: list[np.ndarray] = []
    start = 0
    n = lens.size
    while start < n:
        longest = max(sorted_lens[start], 1)
        cap = max(1, min(max_batch, token_budget // longest))
        shortest_ok = (1.0 - max_padding) * longest
        end = start + 1
        while end < n and end - start < cap:
            if (end - start) * longest >= fill_tokens and sorted_lens[end] < shortest_ok:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def padded_tokens(lengths: Sequence[int] | np.ndarray, batches: Sequence[np.ndarray]) -> int:
    """Tokens the forward passes will process, padding included (for metrics and tests)."""
    lens = np.asarray(lengths, dtype=np.int64)
    return int(sum(len(b) * int(lens[b].max()) for b in batches if len(b)))


def pad_batch(batch_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One forward pass's rows right-padded to the longest: ``(input_ids, attention mask, row lengths)``."""
    rows = len(batch_ids)
    lens = np.fromiter((len(x) for x in batch_ids), dtype=np.int64, count=rows)
    width = int(lens.max())
    input_ids = np.full((rows, width), pad_token_id, dtype=np.int64)
    mask = np.arange(width)[None, :] < lens[:, None]
    input_ids[mask] = np.fromiter(chain.from_iterable(batch_ids), dtype=np.int64, count=int(lens.sum()))
    return input_ids, mask, lens
