"""The one place an M3Encoder is built from Settings (the service, migration backfills and the CLI)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings
    from .model import M3Encoder


def encoder_threads(settings: Settings, cores: int | None = None) -> int:
    """CPU threads for the encoder: ``encoder_threads`` when set; with embedded Milvus Lite on the same
    machine one core is left to it (its searches and writes run while the encoder works); 0 otherwise
    (torch's default, one per core)."""
    if settings.encoder_threads:
        return settings.encoder_threads
    if settings.is_embedded and settings.device in ("cpu", "auto"):
        return max(1, (cores if cores is not None else os.cpu_count() or 1) - 1)
    return 0


def encoder_from_settings(settings: Settings, path: str | None = None, **overrides: Any) -> M3Encoder:
    """Load ``path`` (default ``settings.model``) with the settings' encoder options; ``overrides`` win.

    :func:`encoder_threads` bounds torch's CPU threads first: the setting is process-wide, and an ONNX
    session reads it when it is created.
    """
    from .model import M3Encoder

    threads = encoder_threads(settings)
    if threads:
        import torch

        torch.set_num_threads(threads)
    kwargs: dict[str, Any] = dict(device=settings.device, dtype=settings.dtype, max_length=settings.max_length,
                                  token_budget=settings.token_budget, max_batch=settings.max_batch,
                                  backend=settings.backend, onnx_cache_dir=settings.onnx_cache_dir or None)
    kwargs.update(overrides)
    return M3Encoder.from_pretrained(path or settings.model, **kwargs)
