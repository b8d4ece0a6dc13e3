"""Resolve a model argument (local directory or Hugging Face Hub id) to a checkpoint directory."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..errors import ModelLoadError

# What a BGE-M3 snapshot needs; the repo also carries ONNX exports and images we never download.
HUB_ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "pytorch_model*.bin",
    "colbert_linear.pt",
    "sparse_linear.pt",
    "sentencepiece.bpe.model",
]
HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
WEIGHT_GLOBS = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FINGERPRINT_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "sentencepiece.bpe.model", "colbert_linear.pt", "sparse_linear.pt",
    "model.safetensors.index.json", "pytorch_model.bin.index.json",
)
_FULL_HASH_LIMIT = 64 << 20
_SAMPLE = 1 << 20


def looks_like_hub_id(value: str) -> bool:
    """``owner/name`` that is not an existing or explicitly relative/absolute path."""
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "/", "~"))


def resolve_model_path(path_or_hub_id: str, *, allow_download: bool = True, cache_dir: str | None = None) -> Path:
    """A local checkpoint directory for ``path_or_hub_id``.

    An existing directory is returned as is. A hub id (``BAAI/bge-m3``) is looked up in the local
    Hugging Face cache first and, when ``allow_download``, downloaded (only the files BGE-M3 needs).
    Raises :class:`ModelLoadError` when neither works, so callers (the service) can decide to fall
    back to a demo checkpoint.
    """
    if not isinstance(path_or_hub_id, (str, os.PathLike)) or not str(path_or_hub_id).strip():
        raise ModelLoadError(f"model must be a checkpoint directory or a hub id like BAAI/bge-m3, got {path_or_hub_id!r}")
    value = str(path_or_hub_id).strip()
    local = Path(value).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelLoadError(f"model path {local} is a file; pass the checkpoint directory that contains config.json")
        return local
    if not looks_like_hub_id(value):
        raise ModelLoadError(f"model directory {local} does not exist (and {value!r} is not a hub id like BAAI/bge-m3)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise ModelLoadError("huggingface_hub is not installed; pass a local checkpoint directory") from exc
    try:
        return Path(snapshot_download(value, allow_patterns=HUB_ALLOW_PATTERNS, cache_dir=cache_dir,
                                      local_files_only=True))
    except Exception as cached_exc:  # noqa: BLE001 - any failure here means "not cached"
        if not allow_download:
            raise ModelLoadError(
                f"model {value!r} is not in the local Hugging Face cache and downloads are disabled; "
                f"download it first (huggingface-cli download {value}) or pass a local checkpoint directory"
            ) from cached_exc
    try:
        return Path(snapshot_download(value, allow_patterns=HUB_ALLOW_PATTERNS, cache_dir=cache_dir))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all reported the same way
        raise ModelLoadError(
            f"could not download model {value!r} from the Hugging Face Hub ({type(exc).__name__}); check network "
            "access (HF_ENDPOINT, proxies, HF_HUB_OFFLINE) or pass a local checkpoint directory"
        ) from exc


def missing_body_files(path: Path) -> list[str]:
    """What an XLM-RoBERTa checkpoint directory lacks (config, weights, tokenizer): the encoder's and the
    reranker's common part."""
    missing: list[str] = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(any(path.glob(g)) for g in WEIGHT_GLOBS):
        missing.append("model.safetensors (or pytorch_model.bin)")
    if not ((path / "tokenizer.json").is_file() or (path / "sentencepiece.bpe.model").is_file()):
        missing.append("tokenizer.json (or sentencepiece.bpe.model)")
    return missing


def check_checkpoint(path: Path) -> None:
    """Fail with the names of the missing files unless ``path`` holds a complete BGE-M3 checkpoint.

    FlagEmbedding silently replaces missing heads with random ones, which yields plausible-looking but
    meaningless sparse and ColBERT vectors; we refuse instead.
    """
    missing = missing_body_files(path) + [name for name in HEAD_FILES if not (path / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"checkpoint {path} is incomplete: missing {', '.join(missing)}. A BGE-M3 checkpoint is an "
            "XLM-RoBERTa directory plus colbert_linear.pt and sparse_linear.pt (the sparse and ColBERT heads)"
        )


def fingerprint(path: Path) -> str:
    """Stable identity of a checkpoint's content, independent of where it lives or its mtimes.

    Small files are hashed whole; weight files by size plus sampled 1 MiB windows (head, tail and
    evenly spaced), which tells apart any two checkpoints in practice without reading gigabytes.
    """
    h = hashlib.sha256()
    weight_files = sorted({p for g in WEIGHT_GLOBS for p in path.glob(g)})
    names = [n for n in _FINGERPRINT_FILES if (path / n).is_file()] + [p.name for p in weight_files]
    for name in names:
        file = path / name
        size = file.stat().st_size
        h.update(f"{name}\0{size}\0".encode())
        with open(file, "rb") as fh:
            if size <= _FULL_HASH_LIMIT:
                h.update(fh.read())
                continue
            for k in range(17):
                fh.seek(min(size - _SAMPLE, (size - _SAMPLE) * k // 16))
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()[:32]
