"""Length-sorted, token-budgeted batches: little padding, bounded memory per forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidArgument


def plan_batches(lengths: Sequence[int] | np.ndarray, token_budget: int, max_batch: int) -> list[np.ndarray]:
    """Split text indices into forward passes.

    Texts are sorted by length, longest first, so each batch holds similar lengths and padding stays
    small. A batch grows while ``rows * longest_row <= token_budget`` (padded tokens, what the forward
    pass really costs) and ``rows <= max_batch``. A text longer than the budget runs alone. Returns
    arrays of original indices; concatenated, they are a permutation of ``range(len(lengths))``.
    """
    if token_budget <= 0:
        raise InvalidArgument(f"token_budget must be > 0, got {token_budget}")
    if max_batch <= 0:
        raise InvalidArgument(f"max_batch must be > 0, got {max_batch}")
    lens = np.asarray(lengths, dtype=np.int64)
    if lens.size == 0:
        return []
    order = np.argsort(-lens, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = lens.size
    while start < n:
        longest = int(lens[order[start]])
        rows = max(1, min(max_batch, token_budget // max(longest, 1), n - start))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def padded_tokens(lengths: Sequence[int] | np.ndarray, batches: Sequence[np.ndarray]) -> int:
    """Tokens the forward passes will process, padding included (for metrics and tests)."""
    lens = np.asarray(lengths, dtype=np.int64)
    return int(sum(len(b) * int(lens[b].max()) for b in batches if len(b)))
