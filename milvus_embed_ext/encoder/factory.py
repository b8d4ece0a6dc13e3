"""The one place an M3Encoder (and the Reranker) is built from Settings (the service, migration backfills and
the CLI), and the demo-model policy: when the configured hub model is out of reach, ``serve`` and ``demo`` run
on a small random checkpoint built locally, with a loud banner (``allow_demo_model``)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import redact_uri
from ..errors import ModelLoadError

if TYPE_CHECKING:
    from ..config import Settings
    from .model import M3Encoder
    from .reranker import Reranker

log = logging.getLogger(__name__)


def encoder_threads(settings: Settings, cores: int | None = None) -> int:
    """CPU threads for the encoder: ``encoder_threads`` when set; with embedded Milvus Lite on the same
    machine one core is left to it (its searches and writes run while the encoder works); 0 otherwise
    (torch's default, one per core)."""
    if settings.encoder_threads:
        return settings.encoder_threads
    if settings.is_embedded and settings.device in ("cpu", "auto"):
        return max(1, (cores if cores is not None else os.cpu_count() or 1) - 1)
    return 0


def _bound_torch_threads(settings: Settings) -> None:
    """Applies :func:`encoder_threads` to torch (process-wide; an ONNX session reads it when created)."""
    threads = encoder_threads(settings)
    if threads:
        import torch

        torch.set_num_threads(threads)


def encoder_from_settings(settings: Settings, path: str | None = None, **overrides: Any) -> M3Encoder:
    """Load ``path`` (default ``settings.model``) with the settings' encoder options; ``overrides`` win.

    :func:`encoder_threads` bounds torch's CPU threads first: the setting is process-wide, and an ONNX
    session reads it when it is created.
    """
    from .model import M3Encoder

    _bound_torch_threads(settings)
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

    _bound_torch_threads(settings)
    kwargs: dict[str, Any] = dict(device=settings.reranker_device or settings.device,
                                  dtype=settings.reranker_dtype or settings.dtype,
                                  backend=settings.reranker_backend or settings.backend,
                                  max_length=settings.reranker_max_length,
                                  token_budget=settings.reranker_token_budget, max_batch=settings.reranker_max_batch,
                                  onnx_cache_dir=settings.onnx_cache_dir or None)
    kwargs.update(overrides)
    return Reranker.from_pretrained(settings.reranker_model, **kwargs)


DEMO_BANNER = """
################################################################################
#  WARNING: DEMO MODEL IN USE - EMBEDDINGS AND SEARCH RESULTS CARRY NO MEANING  #
################################################################################
#  The model {model!r} is neither in the local Hugging Face cache nor
#  downloadable from here ({reason}).
#  The sidecar is running on a small RANDOM checkpoint built locally at
#  {path}
#  so that the API can be tried. Point it at the real model with
#     MEE_MODEL=/path/to/bge-m3   (a local checkpoint directory), or make
#     BAAI/bge-m3 downloadable / pre-download it:  huggingface-cli download BAAI/bge-m3
#  Disable this fallback with MEE_ALLOW_DEMO_MODEL=false.
#  Collection {collection!r} in {uri} gets the demo's small vectors: drop it
#  (milvus-embed migrate downgrade base) before switching to the real model.
################################################################################
"""


def demo_model_dir() -> Path:
    return Path.home() / ".cache" / "milvus-embed" / "demo-model-tiny"


FALLBACK_DEMO_DIR = Path("data") / "demo-model-tiny"
"""Where the demo checkpoint is built when the home directory is not writable (containers)."""


def is_demo_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is the meaningless demo checkpoint :func:`load_encoder` falls back to."""
    resolved = Path(path).expanduser().resolve()
    return resolved in {demo_model_dir().expanduser().resolve(), FALLBACK_DEMO_DIR.resolve()}


def load_encoder(settings: Settings) -> tuple[M3Encoder, Path]:
    """The M3Encoder for ``settings.model`` and its local directory; the demo checkpoint when allowed and the
    hub is out of reach (a loud banner on stderr says so)."""
    from .hub import looks_like_hub_id, resolve_model_path

    try:
        path = resolve_model_path(settings.model)
    except ModelLoadError as exc:
        if not (settings.allow_demo_model and looks_like_hub_id(settings.model)):
            raise
        from .testmodel import ensure_test_model

        try:
            path = ensure_test_model(demo_model_dir(), size="tiny", seed=0)
        except OSError:  # home not writable (containers): build next to the data
            path = ensure_test_model(FALLBACK_DEMO_DIR, size="tiny", seed=0)
        banner = DEMO_BANNER.format(model=settings.model, reason=str(exc).split(";")[0], path=path,
                                    collection=settings.collection, uri=redact_uri(settings.milvus_uri))
        print(banner, file=sys.stderr, flush=True)
        log.warning("DEMO MODEL IN USE: results carry no meaning; set MEE_MODEL to a real BGE-M3 checkpoint",
                    extra={"requested_model": settings.model, "demo_path": str(path)})
    return encoder_from_settings(settings, str(path)), Path(path)
