"""BGE-M3 encoder: dense, sparse (lexical) and ColBERT vectors from one forward pass.

``M3Encoder.from_pretrained(path_or_hub_id)`` loads a checkpoint; ``encode(texts)`` returns an
:class:`M3Output`. Scoring helpers mirror FlagEmbedding's ``compute_score``. ``testmodel`` builds
offline checkpoints in BGE-M3's on-disk layout for tests and benchmarks. :class:`Reranker` is the
cross-encoder (bge-reranker-v2-m3) beside it.
"""

from __future__ import annotations

from .batching import plan_batches
from .hub import resolve_model_path
from .loading import resolve_device, resolve_dtype
from .model import M3Encoder
from .output import M3Output
from .reranker import Reranker
from .scoring import DEFAULT_WEIGHTS, colbert_score, dense_score, lexical_score, m3_score, m3_scores
from .testmodel import build_test_model, ensure_test_model

__all__ = [
    "DEFAULT_WEIGHTS",
    "M3Encoder",
    "M3Output",
    "Reranker",
    "build_test_model",
    "colbert_score",
    "dense_score",
    "ensure_test_model",
    "lexical_score",
    "m3_score",
    "m3_scores",
    "plan_batches",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
]
