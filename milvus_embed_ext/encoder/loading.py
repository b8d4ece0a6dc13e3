"""What loading the encoder and the reranker share, so both refuse the same arguments with the same words.

Argument checks, device / dtype / backend resolution, the checkpoint directory (local or hub id), the fast
tokenizer and the ONNX Runtime body (sized to torch's CPU threads, which the factory sets first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgument, ModelLoadError
from .hub import resolve_model_path

DTYPES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; validates the others."""
    import torch

    if not isinstance(device, str):
        raise InvalidArgument(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    dev = device.strip().lower()
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        return "cpu"
    if dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available here; use device=cpu or auto")
        if dev != "cuda" and int(dev[5:]) >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    raise InvalidArgument(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (Linux /proc/cpuinfo names) whose instructions multiply bf16 natively. Elsewhere torch emulates
bf16 and it is slower than fp32, so ``auto`` keeps fp32 there."""


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``/proc/cpuinfo``'s first ``flags`` line, or ``cpuinfo``);
    empty where there is no such file."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                           if line.startswith("flags")), []))


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU runs bf16 matrix work natively (AMX or AVX-512 BF16); False when it cannot tell."""
    return not cpu_flags(cpuinfo).isdisjoint(NATIVE_BF16_FLAGS)


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> fp16 on CUDA; on CPU bf16 where the CPU multiplies bf16 natively, else fp32.

    A one-query forward pass on CPU is bound by reading the weights: bf16 halves those bytes and AMX /
    AVX-512 BF16 run the products natively, so a query encodes 2-3x faster (bench/RESULTS.md, search
    stages) at a dense cosine of about 0.9999 to fp32. Pin ``fp32`` where bit-level parity with fp32 matters.
    """
    if not isinstance(dtype, str) or dtype.strip().lower() not in DTYPES:
        raise InvalidArgument(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    d = dtype.strip().lower()
    if d == "auto":
        if device.startswith("cuda"):
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return d


def torch_dtype(name: str) -> Any:
    """The torch dtype of a resolved dtype name (fp32, fp16, bf16)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, or :class:`InvalidArgument` naming ``name`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgument(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LoadTarget:
    """A checked load request: where the checkpoint is and how to run it."""

    path: Path
    device: str
    dtype: str
    backend: str
    max_length: int
    token_budget: int
    max_batch: int


def resolve_load(path_or_hub_id: str, *, device: str, dtype: str, backend: str, max_length: int,
                 min_length: int, token_budget: int, max_batch: int, allow_download: bool,
                 cache_dir: str | None) -> LoadTarget:
    """Checks a ``from_pretrained`` call's arguments, resolves device and dtype, then finds the checkpoint.

    The ONNX backends run on the CPU in fp32 (int8 weights for onnx-int8): any other device or dtype is
    refused rather than ignored. Arguments are checked before the (possibly downloading) path resolution.
    """
    max_length = check_positive_int("max_length", max_length, min_length)
    token_budget = check_positive_int("token_budget", token_budget)
    max_batch = check_positive_int("max_batch", max_batch)
    from .onnx_backend import check_backend

    backend = check_backend(backend)
    if backend != "torch":
        if not isinstance(device, str) or device.strip().lower() not in ("auto", "cpu"):
            raise InvalidArgument(f"backend {backend} runs on the CPU; use device=cpu (or auto), or backend=torch")
        if not isinstance(dtype, str) or dtype.strip().lower() not in ("auto", "fp32"):
            raise InvalidArgument(f"backend {backend} computes in fp32 (int8 weights for onnx-int8); "
                                  f"use dtype=fp32 (or auto), got {dtype!r}")
        device = "cpu"
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = resolve_model_path(path_or_hub_id, allow_download=allow_download, cache_dir=cache_dir)
    return LoadTarget(path=path, device=dev, dtype=dt, backend=backend, max_length=max_length,
                      token_budget=token_budget, max_batch=max_batch)


def load_fast_tokenizer(path: Path) -> Any:
    """The checkpoint's transformers tokenizer; a slow (Python) one is refused: we tokenise with its Rust core."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - report any tokenizer failure as a load error
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"the tokenizer in {path} has no fast (tokenizer.json) version; install `tokenizers`")
    return tokenizer


def load_onnx_body(path: Path, fingerprint: str, backend: str, onnx_cache_dir: str | None) -> Any:
    """The XLM-RoBERTa body in ONNX Runtime (exported once per checkpoint fingerprint), on torch's CPU threads."""
    import torch

    from .onnx_backend import OnnxBody, ensure_onnx_model

    return OnnxBody(ensure_onnx_model(path, fingerprint, backend, onnx_cache_dir), threads=torch.get_num_threads())
