"""The `milvus-embed` command: thin. Parse arguments, build Settings, call the library, map errors.

Each area registers its own subcommands (``register(subparsers)`` in its ``cli`` module) so that
this file stays small; all of them share the settings flags below and the error mapping in ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .config import Settings, load_settings
from .errors import MilvusEmbedError

# Modules that contribute subcommands; each has ``register(subparsers) -> None``.
COMMAND_MODULES = (
    "milvus_embed_ext.encoder.cli",
    "milvus_embed_ext.service.cli",
    "milvus_embed_ext.migrations.cli",
    "milvus_embed_ext.demo",
)

# flag -> (settings field, help). Shared by every subcommand that talks to the model or Milvus.
SETTINGS_FLAGS: dict[str, tuple[str, str]] = {
    "--model": ("model", "hub id or local checkpoint dir (MEE_MODEL)"),
    "--device": ("device", "auto|cpu|cuda|cuda:N (MEE_DEVICE)"),
    "--dtype": ("dtype", "auto|fp32|fp16|bf16 (MEE_DTYPE)"),
    "--backend": ("backend", "torch|onnx|onnx-int8 (MEE_BACKEND)"),
    "--milvus-uri": ("milvus_uri", "Lite file path or http(s)://host:port (MEE_MILVUS_URI)"),
    "--collection": ("collection", "default collection (MEE_COLLECTION)"),
    "--migrations-dir": ("migrations_dir", "directory of migration scripts (MEE_MIGRATIONS_DIR)"),
}


def add_settings_args(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add ``--config`` and the named shared settings flags (all of them when none are named)."""
    parser.add_argument("--config", help="TOML settings file (MEE_CONFIG)")
    for flag in names or tuple(SETTINGS_FLAGS):
        dest, help_text = SETTINGS_FLAGS[flag]
        parser.add_argument(flag, dest=dest, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Settings from file + environment, overridden by whichever shared flags were given."""
    overrides = {dest: getattr(args, dest, None) for dest, _ in SETTINGS_FLAGS.values()}
    overrides.update(extra)
    return load_settings(getattr(args, "config", None), overrides=overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="milvus-embed",
        description="BGE-M3 sidecar for Milvus: embeddings, versioned collections, exact hybrid search.",
    )
    parser.add_argument("--version", action="version", version=f"milvus-embed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # an area not built yet must not break the others
            if exc.name == module_name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # milvus-lite 2.5.1 imports pkg_resources (hence setuptools<81); its deprecation warning is noise to users.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except MilvusEmbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
