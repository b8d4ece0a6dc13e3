"""The one place an M3Encoder is built from Settings (the service, migration backfills and the CLI), and the
demo-model policy: when the configured hub model is out of reach, ``serve`` and ``demo`` run on a small
random checkpoint built locally, with a loud banner (``allow_demo_model``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import redact_uri
from ..errors import ModelLoadError

if TYPE_CHECKING:
    from ..config import Settings
    from .model import M3Encoder

log = logging.getLogger(__name__)


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


def load_encoder(settings: Settings) -> tuple[Any, Path]:
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
