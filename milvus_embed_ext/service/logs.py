"""Structured logging for the server process: one JSON object per line on stderr (or plain text)."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``; extra fields come from ``logger.info(..., extra={})``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class ScrubbingFormatter(logging.Formatter):
    """Wraps a formatter and replaces every secret in the finished line with ``***``.

    Applied to the whole line, so records of third-party loggers (pymilvus logs whole requests at DEBUG,
    filters and connection parameters included) cannot carry an API key or Milvus credential either.
    """

    def __init__(self, inner: logging.Formatter, secrets: Sequence[str]) -> None:
        super().__init__()
        self.inner = inner
        forms: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= 4:
                forms |= {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1]}
        self.secrets = sorted(forms, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line


def configure_logging(level: str = "INFO", fmt: str = "json", secrets: Sequence[str] = ()) -> None:
    """Replace the root handlers (the CLI's basicConfig included) with one stderr handler; ``secrets`` (API keys,
    Milvus credentials) are scrubbed from every line."""
    handler = logging.StreamHandler(sys.stderr)
    inner = JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(ScrubbingFormatter(inner, secrets) if secrets else inner)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pymilvus installs its own stderr handlers (propagate=False) when first imported; route its records through
    # ours instead, so they are JSON and scrubbed too (it logs failing requests, filters included, at ERROR).
    with contextlib.suppress(ImportError):
        import pymilvus  # noqa: F401 - runs pymilvus' logging set-up now, not after ours
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True
    # Chatty libraries stay at WARNING unless we debug.
    for name in ("urllib3", "filelock", "pymilvus", "grpc"):
        logging.getLogger(name).setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)
