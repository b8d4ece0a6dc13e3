"""One Milvus connection: embedded Milvus Lite (a ``.db`` file, in-process) or a server URI.

Every pymilvus call goes through :meth:`MilvusStore.call`, which turns pymilvus and gRPC failures into
domain errors and scrubs credentials from the messages.

Staying connected (docs/reliability.md): :meth:`MilvusStore.ping` is the sidecar's health probe;
:meth:`MilvusStore.reconnect` opens a fresh client (on a server) or restarts the embedded Lite server
process when it died, then loads the collections again (a restarted Milvus Lite 3 server comes back
with every collection released). Each store has its own (dedicated) pymilvus connection, so closing
or replacing one never cuts another store's connection to the same Milvus.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..config import Settings, redact_uri
from ..errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    InvalidFilter,
    MilvusEmbedError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VectorsUnreadable,
)
from .capabilities import PROBE_PREFIX, Capabilities, capabilities_for, probe_capabilities

log = logging.getLogger(__name__)
T = TypeVar("T")

_lite_lock = threading.Lock()
_lite_refs: dict[str, int] = {}  # resolved .db path -> open MilvusStores in this process
PING_COLLECTION = f"{PROBE_PREFIX}ping"  # looked up, never created: a cheap round trip on every backend
RETRY_HINT = "Milvus may be restarting: retry with backoff"


@contextlib.contextmanager
def quiet_pymilvus() -> Any:
    """pymilvus logs every failed RPC with a traceback at ERROR; probes expect failures."""
    logger = logging.getLogger("pymilvus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class MilvusStore:
    """A connected pymilvus ``MilvusClient`` plus what the backend can do."""

    def __init__(self, client: Any, capabilities: Capabilities, *, target: str,
                 secrets: tuple[str, ...] = (), lite_path: str | None = None,
                 opener: Callable[[float | None], Any] | None = None) -> None:
        self.client = client
        self.capabilities = capabilities
        self.target = target  # redacted URI or Lite path, for messages
        self._secrets = tuple(s for s in secrets if s)
        self._lite_path = lite_path
        self._opener = opener  # opens a new client (reconnect); None for stores wrapping a given client
        self._closed = False
        # Told about every call: (pymilvus method name, seconds, mapped error or None). The service's metrics.
        self.observer: Callable[[str, float, BaseException | None], None] | None = None
        self.needs_reload = False
        """Set when Milvus answered "collection not loaded" (a restarted server): the watcher loads again."""
        self.lite_restarts = 0

    # ------------------------------------------------------------------ connect
    @classmethod
    def connect(cls, settings: Settings) -> MilvusStore:
        """Open Milvus Lite at a file path (parent dir created) or connect to http(s)://host:port."""
        if settings.is_embedded:
            return cls._connect_lite(settings)
        return cls._connect_server(settings)

    @classmethod
    def _connect_lite(cls, settings: Settings) -> MilvusStore:
        path = Path(settings.milvus_uri).expanduser()
        if path.suffix != ".db":
            raise InvalidArgument(
                f"milvus_uri {settings.milvus_uri!r} is neither a server URI (http://host:port) nor a Milvus Lite "
                "file path ending in .db")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(f"cannot create the Milvus Lite directory {path.parent}: {exc.strerror}") from None
        resolved = str(path.resolve())
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:  # pragma: no cover - dependency pinned in pyproject
            raise Unavailable(f"pymilvus is not installed: {exc}") from None
        def open_lite(timeout: float | None = None) -> Any:
            try:
                return MilvusClient(uri=resolved, timeout=timeout or settings.milvus_timeout_s, dedicated=True)
            except Exception as exc:  # noqa: BLE001 - pymilvus raises many types here
                raise Unavailable(
                    f"cannot open Milvus Lite at {resolved}: {_reason(exc)}. Only one process can open a Lite "
                    "file at a time: stop the other process or point milvus_uri at another file; milvus-lite "
                    "needs setuptools<81 (pkg_resources)") from None

        with _lite_lock:
            client = open_lite()
            _lite_refs[resolved] = _lite_refs.get(resolved, 0) + 1
        try:
            import milvus_lite

            version = getattr(milvus_lite, "__version__", "")
        except ImportError:  # pragma: no cover
            version = ""
        return cls(client, capabilities_for(version, lite=True), target=resolved, lite_path=resolved, opener=open_lite)

    @classmethod
    def _connect_server(cls, settings: Settings) -> MilvusStore:
        from pymilvus import MilvusClient

        uri = settings.milvus_uri
        target = redact_uri(uri)
        parts = urlsplit(uri)
        secrets = settings.secrets
        kwargs: dict[str, Any] = {"timeout": settings.milvus_timeout_s}
        if settings.milvus_token:
            kwargs["token"] = settings.milvus_token
        elif settings.milvus_user:
            kwargs["user"] = settings.milvus_user
            kwargs["password"] = settings.milvus_password
        if settings.milvus_db:
            kwargs["db_name"] = settings.milvus_db
        if parts.scheme == "https":
            kwargs["secure"] = True
            if settings.milvus_tls_ca:
                if not Path(settings.milvus_tls_ca).is_file():
                    raise InvalidArgument(f"milvus_tls_ca {settings.milvus_tls_ca} does not exist")
                kwargs["server_pem_path"] = settings.milvus_tls_ca
        elif settings.milvus_tls_ca:
            raise InvalidArgument("milvus_tls_ca is set but milvus_uri is not https://; use an https:// URI")
        kwargs["dedicated"] = True  # our own channel: closing or replacing it touches no other store

        def open_server(timeout: float | None = None) -> Any:
            return MilvusClient(uri=uri, **{**kwargs, "timeout": timeout or settings.milvus_timeout_s})

        probe = cls(None, capabilities_for("", lite=False), target=target, secrets=secrets, opener=open_server)
        client = probe.call(f"connect to Milvus at {target}", open_server)
        probe.client = client
        version = str(probe.call("read the server version", client.get_server_version))
        with quiet_pymilvus():
            probe.capabilities = probe.call("probe the server's capabilities", probe_capabilities, client, version,
                                            cache_key=uri)
        probe.client = probe.wrap(client)
        log.info("connected to Milvus %s at %s", version, target)
        return probe

    @classmethod
    def from_client(cls, client: Any, capabilities: Capabilities, *, target: str = "milvus") -> MilvusStore:
        """Wrap an existing client (tests, embedding in another application)."""
        return cls(client, capabilities, target=target)

    def close(self) -> None:
        """Close the connection; the last store on a Lite file also stops its embedded server."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.client is not None:
                self.client.close()
        except Exception:  # noqa: BLE001 - closing must not raise
            log.debug("error while closing the Milvus client", exc_info=True)
        if self._lite_path:
            with _lite_lock:
                left = _lite_refs.get(self._lite_path, 1) - 1
                if left > 0:
                    _lite_refs[self._lite_path] = left
                    return
                _lite_refs.pop(self._lite_path, None)
            try:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite_path)
            except Exception:  # noqa: BLE001
                log.debug("error while stopping Milvus Lite", exc_info=True)

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls
    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a pymilvus call, mapping failures to domain errors (messages never carry secrets)."""
        if self._closed:
            raise FailedPrecondition(f"the Milvus connection to {self.target} is closed")
        started, error = time.perf_counter(), None
        try:
            return fn(*args, **kwargs)
        except MilvusEmbedError as exc:
            error = exc
            raise
        except Exception as exc:  # noqa: BLE001
            error = self.map_error(what, exc)
            raise error from None
        finally:
            if self.observer is not None:
                with contextlib.suppress(Exception):  # metrics never fail a call
                    self.observer(getattr(fn, "__name__", "other"), time.perf_counter() - started, error)

    def map_error(self, what: str, exc: BaseException) -> MilvusEmbedError:
        reason = self.scrub(_reason(exc))
        code = getattr(exc, "code", None)
        code = code() if callable(code) else code
        low = reason.lower()
        name = type(exc).__name__
        # Milvus Lite's segcore refuses some parsed filters late ("unsupported expr proto node", code 2000)
        if code == 1100 or "invalid expr" in low or "cannot parse expression" in low or "unsupported expr" in low:
            return InvalidFilter(f"invalid filter expression: {reason}", reason=reason)
        if code == 100 or name == "CollectionNotExistException" or "collection not found" in low:
            return NotFound(f"{what}: collection not found ({reason})")
        if code in (1800, 2) and ("auth" in low or "credential" in low or "password" in low) or \
                "unauthenticated" in low or "permission denied" in low:
            return Unauthenticated(f"{what}: Milvus rejected the credentials ({reason}); check milvus_token "
                                   "or milvus_user/milvus_password")
        if "deadline" in low or "timeout" in low or "timed out" in low:
            return DeadlineExceeded(f"{what}: Milvus at {self.target} did not answer in time ({reason})")
        if code == 8 or "rate limit" in low or "quota" in low:
            return ResourceExhausted(f"{what}: Milvus is rate limiting ({reason})")
        if name in {"ParamError", "DataTypeNotMatchException", "DataNotMatchException", "PrimaryKeyException",
                    "FieldTypeException"}:
            return InvalidArgument(f"{what}: {reason}")
        if "raw data" in low:
            return VectorsUnreadable(f"{what} failed on Milvus at {self.target}: {reason}")
        if "unimplemented" in low:
            return FailedPrecondition(f"{what}: not supported by {self.capabilities.server_version} ({reason})")
        if code == 101 or "released" in low or "not loaded" in low:
            self.needs_reload = True  # a restarted server: the health watcher loads the collections again
            return Unavailable(f"{what}: Milvus at {self.target} has the collection released (restarted?); "
                               f"it is being loaded again: retry with backoff ({reason})")
        return Unavailable(f"{what} failed on Milvus at {self.target}: {reason}; {RETRY_HINT}")

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        # user:password@ in any URI the driver echoed back
        return re.sub(r"//[^/@\s]+:[^/@\s]+@", "//***@", text)

    def wrap(self, client: Any) -> Any:
        """The client as the rest of the store sees it: shimmed where the server lacks descriptions."""
        if self.capabilities.descriptions or isinstance(client, DescriptionShim):
            return client
        return DescriptionShim(client)

    # ------------------------------------------------------------------ health
    def lite_server_alive(self) -> bool | None:
        """Whether the embedded Lite server process still runs (None: not embedded, or unknown)."""
        if not self._lite_path:
            return None
        try:
            from milvus_lite.server_manager import server_manager_instance

            server = server_manager_instance._servers.get(self._lite_path)  # noqa: SLF001 - no public accessor
            proc = getattr(server, "_p", None)
        except Exception:  # noqa: BLE001
            return None
        if server is None:
            return False
        return None if proc is None else proc.poll() is None

    def ping(self, timeout: float) -> None:
        """One cheap round trip to Milvus; raises Unavailable (or DeadlineExceeded) saying why it failed."""
        if self._closed:
            raise FailedPrecondition(f"the Milvus connection to {self.target} is closed")
        if self.lite_server_alive() is False:
            raise Unavailable(f"the embedded Milvus Lite server process for {self.target} has exited")
        with quiet_pymilvus():
            self.call("health probe", self.client.has_collection, PING_COLLECTION, timeout=timeout)

    def reconnect(self, timeout: float) -> None:
        """Open a fresh connection (restarting a dead embedded Lite server process) and load the collections.

        Raises Unavailable when Milvus still cannot be reached. The old client is closed after the new one
        answered, so in-flight calls on it fail (they are retried by their callers), never hang.
        """
        if self._opener is None:
            raise Unavailable(f"Milvus at {self.target} is unreachable and this store cannot reconnect "
                              "(it wraps a client it did not open)")
        old = self.client
        with quiet_pymilvus():
            if self._lite_path:
                with _lite_lock:
                    if self.lite_server_alive() is False:
                        self._release_lite_server()
                        self.lite_restarts += 1
                        log.warning("restarting the embedded Milvus Lite server for %s (restart %d)",
                                    self.target, self.lite_restarts)
                    new = self._opener(timeout)
            else:
                new = self.call(f"reconnect to Milvus at {self.target}", self._opener, timeout)
            try:
                self.call("health probe", new.has_collection, PING_COLLECTION, timeout=timeout)
            except MilvusEmbedError:
                with contextlib.suppress(Exception):
                    new.close()
                raise
        self.client = new = self.wrap(new)
        if old is not None and old is not new:
            with contextlib.suppress(Exception):
                old.close()
        self.reload_collections(timeout)

    def reload_collections(self, timeout: float) -> list[str]:
        """Load every collection (a restarted Milvus Lite 3 server has them all released; embedded Lite loads
        them at start-up before serving).

        Returns the names loaded; a collection that cannot be loaded (no index yet) is skipped."""
        loaded = []
        started = time.monotonic()
        with quiet_pymilvus():
            for name in self.list_collections():
                if name.startswith(PROBE_PREFIX):
                    continue
                try:
                    self.call(f"load collection {name}", self.client.load_collection, name,
                              timeout=max(timeout, 30.0))
                    loaded.append(name)
                except (FailedPrecondition, InvalidArgument, NotFound) as exc:
                    log.debug("collection %s not loaded again: %s", name, exc)
        self.needs_reload = False
        log.info("collections loaded", extra={"collections": len(loaded),
                                                                       "seconds": round(time.monotonic() - started, 3)})
        return loaded

    def _release_lite_server(self) -> None:
        try:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self._lite_path)
        except Exception:  # noqa: BLE001
            log.debug("error while releasing the dead Milvus Lite server", exc_info=True)

    # ------------------------------------------------------------------ small helpers
    def has_collection(self, name: str) -> bool:
        return bool(self.call(f"look up collection {name}", self.client.has_collection, name))

    def list_collections(self) -> list[str]:
        return list(self.call("list collections", self.client.list_collections))


DESCRIPTION_PROPERTY = "mee.description"


class DescriptionShim:
    """A pymilvus client for servers that drop collection descriptions (Milvus Lite 3.2.2).

    The layout of a collection lives in its description (store/layout.py). On such a server the
    description is also written to the collection property ``mee.description`` at create time, and
    ``describe_collection`` puts it back where every reader looks (and hides the property). Everything
    else passes through unchanged.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def create_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        out = self._client.create_collection(collection_name, *args, **kwargs)
        description = getattr(kwargs.get("schema"), "description", "") or kwargs.get("description", "")
        if description:
            self._client.alter_collection_properties(collection_name, {DESCRIPTION_PROPERTY: description})
        return out

    def describe_collection(self, collection_name: str, *args: Any, **kwargs: Any) -> Any:
        described = self._client.describe_collection(collection_name, *args, **kwargs)
        props = dict(described.get("properties") or {})
        if DESCRIPTION_PROPERTY in props:
            text = props.pop(DESCRIPTION_PROPERTY)
            described = {**described, "properties": props,
                         "description": described.get("description") or text}
        return described


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message:
        return message
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            text = details()
            if text:
                return str(text)
        except Exception:  # noqa: BLE001
            pass
    return str(exc) or type(exc).__name__
