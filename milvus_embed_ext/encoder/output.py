"""The result of one encode call: every BGE-M3 representation, row-aligned with the input texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidArgument


@dataclass
class M3Output:
    """Row ``i`` of every field belongs to input text ``i``.

    ``dense``: float32 ``[n, hidden]``, L2-normalised CLS vectors (None when not requested).
    ``sparse``: token id -> weight, max over positions; cls/eos/pad/unk and weights <= 0 dropped.
    ``colbert``: per text float32 ``[tokens_i - 1, hidden]`` (CLS dropped), rows L2-normalised.
    ``truncated``: dim -> float32 ``[n, dim]``, prefix of the CLS vector, renormalised.
    ``token_counts``: int64 ``[n]``, tokens per text incl. special tokens, after truncation.
    """

    dense: np.ndarray | None = None
    sparse: list[dict[int, float]] | None = None
    colbert: list[np.ndarray] | None = None
    truncated: dict[int, np.ndarray] = field(default_factory=dict)
    token_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.token_counts.shape[0])

    # The representations a caller needs, or InvalidArgument naming what to ask the encoder for.
    def need_dense(self) -> np.ndarray:
        if self.dense is None:
            raise InvalidArgument("this output has no dense vectors; encode with dense=True")
        return self.dense

    def need_sparse(self) -> list[dict[int, float]]:
        if self.sparse is None:
            raise InvalidArgument("this output has no sparse weights; encode with sparse=True")
        return self.sparse

    def need_colbert(self) -> list[np.ndarray]:
        if self.colbert is None:
            raise InvalidArgument("this output has no ColBERT vectors; encode with colbert=True")
        return self.colbert

    def select(self, indices: Sequence[int] | np.ndarray) -> M3Output:
        """Rows in the given order (the batcher uses it to hand each request its own slice)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise InvalidArgument(f"select: index out of range for {n} rows")
        rows = idx.tolist()
        return M3Output(
            dense=None if self.dense is None else self.dense[idx],
            sparse=None if self.sparse is None else [self.sparse[i] for i in rows],
            colbert=None if self.colbert is None else [self.colbert[i] for i in rows],
            truncated={d: v[idx] for d, v in self.truncated.items()},
            token_counts=self.token_counts[idx],
        )

    @classmethod
    def concat(cls, parts: Sequence[M3Output]) -> M3Output:
        """Rows of ``parts`` one after another; all parts must carry the same representations."""
        if not parts:
            return cls()
        first = parts[0]
        dims = set(first.truncated)
        for p in parts[1:]:
            if (p.dense is None) != (first.dense is None) or (p.sparse is None) != (first.sparse is None) \
                    or (p.colbert is None) != (first.colbert is None) or set(p.truncated) != dims:
                raise InvalidArgument("concat: parts carry different representations")
        return cls(
            dense=None if first.dense is None else np.concatenate([p.need_dense() for p in parts], axis=0),
            sparse=None if first.sparse is None else [r for p in parts for r in p.need_sparse()],
            colbert=None if first.colbert is None else [r for p in parts for r in p.need_colbert()],
            truncated={d: np.concatenate([p.truncated[d] for p in parts], axis=0) for d in dims},
            token_counts=np.concatenate([p.token_counts for p in parts]).astype(np.int64, copy=False),
        )

    def row(self, i: int) -> M3Output:
        """One text as a one-row output (what the scoring helpers take)."""
        return self.select([i])
