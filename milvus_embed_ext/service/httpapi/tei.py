"""text-embeddings-inference's routes, with TEI's request and response shapes (router/src/http/types.rs).

``/embed`` (also ``POST /``, where TEI serves its default task), ``/embed_sparse`` (BGE-M3's lexical weights),
``/embed_all`` (BGE-M3's ColBERT vectors, one per token after CLS), ``/rerank`` (when the service carries a
reranker), ``/tokenize``, ``/info``, ``/health``. Handlers parse and check the body, call :class:`HttpCore`
and return JSON-ready values; errors are domain errors (mapped by ``errors.tei_error``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import __version__
from ...errors import Unavailable
from .core import HttpCore
from .errors import BadParam

DIRECTIONS = {"left": "Left", "right": "Right"}
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # TEI names them so in /info
# The sidecar always truncates at max_length when a request does not say otherwise (gRPC does the same).
AUTO_TRUNCATE = True


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _token_ids(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def texts_of(body: dict[str, Any], field: str = "inputs") -> tuple[list[str], bool]:
    """(texts, was a single string) of a field that holds a string or a list of strings."""
    if field not in body or body[field] is None:
        raise BadParam(f"`{field}` is required: a string or a list of strings", field)
    value = body[field]
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list):
        raise BadParam(f"`{field}` must be a string or a list of strings, got {json_type(value)}", field)
    if _token_ids(value) or any(_token_ids(v) for v in value):
        raise BadParam(f"`{field}` holds token ids; this server takes text only: send strings", field)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise BadParam(f"`{field}[{i}]` must be a string, got {json_type(v)}", field)
    return value, False


def _bool(body: dict[str, Any], field: str, default: bool) -> bool:
    value = body.get(field)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadParam(f"`{field}` must be true or false, got {json_type(value)} {value!r}", field)
    return value


def _direction(body: dict[str, Any]) -> str:
    value = body.get("truncation_direction")
    if value is None:
        return "Right"
    if not isinstance(value, str) or value.lower() not in DIRECTIONS:
        raise BadParam(f"`truncation_direction` must be \"Left\" or \"Right\", got {value!r}", "truncation_direction")
    return DIRECTIONS[value.lower()]


def _no_prompt(body: dict[str, Any]) -> None:
    if body.get("prompt_name") is not None:
        raise BadParam("`prompt_name` is set but this server has no named prompts; BGE-M3 needs none (prepend any "
                       "instruction to the text yourself, as Milvus does with ingestion_prompt/search_prompt)",
                       "prompt_name")


async def _texts(core: HttpCore, body: dict[str, Any]) -> list[str]:
    """``inputs`` checked for count, prompt and length, truncated as the request says."""
    texts, _ = texts_of(body)
    core.check_batch(texts, "inputs")
    _no_prompt(body)
    core.rt.require_encoder()
    return await core.fit(texts, truncate=_bool(body, "truncate", AUTO_TRUNCATE), direction=_direction(body))


async def embed(core: HttpCore, body: dict[str, Any], timeout: float | None) -> Any:
    if not _bool(body, "normalize", True):
        raise BadParam("`normalize`=false is not available: BGE-M3's dense vectors are L2-normalised; drop the field",
                       "normalize")
    dims = core.check_dims(body.get("dimensions"))
    texts = await _texts(core, body)
    vectors, _ = await core.dense(texts, dims, timeout)
    return vectors  # [[float]] even for a single string, like TEI


async def embed_sparse(core: HttpCore, body: dict[str, Any], timeout: float | None) -> Any:
    texts = await _texts(core, body)
    out = await core.encode(texts, sparse=True, timeout=timeout)
    return [[{"index": int(k), "value": float(w[k])} for k in sorted(w)] for w in out.sparse]


async def embed_all(core: HttpCore, body: dict[str, Any], timeout: float | None) -> Any:
    texts = await _texts(core, body)
    out = await core.encode(texts, colbert=True, timeout=timeout)
    return [np.ascontiguousarray(m, dtype=np.float32) for m in out.colbert]


async def rerank(core: HttpCore, body: dict[str, Any], timeout: float | None) -> Any:
    query = body.get("query")
    if not isinstance(query, str):
        raise BadParam(f"`query` must be a string, got {json_type(query)}", "query")
    texts, single = texts_of(body, "texts")
    if single:
        raise BadParam("`texts` must be a list of strings", "texts")
    core.check_batch(texts, "texts")
    _bool(body, "truncate", AUTO_TRUNCATE)
    _direction(body)
    raw = _bool(body, "raw_scores", False)
    return_text = _bool(body, "return_text", False)
    scores = await core.rerank(query, texts, normalize=not raw)
    if any(s != s for s in scores):
        raise RuntimeError("the reranker returned NaN")
    ranks = []
    for i in sorted(range(len(texts)), key=lambda i: scores[i], reverse=True):
        rank: dict[str, Any] = {"index": i, "score": scores[i]}
        if return_text:
            rank["text"] = texts[i]
        ranks.append(rank)
    return ranks


async def tokenize(core: HttpCore, body: dict[str, Any], timeout: float | None) -> Any:
    texts, _ = texts_of(body)
    core.check_batch(texts, "inputs")
    _no_prompt(body)
    tokens = await core.tokenize(texts, _bool(body, "add_special_tokens", True))
    return [[{"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop} for t in row]
            for row in tokens]


async def info(core: HttpCore, body: Any, timeout: float | None) -> Any:
    model = core.model_info()
    s = core.rt.settings
    return {
        "model_id": model.name,
        "model_sha": model.fingerprint,
        "model_dtype": _DTYPES.get(model.dtype, model.dtype),
        "served_model_name": model.name,
        "model_type": {"embedding": {"pooling": "cls"}},
        "max_concurrent_requests": s.max_concurrent,
        "max_input_length": model.max_length,
        "max_batch_tokens": s.token_budget,
        "max_batch_requests": s.max_batch,
        "max_client_batch_size": core.max_texts,
        "auto_truncate": AUTO_TRUNCATE,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
        # beyond TEI: what this server adds
        "dense_dim": model.hidden_size,
        "representations": ["dense", "sparse", "colbert"],
        "reranker": core.has_reranker(),
    }


def health(core: HttpCore, stopping: bool) -> None:
    if stopping:
        raise Unavailable("unhealthy: the server is shutting down")
    if core.rt.encoder is None or core.rt.batcher is None:
        raise Unavailable("unhealthy: the model is still loading")


__all__ = ["embed", "embed_sparse", "embed_all", "rerank", "tokenize", "info", "health", "texts_of", "json_type"]
