"""Cross-encoder reranker (bge-reranker-v2-m3): one logit per (query, passage) pair.

Matches FlagEmbedding's ``FlagReranker.compute_score`` (encoder-only ``BaseReranker``) score for score
(tests/encoder/test_reranker.py) without importing it. Pairs are built the way it builds them: the query
tokenised alone and cut to ``query_max_length`` (default ``max_length * 3 // 4``), the passage cut to
``max_length``, then ``<s> q </s></s> p </s>`` with the passage truncated ``only_second`` so the pair fits
``max_length``. ``normalize=True`` applies a sigmoid to the raw logit.

It is faster for the same reasons :class:`~.model.M3Encoder` is: the Rust tokenizer directly, batches by a
padded-token budget (:func:`~.batching.plan_batches`) rather than a fixed row count, no trial forward pass,
and the ONNX backends (the XLM-RoBERTa body exported once; the tiny classification head runs in fp32 torch).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgument, ModelLoadError
from .batching import pad_batch, plan_batches
from .hub import fingerprint, missing_body_files
from .loading import check_positive_int, load_fast_tokenizer, load_onnx_body, resolve_load, torch_dtype

MIN_LENGTH = 8  # <s> q </s></s> p </s>: four special tokens plus room for text
DEFAULT_MAX_LENGTH = 512


def sigmoid(x: float) -> float:
    """FlagEmbedding's sigmoid (float64 on the float32 logit), so normalised scores agree bit for bit."""
    return float(1 / (1 + np.exp(-x)))


def check_pairs(pairs: Any) -> list[tuple[str, str]]:
    """A list of (query, passage) string pairs; one bare pair is accepted, as FlagReranker accepts it."""
    if pairs is None or isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise InvalidArgument(f"pairs must be a list of (query, passage) string pairs, got {type(pairs).__name__}")
    items = list(pairs)
    if len(items) == 2 and all(isinstance(x, str) for x in items):
        items = [tuple(items)]
    out: list[tuple[str, str]] = []
    for i, pair in enumerate(items):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidArgument(f"pairs[{i}] must be a (query, passage) pair of strings, got {pair!r:.80}")
        q, p = pair
        if not isinstance(q, str) or not isinstance(p, str):
            raise InvalidArgument(f"pairs[{i}] must hold two strings, got ({type(q).__name__}, {type(p).__name__})")
        out.append((q, p))
    return out


def check_reranker_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's config, or the names of what is missing; refuses a model with more than one label."""
    missing = missing_body_files(path)
    if missing:
        raise ModelLoadError(f"reranker checkpoint {path} is incomplete: missing {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {exc}") from exc
    archs = config.get("architectures") or []
    labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    if not any(str(a).endswith("ForSequenceClassification") for a in archs) or labels != 1:
        raise ModelLoadError(
            f"{path} is not a one-logit cross-encoder (architectures={archs}, labels={labels}); a reranker is a "
            "*ForSequenceClassification checkpoint with one label, like BAAI/bge-reranker-v2-m3"
        )
    return config


class Reranker:
    """A loaded cross-encoder. Thread-safe for concurrent ``compute_score`` calls."""

    def __init__(self, *, logits_fn: Any, tokenizer: Any, config: Any, model_id: str, path: Path, device: str,
                 dtype: str, max_length: int, query_max_length: int | None, token_budget: int, max_batch: int,
                 fingerprint: str, backend: str = "torch", model: Any = None) -> None:
        self._logits = logits_fn  # (input_ids, attention_mask) torch tensors -> float32 [rows] logits
        self._model = model
        self.backend = backend
        self.model_id = model_id
        self.path = path
        self.device = device
        self.dtype = dtype
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.fingerprint = fingerprint
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.cls_token_id = int(tokenizer.cls_token_id)
        self.sep_token_id = int(tokenizer.sep_token_id)
        self.model_max_length = int(config.max_position_embeddings) - self.pad_token_id - 1
        self.max_length = self._check_max_length(max_length)
        self.query_max_length = (None if query_max_length is None
                                 else check_positive_int("query_max_length", query_max_length))
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok_lock = threading.Lock()

    def _check_max_length(self, value: Any) -> int:
        value = check_positive_int("max_length", value, MIN_LENGTH)
        if value > self.model_max_length:
            raise InvalidArgument(f"max_length {value} exceeds what the reranker supports ({self.model_max_length} tokens)")
        return value

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, device: str = "auto", dtype: str = "auto",
                        max_length: int = DEFAULT_MAX_LENGTH, token_budget: int = 16384, max_batch: int = 64, *,
                        query_max_length: int | None = None, allow_download: bool = True,
                        cache_dir: str | None = None, backend: str = "torch",
                        onnx_cache_dir: str | None = None) -> Reranker:
        """Load ``BAAI/bge-reranker-v2-m3`` (or any one-label XLM-RoBERTa cross-encoder) from the hub or a directory.

        ``backend``: ``torch`` (CPU or GPU, fp32/fp16/bf16), or ``onnx`` / ``onnx-int8`` (ONNX Runtime on the
        CPU; the body is exported once per checkpoint into ``onnx_cache_dir``, as for the encoder).
        Raises :class:`InvalidArgument` for bad arguments and :class:`ModelLoadError` for a missing,
        incomplete or wrong (not one-logit) checkpoint.
        """
        target = resolve_load(path_or_hub_id, device=device, dtype=dtype, backend=backend, max_length=max_length,
                              min_length=MIN_LENGTH, token_budget=token_budget, max_batch=max_batch,
                              allow_download=allow_download, cache_dir=cache_dir)
        path, dev, dt, backend = target.path, target.device, target.dtype, target.backend
        check_reranker_checkpoint(path)

        from transformers import AutoModelForSequenceClassification

        tokenizer = load_fast_tokenizer(path)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load the reranker weights from {path}: {exc}") from exc
        config = model.config
        fp = fingerprint(path)
        common = dict(tokenizer=tokenizer, config=config, model_id=str(path_or_hub_id), path=path,
                      max_length=target.max_length, query_max_length=query_max_length,
                      token_budget=target.token_budget, max_batch=target.max_batch, fingerprint=fp)
        if backend != "torch":
            body = load_onnx_body(path, fp, backend, onnx_cache_dir)
            head = model.classifier.float().eval()  # keep only the head; the body runs in ONNX Runtime
            del model

            def onnx_logits(input_ids: Any, attention_mask: Any) -> Any:
                hidden = body(input_ids, attention_mask)
                return head(hidden).view(-1).float()

            return cls(logits_fn=onnx_logits, device="cpu", dtype="fp32", backend=backend, **common)
        try:
            model = model.to(device=dev, dtype=torch_dtype(dt)).eval()
        except (RuntimeError, TypeError) as exc:
            raise ModelLoadError(f"cannot move the reranker to {dev} as {dt}: {exc}") from exc

        def torch_logits(input_ids: Any, attention_mask: Any) -> Any:
            return model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits.view(-1).float()

        return cls(logits_fn=torch_logits, device=dev, dtype=dt, backend="torch", model=model, **common)

    # ------------------------------------------------------------------ pairs
    def _encode(self, texts: list[str]) -> list[list[int]]:
        with self._tok_lock:
            return [enc.ids for enc in self._tok.encode_batch(texts, add_special_tokens=False)]

    def build_pairs(self, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> list[list[int]]:
        """Token ids of each pair, exactly as FlagEmbedding builds them (see the module docstring)."""
        items = check_pairs(pairs)
        if not items:
            return []
        limit = self.max_length if max_length is None else self._check_max_length(max_length)
        qmax = self.query_max_length if self.query_max_length is not None else limit * 3 // 4
        # Queries repeat (one query, many passages): tokenise each distinct query once.
        distinct = list(dict.fromkeys(q for q, _ in items))
        q_ids = dict(zip(distinct, (ids[:qmax] for ids in self._encode(distinct)), strict=True))
        p_ids = [ids[:limit] for ids in self._encode([p for _, p in items])]
        out: list[list[int]] = []
        for (q, _), p in zip(items, p_ids, strict=True):
            qi = q_ids[q]
            excess = len(qi) + len(p) + 4 - limit
            # transformers' only_second: cut the passage's tail; when the passage is too short to absorb the
            # excess it is left whole (FlagEmbedding's query limit keeps that from happening at sane lengths)
            if 0 < excess < len(p):
                p = p[:-excess]
            out.append([self.cls_token_id, *qi, self.sep_token_id, self.sep_token_id, *p, self.sep_token_id])
        return out

    def count_tokens(self, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> list[int]:
        """Tokens each pair occupies in a forward pass (special tokens included, after truncation)."""
        return [len(ids) for ids in self.build_pairs(pairs, max_length)]

    # ------------------------------------------------------------------ scoring
    def compute_score(self, pairs: Sequence[tuple[str, str]], normalize: bool = False, *,
                      max_length: int | None = None) -> list[float]:
        """One score per pair, in input order: the raw logit, or its sigmoid with ``normalize=True``."""
        return self.compute_score_detailed(pairs, normalize, max_length=max_length)[0]

    def compute_score_detailed(self, pairs: Sequence[tuple[str, str]], normalize: bool = False, *,
                               max_length: int | None = None) -> tuple[list[float], list[int]]:
        """:meth:`compute_score` plus each pair's token count (for responses and metrics), from one tokenisation."""
        ids = self.build_pairs(pairs, max_length)
        n = len(ids)
        scores = np.empty(n, dtype=np.float32)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        if n:
            for batch in plan_batches(lengths, self.token_budget, self.max_batch):
                scores[batch] = self._forward([ids[i] for i in batch])
        values = scores.tolist()
        if normalize:
            values = [sigmoid(v) for v in values]
        return values, lengths.tolist()

    def rerank(self, query: str, passages: Sequence[str], normalize: bool = False) -> list[float]:
        """Scores of ``passages`` against one ``query``, in passage order."""
        if not isinstance(query, str):
            raise InvalidArgument(f"query must be a string, got {type(query).__name__}")
        if isinstance(passages, (str, bytes)):
            raise InvalidArgument("passages must be a list of strings, got a single string; wrap it: [passage]")
        return self.compute_score([(query, p) for p in passages], normalize)

    def _forward(self, batch_ids: list[list[int]]) -> np.ndarray:
        import torch

        input_ids, mask, _ = pad_batch(batch_ids, self.pad_token_id)
        with torch.inference_mode():
            t_ids = torch.from_numpy(input_ids).to(self.device)
            t_mask = torch.from_numpy(mask.astype(np.int64)).to(self.device)
            return self._logits(t_ids, t_mask).cpu().numpy()

    def __repr__(self) -> str:
        return (f"Reranker(model_id={self.model_id!r}, backend={self.backend!r}, device={self.device!r}, "
                f"dtype={self.dtype!r}, max_length={self.max_length})")

