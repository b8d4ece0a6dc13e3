"""Hybrid search: pure fusion functions, vectorised exact re-scoring and the multi-stage planner."""

from . import fusion, rescore
from .planner import (
    FUSIONS,
    REPRESENTATIONS,
    ROUTES,
    Hit,
    HybridSearcher,
    Route,
    SearchPlan,
    SearchRequest,
    SearchResult,
)

__all__ = [
    "FUSIONS",
    "REPRESENTATIONS",
    "ROUTES",
    "Hit",
    "HybridSearcher",
    "Route",
    "SearchPlan",
    "SearchRequest",
    "SearchResult",
    "fusion",
    "rescore",
]
