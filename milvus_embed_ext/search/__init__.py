"""Hybrid search: pure fusion functions, vectorised exact re-scoring and the multi-stage planner."""

from . import fusion, planner, rescore
from .planner import *  # noqa: F403 - the package's API is the planner's public names (planner.__all__), listed once

__all__ = [*planner.__all__, "fusion", "rescore"]
