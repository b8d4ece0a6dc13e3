"""The one place an M3Encoder (and the Reranker) is built from Settings (the service, migration backfills and the CLI)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings
    from .model import M3Encoder
    from .reranker import Reranker


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


def reranker_from_settings(settings: Settings, **overrides: Any) -> Reranker | None:
    """The cross-encoder of ``settings.reranker_model`` (None when it is empty: the stage is off).

    Device, dtype and backend default to the encoder's; ``overrides`` win. No demo fallback: a configured
    reranker that cannot be loaded fails start-up with the loader's message.
    """
    if not settings.reranker_model:
        return None
    from .reranker import Reranker

    if settings.encoder_threads:
        import torch

        torch.set_num_threads(settings.encoder_threads)
    kwargs: dict[str, Any] = dict(device=settings.reranker_device or settings.device,
                                  dtype=settings.reranker_dtype or settings.dtype,
                                  backend=settings.reranker_backend or settings.backend,
                                  max_length=settings.reranker_max_length,
                                  token_budget=settings.reranker_token_budget, max_batch=settings.reranker_max_batch,
                                  onnx_cache_dir=settings.onnx_cache_dir or None)
    kwargs.update(overrides)
    return Reranker.from_pretrained(settings.reranker_model, **kwargs)
