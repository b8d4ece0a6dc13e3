"""What the HTTP routes share: batch limits, TEI's truncation rules, and the calls into the SAME micro-batcher
the gRPC handlers use (``Runtime.batcher``), so HTTP and gRPC requests share forward passes."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ...config import Settings
from ...contracts import PlainTokenizer, ServedEncoder, TokenEncoding
from ...errors import FailedPrecondition, InvalidArgument
from ..handlers import Runtime
from .errors import EmptyInput, InputTooLarge

# Tokenising more than this many characters moves off the event loop (a few ms of Rust work).
_INLINE_TOKENIZE_CHARS = 20_000
NO_RERANKER = "no reranker configured: set MEE_RERANKER_MODEL to a cross-encoder checkpoint to serve /rerank"


class Reranker(Protocol):
    """The cross-encoder the service may carry (the rerank issue): one score per passage, in input order,
    sigmoid-squashed when ``normalize``. Sync or async; it goes through the encoder's batcher itself."""

    def rerank(self, query: str, passages: Sequence[str], normalize: bool) -> list[float] | Awaitable[list[float]]: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the HTTP face reports about the model (TEI's ``/info``, the OpenAI model name, the length limit).

    Also answered while the model is still loading: then the settings stand in for what the encoder would say,
    and its fingerprint and width are not known yet."""

    name: str
    fingerprint: str | None
    dtype: str
    hidden_size: int | None
    max_length: int

    @classmethod
    def of(cls, encoder: ServedEncoder | None, settings: Settings) -> ModelInfo:
        if encoder is None:
            return cls(name=settings.model, fingerprint=None, dtype=settings.dtype, hidden_size=None,
                       max_length=settings.max_length)
        return cls(name=encoder.model_id, fingerprint=encoder.fingerprint or None, dtype=encoder.dtype,
                   hidden_size=encoder.hidden_size, max_length=encoder.max_length)


@dataclass(frozen=True)
class Token:
    """One token as TEI's ``/tokenize`` returns it (byte offsets into the UTF-8 text; none for special tokens)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class HttpCore:
    """Checks and encoder calls shared by the TEI and OpenAI routes; domain errors only."""

    def __init__(self, rt: Runtime, reranker: Callable[[], Reranker | None] = lambda: None) -> None:
        self.rt = rt
        self._reranker = reranker

    # ------------------------------------------------------------------ facts
    @property
    def max_texts(self) -> int:
        return self.rt.settings.max_texts_per_request

    def model_info(self) -> ModelInfo:
        return ModelInfo.of(self.rt.encoder, self.rt.settings)

    @property
    def max_length(self) -> int:
        return self.model_info().max_length

    def model_name(self) -> str:
        return self.model_info().name

    def has_reranker(self) -> bool:
        return self._reranker() is not None

    def hidden_size(self) -> int:
        encoder, _ = self.rt.require_encoder()
        return int(encoder.hidden_size)

    # ------------------------------------------------------------------ checks
    def check_batch(self, texts: Sequence[Any], field: str) -> None:
        if not texts:
            raise EmptyInput(f"`{field}` cannot be empty; send 1..{self.max_texts} texts")
        if len(texts) > self.max_texts:
            raise InputTooLarge(f"batch size {len(texts)} > maximum allowed batch size {self.max_texts} "
                                f"(max_texts_per_request); split `{field}` into smaller requests")

    def _tokenizer(self) -> PlainTokenizer:
        encoder, _ = self.rt.require_encoder()
        return encoder.plain_tokenizer()

    async def _encodings(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[TokenEncoding]:
        tok = self._tokenizer()
        if sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS:
            return tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return await asyncio.to_thread(tok.encode_batch, list(texts), add_special_tokens=add_special_tokens)

    async def fit(self, texts: list[str], *, truncate: bool, direction: str, field: str = "inputs") -> list[str]:
        """TEI's length rule: with ``truncate`` off a text over max_length tokens is an error (413); with it on,
        ``Right`` is what the encoder does anyway and ``Left`` keeps the end of the text (cut at a word start)."""
        if truncate and direction == "Right":
            return texts
        limit = self.max_length
        if all(len(t) + 3 <= limit and t.isascii() for t in texts):
            return texts  # ASCII: at most one token per character, plus a leading "▁" and the two special tokens
        encodings = await self._encodings(texts)
        out = list(texts)
        for i, enc in enumerate(encodings):
            n = len(enc.ids)
            if n <= limit:
                continue
            if not truncate:
                where = f"{field}[{i}]" if len(texts) > 1 else f"`{field}`"
                raise InputTooLarge(f"{where} must have less than {limit} tokens. Given: {n}; shorten it or send "
                                    "truncate=true")
            out[i] = _keep_tail(texts[i], enc, limit)
        return out

    # ------------------------------------------------------------------ work
    async def encode(self, texts: list[str], *, dense: bool = False, sparse: bool = False, colbert: bool = False,
                     dims: Sequence[int] = (), timeout: float | None = None) -> Any:
        """The M3Output of ``texts`` from the shared micro-batcher, at the server's max_length."""
        _, batcher = self.rt.require_encoder()
        result = await batcher.encode(texts, dense=dense, sparse=sparse, colbert=colbert, truncate_dims=list(dims),
                                      timeout=timeout)
        return result.output

    def check_dims(self, dimensions: Any, field: str = "dimensions") -> int | None:
        """``None`` or an int in 1..hidden size (the prefix length of the dense vector)."""
        if dimensions is None:
            return None
        hidden = self.hidden_size()
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise InvalidArgument(f"`{field}` must be an integer in 1..{hidden}, got {dimensions!r}")
        if dimensions <= 0:
            raise InvalidArgument(f"`{field}` should be positive: send an integer in 1..{hidden}, got {dimensions}")
        if dimensions > hidden:
            raise InvalidArgument(f"`{field}`={dimensions} is larger than the model's dimension {hidden}; send "
                                  f"1..{hidden} or leave it out for the full vector")
        return dimensions

    async def dense(self, texts: list[str], dims: int | None, timeout: float | None) -> tuple[Any, Any]:
        """(float32 [n, dims or hidden] L2-normalised vectors, token counts). ``dims`` takes the prefix of the full
        CLS vector of the same forward pass and renormalises it (what gRPC Embed's truncate_dims returns)."""
        hidden = self.hidden_size()
        if dims is None or dims == hidden:
            out = await self.encode(texts, dense=True, timeout=timeout)
            return out.dense, out.token_counts
        out = await self.encode(texts, dims=[dims], timeout=timeout)
        return out.truncated[dims], out.token_counts

    async def tokenize(self, texts: list[str], add_special_tokens: bool) -> list[list[Token]]:
        encodings = await self._encodings(texts, add_special_tokens)
        return [_tokens(text, enc) for text, enc in zip(texts, encodings, strict=True)]

    async def rerank(self, query: str, texts: list[str], normalize: bool) -> list[float]:
        scorer = self._reranker()
        if scorer is None:
            raise FailedPrecondition(NO_RERANKER)
        scores = scorer.rerank(query, texts, normalize)
        if inspect.isawaitable(scores):
            scores = await scores
        scores = [float(s) for s in scores]
        if len(scores) != len(texts):
            raise RuntimeError(f"the reranker returned {len(scores)} scores for {len(texts)} texts")
        return scores


def _keep_tail(text: str, encoding: TokenEncoding, limit: int) -> str:
    """The end of ``text`` that fits ``limit`` tokens with the special tokens: cut at the start of the first token
    that begins a word (SentencePiece's ``▁``) at or after the needed position, so the kept words tokenise as
    they did in the full text."""
    special = encoding.special_tokens_mask
    content = [i for i, s in enumerate(special) if not s]
    n_special = len(special) - len(content)
    keep = max(limit - n_special, 0)
    if keep == 0 or not content:
        return ""
    first = len(content) - keep
    tokens, offsets = encoding.tokens, encoding.offsets
    cut = offsets[content[first]][0]
    for j in content[first:]:
        if tokens[j].startswith("\u2581"):
            cut = offsets[j][0]
            break
    return text[cut:]


def _tokens(text: str, encoding: TokenEncoding) -> list[Token]:
    """TEI's SimpleToken list: the text slice and UTF-8 byte offsets of every non-special token."""
    byte_at = [0]
    for ch in text:
        byte_at.append(byte_at[-1] + len(ch.encode("utf-8", "surrogatepass")))
    out = []
    for tid, (start, stop), special, piece in zip(encoding.ids, encoding.offsets, encoding.special_tokens_mask,
                                                  encoding.tokens, strict=True):
        if special:
            out.append(Token(id=int(tid), text=piece, special=True, start=None, stop=None))
        else:
            out.append(Token(id=int(tid), text=text[start:stop], special=False, start=byte_at[start], stop=byte_at[stop]))
    return out


__all__ = ["HttpCore", "ModelInfo", "Reranker", "Token", "NO_RERANKER"]
