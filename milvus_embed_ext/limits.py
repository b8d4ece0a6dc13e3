"""Vocabularies and limits, defined once.

The search planner, the fusion functions, the wire codecs (name <-> proto enum), the client, the CLI and
the store all read these names and numbers from here, so a new fusion method or a changed Milvus limit is
one edit. Plain strings and ints: this module imports nothing, so every layer may use it.
"""

from __future__ import annotations

FUSIONS = ("m3", "rrf", "weighted", "dbsf")
"""Fusion methods (proto ``FusionMethod`` = ``FUSION_METHOD_`` + the upper-cased name)."""
NORMALIZATIONS = ("minmax", "arctan", "arctan_pos")
"""Score normalisations of the ``weighted`` fusion (proto ``Normalization`` = ``NORMALIZATION_`` + name)."""
REPRESENTATIONS = ("dense", "sparse", "colbert")
"""Stage-2 exact scores, in FlagEmbedding's weight order."""
ROUTES = ("dense_truncated", "sparse", "dense")
"""Stage-1 candidate sources."""
COLBERT_CODECS = ("fp32", "fp16", "int8", "int6", "bits")
"""How the portable store packs ColBERT token vectors (milvus_embed_ext.store.codecs)."""
DEFAULT_COLBERT_CODEC = "int6"
"""The codec of layouts built in code and of scripts `migrate revision` writes: 0.38x the bytes of fp16 base64
(bench/RESULTS.md, codecs). The built-in 0001 states its own (int8): a released revision keeps its result."""

MILVUS_MAX_TOPK = 16384
"""Milvus rejects a search or query whose limit (offset included) exceeds this."""
DEFAULT_MAX_TOP_K = 1000
"""Default of ``Settings.max_top_k``: the deepest page a search may ask for."""
DEFAULT_TOP_K = 10
"""What a request with top_k unset (0 on the wire) gets."""
IDS_PER_QUERY = 512
"""Ids per ``id in [...]`` expression: longer expressions slow Milvus' parser down."""

__all__ = ["COLBERT_CODECS", "DEFAULT_COLBERT_CODEC", "DEFAULT_MAX_TOP_K", "DEFAULT_TOP_K", "FUSIONS", "IDS_PER_QUERY", "MILVUS_MAX_TOPK", "NORMALIZATIONS",
           "REPRESENTATIONS", "ROUTES"]
