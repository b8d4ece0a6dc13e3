"""ONNX Runtime backend for the XLM-RoBERTa body of :class:`~milvus_embed_ext.encoder.model.M3Encoder`.

The backend's one job is ``last_hidden_state``: the encoder's batching, the sparse and ColBERT heads
(fp32, ~0.4% of the FLOPs) and all post-processing are shared with the torch backend, so both produce
the same :class:`M3Output` (fp32: max abs difference ~3e-5 on the full-size checkpoint).

Variants (``Settings.backend``):

- ``onnx``: the body exported with torch's TorchScript exporter, then fused by onnxruntime's
  transformer optimizer (Attention, SkipLayerNormalization, BiasGelu).
- ``onnx-int8``: the same graph with dynamic int8 quantisation of the weights (MatMul, Attention,
  Gather); activations are quantised per call. Fidelity is measured in tests/encoder/test_onnx.py and
  bench/RESULTS.md.

Exports are cached under ``<cache_dir>/<fingerprint>-<variant>-e<EXPORT_VERSION>/`` (the fingerprint is
the checkpoint's content hash, :func:`~milvus_embed_ext.encoder.hub.fingerprint`), built in a
temporary directory and renamed into place, under a file lock, so concurrent processes export once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgument, ModelLoadError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_BACKENDS = ("onnx", "onnx-int8")
# Bump when the exported graph changes (exporter options, optimizer passes, quantisation settings).
EXPORT_VERSION = 1
OPSET = 17
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"  # both savers write the weights to <graph>.data
MANIFEST = "manifest.json"
INSTALL_HINT = "install it with `pip install 'milvus-embed-ext[onnx]'` or use backend=torch"


def check_backend(backend: Any) -> str:
    """The normalised backend name, or :class:`InvalidArgument` naming the choices."""
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise InvalidArgument(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend.strip().lower()


def default_cache_dir() -> Path:
    """Where exports live unless ``onnx_cache_dir`` says otherwise (next to the demo model's cache)."""
    return Path.home() / ".cache" / "milvus-embed" / "onnx"


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(f"the onnx backends need onnxruntime, which is not installed; {INSTALL_HINT}") from exc
    return onnxruntime


def export_dir(cache_dir: Path, fingerprint: str, variant: str) -> Path:
    """The cache entry for one checkpoint (by content hash) and variant."""
    return Path(cache_dir) / f"{fingerprint}-{variant}-e{EXPORT_VERSION}"


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive advisory lock: one process exports while the others wait and then reuse its result."""
    with open(lock_file, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_onnx_model(checkpoint: Path, fingerprint: str, variant: str, cache_dir: str | Path | None = None) -> Path:
    """The cached ``model.onnx`` for ``checkpoint``; exported (and for int8 quantised) on first use.

    Export costs about a minute and quantisation a few more on the full-size checkpoint, once per
    checkpoint content and variant. Raises :class:`ModelLoadError` when the cache is not writable or
    the export fails.
    """
    if variant not in ONNX_BACKENDS:
        raise InvalidArgument(f"variant must be one of {', '.join(ONNX_BACKENDS)}, got {variant!r}")
    _require_onnxruntime()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = export_dir(root, fingerprint, variant)
    if (target / MANIFEST).is_file():
        return target / MODEL_FILE
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = root / f".{target.name}.lock"
        with _locked(lock):
            if (target / MANIFEST).is_file():  # another process finished it while we waited
                return target / MODEL_FILE
            started = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
            try:
                if variant == "onnx":
                    _export_fp32(checkpoint, tmp)
                else:
                    fp32 = ensure_onnx_model(checkpoint, fingerprint, "onnx", root)
                    _quantize_int8(fp32, tmp)
                _write_manifest(tmp, fingerprint, variant, checkpoint)
                if target.exists():  # a stale, incomplete entry (no manifest): replace it
                    shutil.rmtree(target)
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            log.info("exported %s model for %s to %s in %.1f s", variant, checkpoint, target,
                     time.perf_counter() - started)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the {variant} export to {root}: {exc}; set onnx_cache_dir (MEE_ONNX_CACHE_DIR) "
            "to a writable directory"
        ) from exc
    return target / MODEL_FILE


def _write_manifest(out_dir: Path, fingerprint: str, variant: str, checkpoint: Path) -> None:
    import onnx
    import onnxruntime
    import torch

    info = {"fingerprint": fingerprint, "variant": variant, "export_version": EXPORT_VERSION, "opset": OPSET,
            "checkpoint": str(checkpoint), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out_dir / MANIFEST).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _export_fp32(checkpoint: Path, out_dir: Path) -> None:
    """TorchScript export of the body (eager attention: the pattern the optimizer fuses), then fusion."""
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(str(checkpoint), attn_implementation="eager").eval()
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the XLM-RoBERTa weights from {checkpoint} for export: {exc}") from exc
    config = model.config

    class Body(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    # Two rows of different lengths so the traced graph keeps the padding-mask path.
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]], dtype=torch.long)
    ids[ids == 1] = int(config.pad_token_id)
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [3]])).long()
    raw_dir = out_dir / "raw"
    raw_dir.mkdir()
    axes = {0: "batch", 1: "sequence"}
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(Body(model), (ids, mask), str(raw_dir / MODEL_FILE), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                          opset_version=OPSET, do_constant_folding=True)
    del model
    from onnxruntime.transformers.optimizer import optimize_model

    # opt_level=0: only the transformer fusions here; the session applies the hardware-specific passes.
    optimized = optimize_model(str(raw_dir / MODEL_FILE), model_type="bert", num_heads=int(config.num_attention_heads),
                               hidden_size=int(config.hidden_size), opt_level=0)
    optimized.save_model_to_file(str(out_dir / MODEL_FILE), use_external_data_format=True,
                                 all_tensors_to_one_file=True)
    del optimized
    shutil.rmtree(raw_dir)


def _quantize_int8(fp32_model: Path, out_dir: Path) -> None:
    """Dynamic int8 of the MatMul and Attention weights: per-channel, unsigned; activations per call.

    Unsigned weights because on AVX2 without VNNI the u8 x s8 kernel (VPMADDUBSW) saturates its 16-bit
    sums: per-channel s8 weights lost up to 0.25 dense cosine in our runs, u8 weights keep > 0.99. The
    embedding tables stay fp32 (a lookup costs nothing and quantising them costs fidelity).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: shape inference cannot type the outputs of the fused contrib ops (all float32 here).
    quantize_dynamic(str(fp32_model), str(out_dir / MODEL_FILE), op_types_to_quantize=["MatMul", "Attention"],
                     weight_type=QuantType.QUInt8, per_channel=True, use_external_data_format=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


class OnnxBody:
    """``last_hidden_state`` from an ONNX Runtime session (CPU). Thread-safe: ``run`` may be called concurrently."""

    def __init__(self, model_file: Path, threads: int | None = None) -> None:
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a corrupt cache entry or an incompatible onnxruntime
            raise ModelLoadError(
                f"cannot load the ONNX model {model_file}: {exc}; delete {Path(model_file).parent} to re-export it"
            ) from exc
        self.model_file = Path(model_file)

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        """torch int64 ``[rows, width]`` CPU tensors in, float32 ``[rows, width, hidden]`` tensor out."""
        import torch

        feeds = {"input_ids": np.ascontiguousarray(input_ids.numpy()),
                 "attention_mask": np.ascontiguousarray(attention_mask.numpy())}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return torch.from_numpy(hidden)
