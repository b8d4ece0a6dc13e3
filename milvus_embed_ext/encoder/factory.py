"""The one place an M3Encoder is built from Settings (the service, migration backfills and the CLI)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings
    from .model import M3Encoder


def encoder_from_settings(settings: Settings, path: str | None = None, **overrides: Any) -> M3Encoder:
    """Load ``path`` (default ``settings.model``) with the settings' encoder options; ``overrides`` win.

    A non-zero ``encoder_threads`` bounds torch's CPU threads first: the setting is process-wide, and an
    ONNX session reads it when it is created.
    """
    from .model import M3Encoder

    if settings.encoder_threads:
        import torch

        torch.set_num_threads(settings.encoder_threads)
    kwargs: dict[str, Any] = dict(device=settings.device, dtype=settings.dtype, max_length=settings.max_length,
                                  token_budget=settings.token_budget, max_batch=settings.max_batch,
                                  backend=settings.backend, onnx_cache_dir=settings.onnx_cache_dir or None)
    kwargs.update(overrides)
    return M3Encoder.from_pretrained(path or settings.model, **kwargs)
