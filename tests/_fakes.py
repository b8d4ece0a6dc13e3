"""Test doubles that implement the Protocols of :mod:`milvus_embed_ext.contracts`, so the service needs no
``getattr`` branches for them. mypy checks this module against those Protocols (pyproject's ``files``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from milvus_embed_ext.errors import Unavailable
from milvus_embed_ext.store.capabilities import Capabilities, capabilities_for

if TYPE_CHECKING:
    from milvus_embed_ext.contracts import WatchedBackend

T = TypeVar("T")

NO_MILVUS = "this test runs the sidecar without Milvus"


class NullStore:
    """The sidecar's store when a test needs no Milvus: it answers every health probe, holds no collection and
    refuses any call that would reach Milvus. Subclass it to script outages or record what the server did."""

    def __init__(self) -> None:
        self.client: Any = None
        self.capabilities: Capabilities = capabilities_for("", lite=True)
        self.target = "no Milvus (test)"
        self.observer: Callable[[str, float, BaseException | None], None] | None = None
        self.needs_reload = False
        self.lite_restarts = 0
        self.closed = False

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        raise Unavailable(f"{what}: {NO_MILVUS}")

    def has_collection(self, name: str) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def lite_server_alive(self) -> bool | None:
        return None  # not an embedded Lite server

    def ping(self, timeout: float) -> None:
        pass

    def reconnect(self, timeout: float) -> None:
        self.reload_collections(timeout)  # as MilvusStore.reconnect does after a fresh connection answers

    def reload_collections(self, timeout: float) -> list[str]:
        self.needs_reload = False
        return []


if TYPE_CHECKING:
    _store: WatchedBackend = NullStore()
