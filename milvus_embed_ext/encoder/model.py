"""BGE-M3 encoder: tokenise, one forward pass per batch, then dense, sparse and ColBERT heads.

Matches FlagEmbedding's ``BGEM3FlagModel`` output for output (see tests/encoder/test_parity.py) without
importing it: it loads the XLM-RoBERTa body with transformers' ``AutoModel`` and the two linear heads
from ``colbert_linear.pt`` / ``sparse_linear.pt``. It is faster because it tokenises with the Rust
tokenizer directly, batches by a padded-token budget instead of a fixed row count (and never runs
FlagEmbedding's trial forward pass), and turns token weights into sparse vectors with vectorised numpy.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgument, ModelLoadError
from .batching import pad_batch, plan_batches
from .hub import check_checkpoint, fingerprint
from .loading import (
    LoadTarget,
    check_positive_int,
    load_fast_tokenizer,
    load_onnx_body,
    resolve_load,
    torch_dtype,
)
from .output import M3Output

if TYPE_CHECKING:
    from ..contracts import PlainTokenizer

log = logging.getLogger(__name__)

MIN_LENGTH = 2  # room for <s> and </s>


def _check_texts(texts: Any) -> list[str]:
    if texts is None:
        raise InvalidArgument("texts must be a list of strings, got None")
    if isinstance(texts, (str, bytes)):
        raise InvalidArgument("texts must be a list of strings, got a single string; wrap it: [text]")
    if not isinstance(texts, Iterable):
        raise InvalidArgument(f"texts must be a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidArgument(f"texts[{i}] must be a string, got {type(t).__name__}")
    return out


class M3Encoder:
    """A loaded BGE-M3 checkpoint. Thread-safe for concurrent ``encode`` calls."""

    def __init__(self, *, model: Any, tokenizer: Any, colbert_linear: Any, sparse_linear: Any, model_id: str,
                 path: Path, device: str, dtype: str, max_length: int, token_budget: int, max_batch: int,
                 fingerprint: str, backend: str = "torch", body: Any = None, config: Any = None) -> None:
        self._model = model
        # The backend's only job: (input_ids, attention_mask) -> last_hidden_state. All else is shared.
        self._body = body if body is not None else self._torch_body
        self.backend = backend
        self._hf_tokenizer = tokenizer
        self._colbert = colbert_linear
        self._sparse = sparse_linear
        self.model_id = model_id
        self.path = path
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.fingerprint = fingerprint
        config = config if config is not None else model.config
        self.hidden_size: int = int(config.hidden_size)
        self.vocab_size: int = int(config.vocab_size)
        self.pad_token_id: int = int(tokenizer.pad_token_id)
        # Same ids FlagEmbedding drops from lexical weights: cls, eos, pad, unk.
        self.special_token_ids: frozenset[int] = frozenset(
            int(i) for i in (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                             tokenizer.unk_token_id) if i is not None
        )
        # Lookup table id -> is special: cheaper than np.isin on every batch.
        self._is_special = np.zeros(max(self.vocab_size, len(tokenizer)) + 1, dtype=bool)
        self._is_special[sorted(self.special_token_ids)] = True
        # XLM-R position ids start after padding_idx, so the usable length is max_positions - pad - 1.
        self.model_max_length: int = int(config.max_position_embeddings) - self.pad_token_id - 1
        self._backend_json: str = tokenizer.backend_tokenizer.to_str()
        self._tokenizers: OrderedDict[int, Any] = OrderedDict()
        self._plain_tok: PlainTokenizer | None = None  # built on first use (see plain_tokenizer)
        self._tok_lock = threading.Lock()
        if self.max_length > self.model_max_length:
            raise InvalidArgument(
                f"max_length {self.max_length} exceeds what the model supports ({self.model_max_length} tokens)"
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, device: str = "auto", dtype: str = "auto",
                        max_length: int = 8192, token_budget: int = 16384, max_batch: int = 64, *,
                        allow_download: bool = True, cache_dir: str | None = None, backend: str = "torch",
                        onnx_cache_dir: str | None = None) -> M3Encoder:
        """Load a BGE-M3 checkpoint directory or hub id (``BAAI/bge-m3``).

        ``backend``: ``torch``, or ``onnx`` / ``onnx-int8`` (ONNX Runtime on CPU, fp32 / int8 weights; the
        export is built once per checkpoint into ``onnx_cache_dir``, see :mod:`.onnx_backend`).
        Raises :class:`InvalidArgument` for bad arguments and :class:`ModelLoadError` when the
        checkpoint is missing, incomplete (e.g. no ``colbert_linear.pt``) or cannot be loaded.
        """
        import torch

        target = resolve_load(path_or_hub_id, device=device, dtype=dtype, backend=backend, max_length=max_length,
                              min_length=MIN_LENGTH, token_budget=token_budget, max_batch=max_batch,
                              allow_download=allow_download, cache_dir=cache_dir)
        path, dev, dt = target.path, target.device, target.dtype
        check_checkpoint(path)
        if target.backend != "torch":
            return cls._from_onnx(path_or_hub_id, target, onnx_cache_dir)

        from transformers import AutoModel

        tokenizer = load_fast_tokenizer(path)
        try:
            model = AutoModel.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load the XLM-RoBERTa weights from {path}: {exc}") from exc
        hidden = int(model.config.hidden_size)
        colbert = _load_head(path / "colbert_linear.pt", hidden, None)
        sparse = _load_head(path / "sparse_linear.pt", hidden, 1)
        try:
            model = model.to(device=dev, dtype=torch_dtype(dt)).eval()
            # Heads run in fp32 whatever the body's dtype: they are tiny and it keeps the outputs exact.
            colbert = colbert.to(device=dev, dtype=torch.float32).eval()
            sparse = sparse.to(device=dev, dtype=torch.float32).eval()
        except (RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"cannot move the model to {dev} as {dt}: {exc}") from exc
        return cls(model=model, tokenizer=tokenizer, colbert_linear=colbert, sparse_linear=sparse,
                   model_id=str(path_or_hub_id), path=path, device=dev, dtype=dt, max_length=target.max_length,
                   token_budget=target.token_budget, max_batch=target.max_batch, fingerprint=fingerprint(path))

    @classmethod
    def _from_onnx(cls, model_id: str, target: LoadTarget, onnx_cache_dir: str | None) -> M3Encoder:
        """The ONNX Runtime body (exported once, cached by fingerprint) with the same tokenizer and heads."""
        from transformers import AutoConfig

        path = target.path
        tokenizer = load_fast_tokenizer(path)
        try:
            config = AutoConfig.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load the config from {path}: {exc}") from exc
        fp = fingerprint(path)
        body = load_onnx_body(path, fp, target.backend, onnx_cache_dir)
        hidden = int(config.hidden_size)
        colbert = _load_head(path / "colbert_linear.pt", hidden, None).eval()
        sparse = _load_head(path / "sparse_linear.pt", hidden, 1).eval()
        return cls(model=None, tokenizer=tokenizer, colbert_linear=colbert, sparse_linear=sparse, model_id=str(model_id),
                   path=path, device="cpu", dtype="fp32", max_length=target.max_length,
                   token_budget=target.token_budget, max_batch=target.max_batch, fingerprint=fp,
                   backend=target.backend, body=body, config=config)

    # ------------------------------------------------------------------ tokenisation
    def _tokenizer(self, max_length: int) -> Any:
        """A Rust tokenizer truncating at ``max_length`` (one per length: truncation is tokenizer state)."""
        with self._tok_lock:
            tok = self._tokenizers.get(max_length)
            if tok is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_str(self._backend_json)
                tok.no_padding()
                tok.enable_truncation(max_length=max_length)
                self._tokenizers[max_length] = tok
                while len(self._tokenizers) > 8:
                    self._tokenizers.popitem(last=False)
            else:
                self._tokenizers.move_to_end(max_length)
            return tok

    def _resolve_max_length(self, max_length: int | None) -> int:
        if max_length is None:
            return self.max_length
        value = check_positive_int("max_length", max_length, MIN_LENGTH)
        if value > self.model_max_length:
            raise InvalidArgument(f"max_length {value} exceeds what the model supports ({self.model_max_length} tokens)")
        return value

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids per text, special tokens included, truncated like :meth:`encode` truncates."""
        items = _check_texts(texts)
        if not items:
            return []
        tok = self._tokenizer(self._resolve_max_length(max_length))
        return [enc.ids for enc in tok.encode_batch(items)]

    def count_tokens(self, texts: Sequence[str], max_length: int | None = None) -> list[int]:
        """Tokens each text will occupy in a forward pass (incl. special tokens, after truncation)."""
        return [len(ids) for ids in self.tokenize(texts, max_length)]

    def plain_tokenizer(self) -> PlainTokenizer:
        """The Rust tokenizer with neither truncation nor padding, shared and read-only: for length checks
        and token offsets (the HTTP face's ``truncate=false`` and ``/tokenize``). Do not change its state."""
        with self._tok_lock:
            if self._plain_tok is None:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_str(self._backend_json)
                tok.no_padding()
                tok.no_truncation()
                self._plain_tok = tok
            return self._plain_tok

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary piece for a sparse-vector key (for display and debugging)."""
        return self._hf_tokenizer.convert_ids_to_tokens(int(token_id))

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = True, colbert: bool = True,
               truncate_dims: Sequence[int] = (), max_length: int | None = None) -> M3Output:
        """Every requested representation of ``texts`` from one forward pass per batch, in input order."""
        items = _check_texts(texts)
        dims = self._check_dims(truncate_dims)
        ids = self.tokenize(items, max_length)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        n = len(ids)
        out_dense = np.empty((n, self.hidden_size), dtype=np.float32) if dense else None
        out_trunc = {d: np.empty((n, d), dtype=np.float32) for d in dims}
        out_sparse: list[dict[int, float]] | None = [{}] * n if sparse else None
        out_colbert: list[np.ndarray] | None = [np.empty((0, self.hidden_size), np.float32)] * n if colbert else None
        if n and (dense or sparse or colbert or dims):
            for batch in plan_batches(lengths, self.token_budget, self.max_batch):
                res = self._forward([ids[i] for i in batch], dense=dense or bool(dims), sparse=sparse,
                                    colbert=colbert, dims=dims)
                if out_dense is not None:
                    out_dense[batch] = res["dense"]
                for d in dims:
                    out_trunc[d][batch] = res["truncated"][d]
                if out_sparse is not None:
                    for j, i in enumerate(batch.tolist()):
                        out_sparse[i] = res["sparse"][j]
                if out_colbert is not None:
                    for j, i in enumerate(batch.tolist()):
                        out_colbert[i] = res["colbert"][j]
        return M3Output(dense=out_dense, sparse=out_sparse, colbert=out_colbert, truncated=out_trunc,
                        token_counts=lengths)

    def _check_dims(self, truncate_dims: Sequence[int]) -> tuple[int, ...]:
        if truncate_dims is None:
            return ()
        if isinstance(truncate_dims, (str, bytes)) or not isinstance(truncate_dims, Iterable):
            raise InvalidArgument(f"truncate_dims must be a list of integers, got {truncate_dims!r}")
        dims: list[int] = []
        for d in truncate_dims:
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= self.hidden_size:
                raise InvalidArgument(f"truncate_dims entries must be integers in 1..{self.hidden_size}, got {d!r}")
            if int(d) not in dims:
                dims.append(int(d))
        return tuple(dims)

    def _forward(self, batch_ids: list[list[int]], *, dense: bool, sparse: bool, colbert: bool,
                 dims: tuple[int, ...]) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F  # noqa: N812

        input_ids, mask, lens = pad_batch(batch_ids, self.pad_token_id)
        result: dict[str, Any] = {}
        with torch.inference_mode():
            t_ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
            t_mask = torch.from_numpy(mask.astype(np.int64)).to(self.device, non_blocking=True)
            hidden = self._body(t_ids, t_mask)
            if hidden.dtype != torch.float32:
                hidden = hidden.float()
            if dense:
                cls = hidden[:, 0]
                result["dense"] = F.normalize(cls, dim=-1).cpu().numpy()
                result["truncated"] = {d: F.normalize(cls[:, :d], dim=-1).cpu().numpy() for d in dims}
            if sparse:
                weights = torch.relu(self._sparse(hidden)).squeeze(-1).cpu().numpy()
                result["sparse"] = self._lexical_weights(input_ids, mask, weights)
            if colbert:
                tokens = hidden[:, 1:][t_mask[:, 1:].bool()]  # valid tokens only, CLS dropped
                vecs = F.normalize(self._colbert(tokens), dim=-1).cpu().numpy()
                result["colbert"] = np.split(vecs, np.cumsum(lens - 1)[:-1])
        return result

    def _torch_body(self, input_ids: Any, attention_mask: Any) -> Any:
        return self._model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    def _lexical_weights(self, input_ids: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> list[dict[int, float]]:
        """Per row: token id -> max weight over its positions, dropping special ids and weights <= 0."""
        keep = mask & (weights > 0) & ~self._is_special[input_ids]
        rows, cols = np.nonzero(keep)
        tids = input_ids[rows, cols]
        ws = weights[rows, cols]
        key = rows.astype(np.int64) * (int(input_ids.max()) + 1) + tids
        order = np.lexsort((-ws, key))  # by (row, id), heaviest first within a group
        key_sorted = key[order]
        first = np.ones(key_sorted.size, dtype=bool)
        first[1:] = key_sorted[1:] != key_sorted[:-1]
        pick = order[first]
        bounds = np.searchsorted(rows[pick], np.arange(input_ids.shape[0] + 1))
        id_list = tids[pick].tolist()
        w_list = ws[pick].tolist()
        return [dict(zip(id_list[a:b], w_list[a:b], strict=True))
                for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]

    def __repr__(self) -> str:
        return (f"M3Encoder(model_id={self.model_id!r}, backend={self.backend!r}, device={self.device!r}, "
                f"dtype={self.dtype!r}, "
                f"hidden_size={self.hidden_size}, max_length={self.max_length})")


def _load_head(file: Path, hidden: int, out_features: int | None) -> Any:
    """A head as ``torch.nn.Linear``; shape mismatches name the file (a wrong checkpoint, not a bug)."""
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {file}: {exc}") from exc
    if not isinstance(state, dict) or "weight" not in state or "bias" not in state:
        raise ModelLoadError(f"{file} is not a linear-layer state dict (expected 'weight' and 'bias')")
    weight = state["weight"]
    out = out_features if out_features is not None else int(weight.shape[0])
    if weight.ndim != 2 or weight.shape[1] != hidden or weight.shape[0] != out:
        raise ModelLoadError(f"{file} has weight shape {tuple(weight.shape)}; expected ({out}, {hidden}) for this model")
    layer = torch.nn.Linear(hidden, out)
    layer.load_state_dict({"weight": weight, "bias": state["bias"]})
    return layer
