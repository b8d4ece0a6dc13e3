"""Revision scripts: plain Python files with ``revision``, ``down_revision``, ``upgrade(op)``, ``downgrade(op)``.

Scripts are loaded by path (never imported as a package) so that a user's ``--migrations-dir`` needs no
``__init__.py``. Each script's checksum is recorded when it is applied; ``check`` compares it later to
catch a script that was edited after it ran.

A script whose text changed without changing what it does (say, a parameter it used to take from a library
default is now written out) lists the checksums of its earlier texts in ``REPLACES_CHECKSUMS``; a history
recorded with one of them is not drift. Any other edit still is.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import AlreadyExists, InvalidArgument, NotFound

_REVISION_RE = re.compile(r"^[A-Za-z0-9_]+$")
_CHECKSUM_RE = re.compile(r"^[0-9a-f]{64}$")


def builtin_migrations_dir() -> Path:
    """The project's own revisions: the top-level ``migrations/`` folder of a source checkout (editable
    installs included), which a wheel ships as ``milvus_embed_ext/migrations_builtin`` (pyproject's
    package-dir). Found by path, next to this package, never through the import system: another checkout's
    folder must not be picked up."""
    package = Path(__file__).resolve().parent.parent
    shipped = package / "migrations_builtin"
    # (a folder of only __pycache__, left by an older checkout, is not the shipped copy)
    return shipped if any(shipped.glob("*.py")) else package.parent / "migrations"


def resolve_migrations_dir(migrations_dir: str | Path | None) -> Path:
    """The directory to load scripts from: the given one, or the built-in revisions when empty."""
    if migrations_dir:
        path = Path(migrations_dir).expanduser()
        if not path.is_dir():
            raise InvalidArgument(
                f"migrations directory {path} does not exist; create it or fix --migrations-dir / MEE_MIGRATIONS_DIR"
            )
        return path
    return builtin_migrations_dir()


def script_checksum(source: bytes) -> str:
    """sha256 of the script text, line endings normalised so a checkout on Windows does not look edited."""
    return hashlib.sha256(source.replace(b"\r\n", b"\n")).hexdigest()


@dataclass(frozen=True)
class Script:
    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: Path
    checksum: str
    upgrade: Callable[[Any], None] = field(repr=False, compare=False)
    downgrade: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)
    replaces_checksums: tuple[str, ...] = ()
    """Checksums of earlier texts of this script that did the same thing (its ``REPLACES_CHECKSUMS``)."""

    @property
    def is_merge(self) -> bool:
        return len(self.down_revisions) > 1

    def matches(self, checksum: Any) -> bool:
        """True when ``checksum`` (from the history or a run's progress) is this text's or one it replaces."""
        return checksum == self.checksum or checksum in self.replaces_checksums


def _down_revisions(path: Path, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        if len(set(value)) != len(value):
            raise InvalidArgument(f"{path}: down_revision lists a revision twice: {list(value)}")
        return tuple(value)
    raise InvalidArgument(
        f"{path}: down_revision must be None, a revision id or a tuple of ids (a merge), got {value!r}"
    )


def _replaces_checksums(path: Path, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and _CHECKSUM_RE.match(v) for v in value):
        raise InvalidArgument(
            f"{path}: REPLACES_CHECKSUMS must be a tuple of checksums of the script's earlier texts (sha256, 64 "
            f"lowercase hex digits, as script_checksum gives them), got {value!r}")
    return tuple(value)


def load_script(path: Path) -> Script:
    source = path.read_bytes()
    module_name = f"_mee_migration_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for non-.py paths
        raise InvalidArgument(f"{path} is not a Python file")
    module: ModuleType = importlib.util.module_from_spec(spec)
    try:
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise InvalidArgument(f"migration script {path} failed to import: {type(exc).__name__}: {exc}") from exc
    revision = getattr(module, "revision", None)
    if not isinstance(revision, str) or not _REVISION_RE.match(revision):
        raise InvalidArgument(
            f"{path}: `revision` must be a non-empty string of letters, digits and underscores, got {revision!r}"
        )
    if not hasattr(module, "down_revision"):
        raise InvalidArgument(f"{path}: missing `down_revision` (None for the first revision)")
    upgrade = getattr(module, "upgrade", None)
    if not callable(upgrade):
        raise InvalidArgument(f"{path}: missing `def upgrade(op)`")
    downgrade = getattr(module, "downgrade", None)
    if downgrade is not None and not callable(downgrade):
        raise InvalidArgument(f"{path}: `downgrade` must be a function `def downgrade(op)`")
    message = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    return Script(
        revision=revision,
        down_revisions=_down_revisions(path, module.down_revision),
        message=str(getattr(module, "message", message) or message),
        path=path,
        checksum=script_checksum(source),
        upgrade=upgrade,
        downgrade=downgrade,
        replaces_checksums=_replaces_checksums(path, getattr(module, "REPLACES_CHECKSUMS", None)),
    )


def load_scripts(directory: str | Path) -> list[Script]:
    """Every ``*.py`` in the directory (files starting with ``_`` are helpers, not revisions)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"migrations directory {directory} does not exist")
    scripts: list[Script] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        script = load_script(path)
        if script.revision in seen:
            raise InvalidArgument(
                f"revision {script.revision!r} is defined twice: {seen[script.revision]} and {path}; "
                "give one of them a new id"
            )
        seen[script.revision] = path
        scripts.append(script)
    return scripts


TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {revises}
Created: {created}
"""

revision = {revision!r}
down_revision = {down_revision!r}

# This revision's layout parameters, filled from the settings when `migrate revision` wrote the script. They
# are part of its text, so every environment that applies it gets the same schema: change them here, never
# in the environment. Use them as op.layout(**LAYOUT) (add truncated=..., store_text=... as needed).
LAYOUT = {layout!r}


def upgrade(op):
    """Record the operations that move the schema forward; `milvus-embed migrate plan` prints them."""
    pass


def downgrade(op):
    """Undo upgrade(). Delete this function to have the engine reverse upgrade()'s operations."""
    pass
'''


def _slug(message: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")
    return slug[:40] or "revision"


def write_revision(
    directory: str | Path,
    message: str,
    down_revisions: tuple[str, ...],
    revision: str | None = None,
    now: datetime | None = None,
    layout: Mapping[str, Any] | None = None,
) -> Path:
    """Write a new script from the template; returns its path. ``layout`` holds the parameters the script
    states (the settings' codec and index type, when :func:`new_revision` calls it)."""
    directory = Path(directory)
    if not message.strip():
        raise InvalidArgument("a revision needs a message: `milvus-embed migrate revision -m 'what it does'`")
    revision = revision or uuid.uuid4().hex[:12]
    if not _REVISION_RE.match(revision):
        raise InvalidArgument(f"revision id {revision!r} must be letters, digits and underscores")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{revision}_{_slug(message)}.py"
    if path.exists():
        raise AlreadyExists(f"{path} already exists")
    down: str | tuple[str, ...] | None
    down = None if not down_revisions else down_revisions[0] if len(down_revisions) == 1 else tuple(down_revisions)
    created = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S UTC")
    path.write_text(
        TEMPLATE.format(
            message=message.strip().replace('"""', "'''"),
            revision=revision,
            revises=", ".join(down_revisions) or "(base)",
            created=created,
            down_revision=down,
            layout=dict(layout or {}),
        ),
        encoding="utf-8",
    )
    return path
