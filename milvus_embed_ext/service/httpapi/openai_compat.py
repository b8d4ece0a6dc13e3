"""OpenAI's ``POST /v1/embeddings`` and ``GET /v1/models`` (the openai client, pymilvus-model, LangChain,
LlamaIndex and Haystack speak it).

``input`` is a string or a list of strings (token-id arrays are refused: they would be another model's ids);
``dimensions`` returns the prefix of the full dense vector of the same forward pass, renormalised, as OpenAI's
text-embedding-3 models do; ``encoding_format`` is ``float`` or ``base64`` (little-endian float32, what the
openai client asks for by default); ``model`` is accepted whatever it names (one model is served) and the
response names the served one. Texts longer than max_length are truncated, as gRPC Embed does.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from .core import HttpCore
from .errors import BadParam
from .tei import json_type

_STARTED = int(time.time())


def _input(core: HttpCore, body: dict[str, Any]) -> list[str]:
    value = body.get("input")
    if value is None:
        raise BadParam("`input` is required: a string or a list of strings", "input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise BadParam(f"`input` must be a string or a list of strings, got {json_type(value)}", "input")
    core.check_batch(texts, "input")
    for i, text in enumerate(texts):
        if isinstance(text, str):
            if not text:
                raise BadParam(f"`input[{i}]` is an empty string; every input needs some text", "input")
            continue
        if isinstance(text, int) and not isinstance(text, bool) or isinstance(text, list):
            raise BadParam("`input` holds token ids; this server takes text only: send strings (LangChain's "
                           "OpenAIEmbeddings: check_embedding_ctx_length=False)", "input")
        raise BadParam(f"`input[{i}]` must be a string, got {json_type(text)}", "input")
    return texts


async def embeddings(core: HttpCore, body: dict[str, Any], timeout: float | None) -> Any:
    texts = _input(core, body)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadParam(f"`encoding_format` must be \"float\" or \"base64\", got {fmt!r}", "encoding_format")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadParam(f"`model` must be a string, got {json_type(model)}", "model")
    core.rt.require_encoder()
    try:
        dims = core.check_dims(body.get("dimensions"))
    except BadParam:
        raise
    except ValueError as exc:  # InvalidArgument: name the field for the client
        raise BadParam(str(exc), "dimensions") from None
    vectors, tokens = await core.dense(texts, dims, timeout)
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if fmt == "base64":
        data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode("ascii")}
                for i, v in enumerate(vectors)]
    else:
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    used = int(np.asarray(tokens).sum())
    return {"object": "list", "data": data, "model": core.model_name(),
            "usage": {"prompt_tokens": used, "total_tokens": used}}


async def models(core: HttpCore, body: Any, timeout: float | None) -> Any:
    return {"object": "list", "data": [{"id": core.model_name(), "object": "model", "created": _STARTED,
                                        "owned_by": "milvus-embed"}]}


__all__ = ["embeddings", "models"]
