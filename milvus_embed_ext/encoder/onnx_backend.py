"""ONNX Runtime backend for the XLM-RoBERTa body of :class:`~milvus_embed_ext.encoder.model.M3Encoder`.

The backend's one job is ``last_hidden_state``: the encoder's batching, the sparse and ColBERT heads
(fp32, ~0.4% of the FLOPs) and all post-processing are shared with the torch backend, so both produce
the same :class:`M3Output` (fp32: max abs difference ~3e-5 on the full-size checkpoint).

Variants (``Settings.backend``):

- ``onnx``: the body exported with torch's TorchScript exporter, then fused by onnxruntime's
  transformer optimizer (Attention, SkipLayerNormalization, BiasGelu).
- ``onnx-int8``: the same graph with 8-bit block-quantised MatMul weights and int8 compute
  (``MatMulNBits``, see :func:`_quantize_int8`). Fidelity is measured in tests/encoder/test_onnx.py and
  bench/RESULTS.md.

Exports are cached under ``<cache_dir>/<fingerprint>-<variant>-e<version>/`` (the fingerprint is
the checkpoint's content hash, :func:`~milvus_embed_ext.encoder.hub.fingerprint`), built in a
temporary directory and renamed into place, under a file lock, so concurrent processes export once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
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
# Bump a variant's number when its graph changes (exporter options, optimizer passes, quantisation settings).
EXPORT_VERSION = {"onnx": 1, "onnx-int8": 2}
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
    return Path(cache_dir) / f"{fingerprint}-{variant}-e{EXPORT_VERSION[variant]}"


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
    except ImportError as exc:
        raise ModelLoadError(f"building the {variant} model needs the {exc.name} package; {INSTALL_HINT}") from exc
    except (ModelLoadError, InvalidArgument):
        raise
    except Exception as exc:  # noqa: BLE001 - exporter/optimizer/quantiser failures: a load error, not a crash
        raise ModelLoadError(f"building the {variant} model from {checkpoint} failed: {exc}; "
                             "use backend=torch, or report the checkpoint and versions") from exc
    return target / MODEL_FILE


def _write_manifest(out_dir: Path, fingerprint: str, variant: str, checkpoint: Path) -> None:
    import onnx
    import onnxruntime
    import torch

    info = {"fingerprint": fingerprint, "variant": variant, "export_version": EXPORT_VERSION[variant], "opset": OPSET,
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


def fp32_tail_nodes(matmul_names: list[str]) -> list[str]:
    """The MatMul nodes of the last ``layers // 12`` encoder layers (2 of BGE-M3's 24), kept fp32 in onnx-int8.

    Quantisation noise in the last layers reaches the sparse head undamped: on the full-size checkpoint,
    keeping the last 2 layers fp32 lifted the lexical-score Spearman from 0.976 to 0.984 for ~8% of the
    MatMul FLOPs. Small test models (fewer than 12 layers) quantise every layer.
    """
    layer_of = {n: int(m.group(1)) for n in matmul_names if (m := re.search(r"/layer\.(\d+)/", n))}
    if not layer_of:
        return []
    layers = max(layer_of.values()) + 1
    first_fp32 = layers - layers // 12
    return [n for n, k in layer_of.items() if k >= first_fp32]


def _quantize_int8(fp32_model: Path, out_dir: Path) -> None:
    """8-bit weights for the MatMuls (MatMulNBits: symmetric, blocks of 32 along the input dimension).

    accuracy_level=4 lets the kernel quantise activations to int8 per block of 32 as well, so the dot
    products run in int8 with a scale per 32 values instead of one per tensor. Measured on the full-size
    checkpoint, dynamic per-tensor int8 (QuantizeLinear/MatMulInteger) kept only 0.96-0.975 dense cosine
    (s8 weights also saturate VPMADDUBSW on AVX2 without VNNI); this keeps > 0.99. The fused Attention
    nodes (QKV projections), the embedding tables and the last layers (:func:`fp32_tail_nodes`) stay fp32.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    keep = fp32_tail_nodes([n.name for n in graph.node if n.op_type == "MatMul"])
    quantizer = MatMulNBitsQuantizer(str(fp32_model), bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=keep)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_dir / MODEL_FILE), use_external_data_format=True)


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
