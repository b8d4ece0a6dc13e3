"""One Milvus connection: embedded Milvus Lite (a ``.db`` file, in-process) or a server URI.

Every pymilvus call goes through :meth:`MilvusStore.call`, which turns pymilvus and gRPC failures into
domain errors and scrubs credentials from the messages.
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
from .capabilities import Capabilities, capabilities_for

log = logging.getLogger(__name__)
T = TypeVar("T")

_lite_lock = threading.Lock()
_lite_refs: dict[str, int] = {}  # resolved .db path -> open MilvusStores in this process


class MilvusStore:
    """A connected pymilvus ``MilvusClient`` plus what the backend can do."""

    def __init__(self, client: Any, capabilities: Capabilities, *, target: str,
                 secrets: tuple[str, ...] = (), lite_path: str | None = None) -> None:
        self.client = client
        self.capabilities = capabilities
        self.target = target  # redacted URI or Lite path, for messages
        self._secrets = tuple(s for s in secrets if s)
        self._lite_path = lite_path
        self._closed = False
        # Told about every call: (pymilvus method name, seconds, mapped error or None). The service's metrics.
        self.observer: Callable[[str, float, BaseException | None], None] | None = None

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
        with _lite_lock:
            try:
                client = MilvusClient(uri=resolved, timeout=settings.milvus_timeout_s)
            except Exception as exc:  # noqa: BLE001 - pymilvus raises many types here
                raise Unavailable(
                    f"cannot open Milvus Lite at {resolved}: {_reason(exc)}. Only one process can open a Lite "
                    "file at a time: stop the other process or point milvus_uri at another file; milvus-lite "
                    "needs setuptools<81 (pkg_resources)") from None
            _lite_refs[resolved] = _lite_refs.get(resolved, 0) + 1
        try:
            import milvus_lite

            version = getattr(milvus_lite, "__version__", "")
        except ImportError:  # pragma: no cover
            version = ""
        return cls(client, capabilities_for(version, lite=True), target=resolved, lite_path=resolved)

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
        probe = cls(None, capabilities_for("", lite=False), target=target, secrets=secrets)
        client = probe.call(f"connect to Milvus at {target}", lambda: MilvusClient(uri=uri, **kwargs))
        probe.client = client
        version = probe.call("read the server version", client.get_server_version)
        probe.capabilities = capabilities_for(str(version), lite=False)
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
        if code == 1100 or "invalid expr" in low or "cannot parse expression" in low:
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
        return Unavailable(f"{what} failed on Milvus at {self.target}: {reason}")

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        # user:password@ in any URI the driver echoed back
        return re.sub(r"//[^/@\s]+:[^/@\s]+@", "//***@", text)

    # ------------------------------------------------------------------ small helpers
    def has_collection(self, name: str) -> bool:
        return bool(self.call(f"look up collection {name}", self.client.has_collection, name))

    def list_collections(self) -> list[str]:
        return list(self.call("list collections", self.client.list_collections))


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
