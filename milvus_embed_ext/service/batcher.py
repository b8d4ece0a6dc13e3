"""Dynamic micro-batching: concurrent requests share encoder forward passes.

Every Embed, Upsert and HybridSearch request puts its texts on one bounded queue. A dispatcher task
takes the oldest request, waits up to ``max_wait_ms`` for more (or until ``max_batch`` texts /
``token_budget`` estimated tokens are gathered), merges what is compatible (same ``max_length``) into
one ``encoder.encode`` call on the ONE encoder thread, and hands each request its own rows.
The encoder itself splits a call into length-sorted token-budget forward passes.

* Full queue (``max_queue`` texts waiting): :class:`ResourceExhausted` at once, nothing queued.
* Cancelled or timed-out requests leave the queue immediately; a request whose deadline passed while
  waiting is dropped at dispatch, so dead work never reaches the model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..contracts import TextEncoder
from ..errors import DeadlineExceeded, ResourceExhausted, Unavailable

log = logging.getLogger("milvus_embed_ext.service.batcher")


class _BatchMetrics(Protocol):
    queue_depth: Any

    def observe_batch(self, n_requests: int, n_texts: int, n_tokens: int, seconds: float) -> None: ...


@dataclass(frozen=True)
class EncodeResult:
    output: Any  # M3Output with this request's rows (possibly more representations than asked)
    queue_ms: float
    inference_ms: float
    batch_requests: int
    batch_texts: int


@dataclass(eq=False)
class _Item:
    texts: tuple[str, ...]
    dense: bool
    sparse: bool
    colbert: bool
    truncate_dims: tuple[int, ...]
    max_length: int | None
    est_tokens: int
    deadline: float | None  # loop.time()
    future: asyncio.Future[EncodeResult]
    enqueued: float = field(default_factory=time.perf_counter)


def estimate_tokens(text: str, max_length: int) -> int:
    """Cheap token estimate for batch sizing (~4 chars per token + CLS/EOS), capped at max_length."""
    return min(max_length, len(text) // 4 + 2)


class Batcher:
    """Owns the encoder thread. Use ``await start()``, ``await encode(...)``, ``await stop()``."""

    def __init__(self, encoder: TextEncoder, *, token_budget: int, max_batch: int, max_wait_ms: float,
                 max_queue: int, max_length: int, metrics: _BatchMetrics | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self.encoder = encoder
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms / 1000.0)
        self.max_queue = max_queue
        self.max_length = max_length
        self.metrics = metrics
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mee-encoder")
        self._pending: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mee-batcher")

    async def stop(self) -> None:
        """Fail whatever is still queued (the server drains requests before calling this)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable("the server is shutting down; retry on another replica"))
        self._set_depth()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    @property
    def queued_texts(self) -> int:
        """Texts waiting for the encoder (the queue holds at most max_queue texts, so summing is cheap)."""
        return sum(len(i.texts) for i in self._pending)

    # ------------------------------------------------------------------ API
    async def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = True, colbert: bool = False,
                     truncate_dims: Sequence[int] = (), max_length: int | None = None,
                     timeout: float | None = None) -> EncodeResult:
        """Encode ``texts`` in a shared forward pass; ``timeout`` (seconds) bounds queue + inference."""
        if self._closed or self._wakeup is None:
            raise Unavailable("the encoder is not running (server starting or shutting down); retry shortly")
        n = len(texts)
        queued = self.queued_texts
        if queued + n > self.max_queue:
            raise ResourceExhausted(
                f"encoder queue is full ({queued} texts waiting, max_queue={self.max_queue}); "
                "retry with backoff, send fewer texts per request, or raise MEE_MAX_QUEUE"
            )
        loop = asyncio.get_running_loop()
        limit = max_length or self.max_length
        item = _Item(
            texts=tuple(texts), dense=dense, sparse=sparse, colbert=colbert,
            truncate_dims=tuple(truncate_dims), max_length=max_length,
            est_tokens=sum(estimate_tokens(t, limit) for t in texts),
            deadline=None if timeout is None else loop.time() + timeout,
            future=loop.create_future(),
        )
        self._pending.append(item)
        self._set_depth()
        self._wakeup.set()
        try:
            if timeout is None:
                return await asyncio.shield(item.future)
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except asyncio.TimeoutError:
            self._forget(item)
            raise DeadlineExceeded(
                f"deadline passed while encoding {n} text(s) ({self.queued_texts} texts queued); "
                "raise the client timeout or send fewer texts"
            ) from None
        except asyncio.CancelledError:
            self._forget(item)  # client went away: leave the queue now
            raise

    # ------------------------------------------------------------------ internals
    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queued_texts)

    def _forget(self, item: _Item) -> None:
        with contextlib.suppress(ValueError):
            self._pending.remove(item)
            self._set_depth()
        if not item.future.done():
            item.future.cancel()

    def _take_batch(self) -> list[_Item]:
        """Oldest live request plus every later compatible one that fits the limits, in FIFO order."""
        now = asyncio.get_running_loop().time()
        batch: list[_Item] = []
        texts = tokens = 0
        kept: collections.deque[_Item] = collections.deque()
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():  # cancelled meanwhile
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("deadline passed while queued for the encoder"))
                continue
            fits = not batch or (
                item.max_length == batch[0].max_length
                and texts + len(item.texts) <= self.max_batch
                and tokens + item.est_tokens <= self.token_budget
            )
            if fits:
                batch.append(item)
                texts += len(item.texts)
                tokens += item.est_tokens
            else:
                kept.append(item)
        self._pending = kept
        self._set_depth()
        return batch

    def _gathered(self) -> tuple[int, int]:
        return self.queued_texts, sum(i.est_tokens for i in self._pending)

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            # Short bounded wait for company, unless the batch is already full.
            deadline = loop.time() + self.max_wait_s
            while True:
                texts, tokens = self._gathered()
                remaining = deadline - loop.time()
                if texts >= self.max_batch or tokens >= self.token_budget or remaining <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                self._wakeup.clear()
            while self._pending:
                batch = self._take_batch()
                if batch:
                    await self._execute(batch)
                else:
                    break

    async def _execute(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        texts = [t for item in batch for t in item.texts]
        dense = any(i.dense for i in batch)
        sparse = any(i.sparse for i in batch)
        colbert = any(i.colbert for i in batch)
        dims = tuple(sorted({d for i in batch for d in i.truncate_dims}))
        max_length = batch[0].max_length
        started = time.perf_counter()
        try:
            output = await loop.run_in_executor(
                self._executor,
                lambda: self.encoder.encode(texts, dense=dense, sparse=sparse, colbert=colbert,
                                            truncate_dims=dims, max_length=max_length),
            )
        except Exception as exc:  # every request of the batch gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finished = time.perf_counter()
        seconds = finished - started
        n_tokens = int(output.token_counts.sum())
        if self.metrics is not None:
            self.metrics.observe_batch(len(batch), len(texts), n_tokens, seconds)
        log.debug("encoded batch", extra={"requests": len(batch), "texts": len(texts), "tokens": n_tokens,
                                          "inference_ms": round(seconds * 1000, 3)})
        offset = 0
        for item in batch:
            rows = range(offset, offset + len(item.texts))
            offset += len(item.texts)
            if item.future.done():
                continue
            item.future.set_result(EncodeResult(
                output=output.select(list(rows)),
                queue_ms=(started - item.enqueued) * 1000.0,
                inference_ms=seconds * 1000.0,
                batch_requests=len(batch),
                batch_texts=len(texts),
            ))


# ---------------------------------------------------------------------------- reranker


class _Reranker(Protocol):
    def compute_score_detailed(self, pairs: Sequence[tuple[str, str]], normalize: bool = False, *,
                               max_length: int | None = None) -> tuple[list[float], list[int]]: ...


class _RerankMetrics(Protocol):
    rerank_queue_depth: Any

    def observe_rerank(self, n_requests: int, n_pairs: int, n_tokens: int, seconds: float) -> None: ...


@dataclass(frozen=True)
class RerankBatchResult:
    scores: list[float]
    """Raw logits, one per passage, in request order (the caller applies the sigmoid if asked)."""
    token_counts: list[int]
    queue_ms: float
    inference_ms: float
    batch_requests: int
    batch_pairs: int


@dataclass(eq=False)
class _RerankItem:
    query: str
    passages: tuple[str, ...]
    est_tokens: int
    deadline: float | None
    future: asyncio.Future[RerankBatchResult]
    enqueued: float = field(default_factory=time.perf_counter)


class RerankBatcher:
    """The reranker's own queue and thread: concurrent Rerank calls and search stage 3 share forward passes.

    Separate from :class:`Batcher` on purpose: a burst of reranks (hundreds of pairs each) waits in its own
    bounded queue (``max_queue`` pairs) and runs on its own thread, so embedding requests never queue
    behind it. The same rules as the encoder's: full queue -> ResourceExhausted at once; cancelled or
    expired requests leave the queue; requests are merged FIFO up to ``max_batch`` pairs / ``token_budget``
    estimated tokens (a larger request runs alone) and the reranker splits a call into token-budget passes.
    """

    def __init__(self, reranker: _Reranker, *, token_budget: int, max_batch: int, max_wait_ms: float,
                 max_queue: int, max_length: int, metrics: _RerankMetrics | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        self.reranker = reranker
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms / 1000.0)
        self.max_queue = max_queue
        self.max_length = max_length
        self.metrics = metrics
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="mee-reranker")
        self._pending: collections.deque[_RerankItem] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mee-rerank-batcher")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable("the server is shutting down; retry on another replica"))
        self._set_depth()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    @property
    def queued_pairs(self) -> int:
        return sum(len(i.passages) for i in self._pending)

    async def score(self, query: str, passages: Sequence[str], *, timeout: float | None = None) -> RerankBatchResult:
        """Raw cross-encoder logits of ``passages`` against ``query``; ``timeout`` bounds queue + inference."""
        if self._closed or self._wakeup is None:
            raise Unavailable("the reranker is not running (server starting or shutting down); retry shortly")
        n = len(passages)
        queued = self.queued_pairs
        if queued + n > self.max_queue:
            raise ResourceExhausted(
                f"reranker queue is full ({queued} pairs waiting, reranker_max_queue={self.max_queue}); "
                "retry with backoff, send fewer passages, or raise MEE_RERANKER_MAX_QUEUE"
            )
        loop = asyncio.get_running_loop()
        q_tokens = estimate_tokens(query, self.max_length * 3 // 4)
        item = _RerankItem(
            query=query, passages=tuple(passages),
            est_tokens=sum(min(self.max_length, q_tokens + estimate_tokens(p, self.max_length) + 2) for p in passages),
            deadline=None if timeout is None else loop.time() + timeout, future=loop.create_future(),
        )
        self._pending.append(item)
        self._set_depth()
        self._wakeup.set()
        try:
            if timeout is None:
                return await asyncio.shield(item.future)
            return await asyncio.wait_for(asyncio.shield(item.future), timeout)
        except asyncio.TimeoutError:
            self._forget(item)
            raise DeadlineExceeded(
                f"deadline passed while reranking {n} passage(s) ({self.queued_pairs} pairs queued); "
                "raise the client timeout or send fewer passages"
            ) from None
        except asyncio.CancelledError:
            self._forget(item)
            raise

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.rerank_queue_depth.set(self.queued_pairs)

    def _forget(self, item: _RerankItem) -> None:
        with contextlib.suppress(ValueError):
            self._pending.remove(item)
            self._set_depth()
        if not item.future.done():
            item.future.cancel()

    def _take_batch(self) -> list[_RerankItem]:
        now = asyncio.get_running_loop().time()
        batch: list[_RerankItem] = []
        pairs = tokens = 0
        kept: collections.deque[_RerankItem] = collections.deque()
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():
                continue
            if item.deadline is not None and item.deadline <= now:
                item.future.set_exception(DeadlineExceeded("deadline passed while queued for the reranker"))
                continue
            if not batch or (pairs + len(item.passages) <= self.max_batch
                             and tokens + item.est_tokens <= self.token_budget):
                batch.append(item)
                pairs += len(item.passages)
                tokens += item.est_tokens
            else:
                kept.append(item)
        self._pending = kept
        self._set_depth()
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._pending:
                continue
            deadline = loop.time() + self.max_wait_s
            while True:
                pairs = self.queued_pairs
                tokens = sum(i.est_tokens for i in self._pending)
                remaining = deadline - loop.time()
                if pairs >= self.max_batch or tokens >= self.token_budget or remaining <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                self._wakeup.clear()
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    break
                await self._execute(batch)

    async def _execute(self, batch: list[_RerankItem]) -> None:
        loop = asyncio.get_running_loop()
        pairs = [(item.query, p) for item in batch for p in item.passages]
        started = time.perf_counter()
        try:
            scores, counts = await loop.run_in_executor(
                self._executor, lambda: self.reranker.compute_score_detailed(pairs, False))
        except Exception as exc:  # every request of the batch gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_rerank(len(batch), len(pairs), int(sum(counts)), seconds)
        offset = 0
        for item in batch:
            end = offset + len(item.passages)
            if not item.future.done():
                item.future.set_result(RerankBatchResult(
                    scores=scores[offset:end], token_counts=counts[offset:end],
                    queue_ms=(started - item.enqueued) * 1000.0, inference_ms=seconds * 1000.0,
                    batch_requests=len(batch), batch_pairs=len(pairs)))
            offset = end
