"""Hybrid search: pure fusion functions and the multi-stage query planner."""

from . import fusion

__all__ = ["fusion"]
