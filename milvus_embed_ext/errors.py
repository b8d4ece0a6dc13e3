"""Domain errors, shared by the library, the CLI and the gRPC service.

Each class maps to exactly one gRPC status code (service/errors.py) and one CLI exit code (cli.py).
Messages must say what to fix and must never contain secrets (API keys, Milvus credentials).
"""

from __future__ import annotations


class MilvusEmbedError(Exception):
    """Base class: anything the sidecar reports deliberately."""

    exit_code = 1


class InvalidArgument(MilvusEmbedError, ValueError):
    """The caller sent something we cannot use; the message says what to change."""

    exit_code = 2


class InvalidFilter(InvalidArgument):
    """Milvus refused a filter expression. Classified once, where the store maps Milvus errors; callers
    pass it on (or re-word it with :attr:`reason`, Milvus' own words) instead of parsing messages."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class NotFound(MilvusEmbedError, LookupError):
    """An unknown collection, document id, revision or field."""

    exit_code = 3


class AlreadyExists(MilvusEmbedError):
    exit_code = 3


class FailedPrecondition(MilvusEmbedError):
    """The system is not in a state that allows the call (e.g. schema at an unknown revision)."""

    exit_code = 4


class Unavailable(MilvusEmbedError):
    """Milvus (or another dependency) cannot be reached; retrying later may succeed."""

    exit_code = 5


class VectorsUnreadable(Unavailable):
    """Milvus could not return stored vectors: Milvus Lite 2.5 answers a vector query on a collection that was
    never written to with "Growing segment loss raw data". Classified in the store's error mapping, so a reader
    can tell it from other failures (an empty collection has no vectors) without parsing the message."""


class ResourceExhausted(MilvusEmbedError):
    """Overload: queue full, too many concurrent requests."""

    exit_code = 6


class DeadlineExceeded(MilvusEmbedError):
    exit_code = 7


class Unauthenticated(MilvusEmbedError):
    exit_code = 8


class ModelLoadError(MilvusEmbedError):
    """A checkpoint is missing files or cannot be loaded; the message names the file."""

    exit_code = 9


class ConsistencyError(MilvusEmbedError):
    """A multi-step write failed part-way; retrying the same call converges."""

    exit_code = 10
