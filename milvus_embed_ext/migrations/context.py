"""What a migration needs to know about its environment without loading the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument

# Hidden sizes of checkpoints we know, so `plan`/`check` work without the weights on disk.
KNOWN_DENSE_DIMS = {"BAAI/bge-m3": 1024}


def dense_dim_for_model(settings: Any) -> int:
    """The dense width of ``settings.model``: its config.json's hidden_size, or a known hub id's."""
    if settings is None:
        raise InvalidArgument("the layout's dense_dim needs settings (the model) or an explicit dense_dim")
    model = str(settings.model)
    local = Path(model).expanduser()
    config = local / "config.json"
    if config.is_file():
        try:
            return int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"{config} has no integer hidden_size: {exc}") from None
    if model in KNOWN_DENSE_DIMS:
        return KNOWN_DENSE_DIMS[model]
    try:  # a hub id already in the local cache
        from ..encoder.hub import resolve_model_path

        path = resolve_model_path(model, allow_download=False)
        return int(json.loads((path / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot tell
        raise InvalidArgument(
            f"cannot tell the dense width of model {model!r} without its config.json ({exc}); "
            "point --model at a local checkpoint directory"
        ) from None
