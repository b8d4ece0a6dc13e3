"""Dynamic micro-batching: concurrent requests share encoder forward passes.

Every Embed, Upsert and HybridSearch request puts its texts on one bounded queue. A dispatcher task
takes the oldest request, waits up to ``max_wait_ms`` for more (or until ``max_batch`` texts /
``token_budget`` estimated tokens are gathered), merges what is compatible (same ``max_length``) into
one ``encoder.encode`` call on the ONE encoder thread, and hands each request its own rows.
The encoder itself splits a call into length-sorted token-budget forward passes.

* Full queue (``max_queue`` texts waiting): :class:`ResourceExhausted` at once, nothing queued.
* Cancelled or timed-out requests leave the queue immediately; a request whose deadline passed while
  waiting is dropped at dispatch, so dead work never reaches the model.

The reranker has its own queue and thread under the same rules: both are a :class:`MicroBatcher`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ..contracts import PairScorer, TextEncoder
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


def estimate_tokens(text: str, max_length: int) -> int:
    """Cheap token estimate for batch sizing (~4 chars per token + CLS/EOS), capped at max_length."""
    return min(max_length, len(text) // 4 + 2)


# ---------------------------------------------------------------------------- shared queue

Result = TypeVar("Result")
Raw = TypeVar("Raw")


@dataclass(eq=False, kw_only=True)
class QueuedJob(Generic[Result]):
    """What every queued request carries, whatever the model: its size in tokens, deadline and answer."""

    est_tokens: int
    deadline: float | None  # loop.time()
    future: asyncio.Future[Result]
    enqueued: float = field(default_factory=time.perf_counter)


Job = TypeVar("Job", bound=QueuedJob[Any])


class MicroBatcher(Generic[Job, Result, Raw], ABC):
    """One bounded queue, one dispatcher task and one model thread; subclasses say what a job is and how to run it.

    The queue's rules are shared: a full queue refuses at once (ResourceExhausted); cancelled or expired
    jobs leave it; the oldest live job plus every later compatible one that fits ``max_batch`` units /
    ``token_budget`` estimated tokens form a batch (a larger job runs alone), after waiting up to
    ``max_wait_ms`` for company.
    """

    what: str
    """The model in messages: "encoder", "reranker"."""

    def __init__(self, *, token_budget: int, max_batch: int, max_wait_ms: float, max_queue: int,
                 max_length: int, executor: ThreadPoolExecutor | None, thread_name: str, task_name: str) -> None:
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms / 1000.0)
        self.max_queue = max_queue
        self.max_length = max_length
        self._task_name = task_name
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._pending: collections.deque[Job] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _size(self, job: Job) -> int:
        """The job's units against ``max_batch`` and ``max_queue`` (texts, pairs)."""

    def _compatible(self, job: Job, head: Job) -> bool:
        """Whether ``job`` may share a model call with the batch's first job ``head``."""
        return True

    @abstractmethod
    def _infer(self, batch: list[Job]) -> Raw:
        """The model call for the whole batch; runs on the model thread."""

    @abstractmethod
    def _deliver(self, batch: list[Job], raw: Raw, started: float, seconds: float) -> None:
        """Hands each live job its share of ``raw`` and records metrics; runs on the event loop."""

    @abstractmethod
    def _depth_gauge(self) -> Any | None:
        """The metrics gauge that shows the queued units, if metrics are on."""

    @abstractmethod
    def _queue_full(self, queued: int) -> str:
        """ResourceExhausted's message when ``queued`` units wait and a job does not fit."""

    @abstractmethod
    def _too_late(self, size: int) -> str:
        """DeadlineExceeded's message when a job of ``size`` units ran out of time."""

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=self._task_name)

    async def stop(self) -> None:
        """Fail whatever is still queued (the server drains requests before calling this)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(Unavailable("the server is shutting down; retry on another replica"))
        self._set_depth()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    @property
    def _queued(self) -> int:
        """Units waiting (the queue holds at most max_queue of them, so summing is cheap)."""
        return sum(self._size(j) for j in self._pending)

    # ------------------------------------------------------------------ queueing
    def _admit(self, size: int) -> asyncio.AbstractEventLoop:
        """Refuses a job of ``size`` units when not running or when it would overflow the queue."""
        if self._closed or self._wakeup is None:
            raise Unavailable(f"the {self.what} is not running (server starting or shutting down); retry shortly")
        queued = self._queued
        if queued + size > self.max_queue:
            raise ResourceExhausted(self._queue_full(queued))
        return asyncio.get_running_loop()

    async def _submit(self, job: Job, timeout: float | None) -> Result:
        """Queues ``job`` and waits for its answer; a timeout or a cancelled caller takes it off the queue."""
        assert self._wakeup is not None
        self._pending.append(job)
        self._set_depth()
        self._wakeup.set()
        try:
            if timeout is None:
                return await asyncio.shield(job.future)
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.TimeoutError:
            self._forget(job)
            raise DeadlineExceeded(self._too_late(self._size(job))) from None
        except asyncio.CancelledError:
            self._forget(job)  # client went away: leave the queue now
            raise

    # ------------------------------------------------------------------ internals
    def _set_depth(self) -> None:
        gauge = self._depth_gauge()
        if gauge is not None:
            gauge.set(self._queued)

    def _forget(self, job: Job) -> None:
        with contextlib.suppress(ValueError):
            self._pending.remove(job)
            self._set_depth()
        if not job.future.done():
            job.future.cancel()

    def _take_batch(self) -> list[Job]:
        """Oldest live job plus every later compatible one that fits the limits, in FIFO order."""
        now = asyncio.get_running_loop().time()
        batch: list[Job] = []
        units = tokens = 0
        kept: collections.deque[Job] = collections.deque()
        while self._pending:
            job = self._pending.popleft()
            if job.future.done():  # cancelled meanwhile
                continue
            if job.deadline is not None and job.deadline <= now:
                job.future.set_exception(DeadlineExceeded(f"deadline passed while queued for the {self.what}"))
                continue
            size = self._size(job)
            fits = not batch or (
                self._compatible(job, batch[0])
                and units + size <= self.max_batch
                and tokens + job.est_tokens <= self.token_budget
            )
            if fits:
                batch.append(job)
                units += size
                tokens += job.est_tokens
            else:
                kept.append(job)
        self._pending = kept
        self._set_depth()
        return batch

    def _gathered(self) -> tuple[int, int]:
        return self._queued, sum(j.est_tokens for j in self._pending)

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
                units, tokens = self._gathered()
                remaining = deadline - loop.time()
                if units >= self.max_batch or tokens >= self.token_budget or remaining <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                self._wakeup.clear()
            while self._pending:
                batch = self._take_batch()
                if not batch:
                    break
                await self._execute(batch)

    async def _execute(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            raw = await loop.run_in_executor(self._executor, self._infer, batch)
        except Exception as exc:  # every request of the batch gets the error
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self._deliver(batch, raw, started, time.perf_counter() - started)


# ---------------------------------------------------------------------------- encoder


@dataclass(eq=False, kw_only=True)
class _Item(QueuedJob[EncodeResult]):
    texts: tuple[str, ...]
    dense: bool
    sparse: bool
    colbert: bool
    truncate_dims: tuple[int, ...]
    max_length: int | None


class Batcher(MicroBatcher[_Item, EncodeResult, Any]):
    """Owns the encoder thread. Use ``await start()``, ``await encode(...)``, ``await stop()``."""

    what = "encoder"

    def __init__(self, encoder: TextEncoder, *, token_budget: int, max_batch: int, max_wait_ms: float,
                 max_queue: int, max_length: int, metrics: _BatchMetrics | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        super().__init__(token_budget=token_budget, max_batch=max_batch, max_wait_ms=max_wait_ms,
                         max_queue=max_queue, max_length=max_length, executor=executor,
                         thread_name="mee-encoder", task_name="mee-batcher")
        self.encoder = encoder
        self.metrics = metrics

    @property
    def queued_texts(self) -> int:
        """Texts waiting for the encoder."""
        return self._queued

    async def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = True, colbert: bool = False,
                     truncate_dims: Sequence[int] = (), max_length: int | None = None,
                     timeout: float | None = None) -> EncodeResult:
        """Encode ``texts`` in a shared forward pass; ``timeout`` (seconds) bounds queue + inference."""
        loop = self._admit(len(texts))
        limit = max_length or self.max_length
        item = _Item(
            texts=tuple(texts), dense=dense, sparse=sparse, colbert=colbert,
            truncate_dims=tuple(truncate_dims), max_length=max_length,
            est_tokens=sum(estimate_tokens(t, limit) for t in texts),
            deadline=None if timeout is None else loop.time() + timeout,
            future=loop.create_future(),
        )
        return await self._submit(item, timeout)

    # ------------------------------------------------------------------ hooks
    def _size(self, job: _Item) -> int:
        return len(job.texts)

    def _compatible(self, job: _Item, head: _Item) -> bool:
        return job.max_length == head.max_length

    def _depth_gauge(self) -> Any | None:
        return None if self.metrics is None else self.metrics.queue_depth

    def _queue_full(self, queued: int) -> str:
        return (f"encoder queue is full ({queued} texts waiting, max_queue={self.max_queue}); "
                "retry with backoff, send fewer texts per request, or raise MEE_MAX_QUEUE")

    def _too_late(self, size: int) -> str:
        return (f"deadline passed while encoding {size} text(s) ({self.queued_texts} texts queued); "
                "raise the client timeout or send fewer texts")

    def _infer(self, batch: list[_Item]) -> Any:
        texts = [t for item in batch for t in item.texts]
        return self.encoder.encode(texts, dense=any(i.dense for i in batch), sparse=any(i.sparse for i in batch),
                                   colbert=any(i.colbert for i in batch),
                                   truncate_dims=tuple(sorted({d for i in batch for d in i.truncate_dims})),
                                   max_length=batch[0].max_length)

    def _deliver(self, batch: list[_Item], raw: Any, started: float, seconds: float) -> None:
        n_texts = sum(len(item.texts) for item in batch)
        n_tokens = int(raw.token_counts.sum())
        if self.metrics is not None:
            self.metrics.observe_batch(len(batch), n_texts, n_tokens, seconds)
        log.debug("encoded batch", extra={"requests": len(batch), "texts": n_texts, "tokens": n_tokens,
                                          "inference_ms": round(seconds * 1000, 3)})
        offset = 0
        for item in batch:
            rows = range(offset, offset + len(item.texts))
            offset += len(item.texts)
            if item.future.done():
                continue
            item.future.set_result(EncodeResult(
                output=raw.select(list(rows)),
                queue_ms=(started - item.enqueued) * 1000.0,
                inference_ms=seconds * 1000.0,
                batch_requests=len(batch),
                batch_texts=n_texts,
            ))


# ---------------------------------------------------------------------------- reranker


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


@dataclass(eq=False, kw_only=True)
class _RerankItem(QueuedJob[RerankBatchResult]):
    query: str
    passages: tuple[str, ...]


class RerankBatcher(MicroBatcher[_RerankItem, RerankBatchResult, tuple[list[float], list[int]]]):
    """The reranker's own queue and thread: concurrent Rerank calls and search stage 3 share forward passes.

    Separate from :class:`Batcher` on purpose: a burst of reranks (hundreds of pairs each) waits in its own
    bounded queue (``max_queue`` pairs) and runs on its own thread, so embedding requests never queue
    behind it. The same rules as the encoder's (:class:`MicroBatcher`); the reranker splits a call into
    token-budget passes.
    """

    what = "reranker"

    def __init__(self, reranker: PairScorer, *, token_budget: int, max_batch: int, max_wait_ms: float,
                 max_queue: int, max_length: int, metrics: _RerankMetrics | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        super().__init__(token_budget=token_budget, max_batch=max_batch, max_wait_ms=max_wait_ms,
                         max_queue=max_queue, max_length=max_length, executor=executor,
                         thread_name="mee-reranker", task_name="mee-rerank-batcher")
        self.reranker = reranker
        self.metrics = metrics

    @property
    def queued_pairs(self) -> int:
        """(query, passage) pairs waiting for the reranker."""
        return self._queued

    async def score(self, query: str, passages: Sequence[str], *, timeout: float | None = None) -> RerankBatchResult:
        """Raw cross-encoder logits of ``passages`` against ``query``; ``timeout`` bounds queue + inference."""
        loop = self._admit(len(passages))
        q_tokens = estimate_tokens(query, self.max_length * 3 // 4)
        item = _RerankItem(
            query=query, passages=tuple(passages),
            est_tokens=sum(min(self.max_length, q_tokens + estimate_tokens(p, self.max_length) + 2) for p in passages),
            deadline=None if timeout is None else loop.time() + timeout, future=loop.create_future(),
        )
        return await self._submit(item, timeout)

    # ------------------------------------------------------------------ hooks
    def _size(self, job: _RerankItem) -> int:
        return len(job.passages)

    def _depth_gauge(self) -> Any | None:
        return None if self.metrics is None else self.metrics.rerank_queue_depth

    def _queue_full(self, queued: int) -> str:
        return (f"reranker queue is full ({queued} pairs waiting, reranker_max_queue={self.max_queue}); "
                "retry with backoff, send fewer passages, or raise MEE_RERANKER_MAX_QUEUE")

    def _too_late(self, size: int) -> str:
        return (f"deadline passed while reranking {size} passage(s) ({self.queued_pairs} pairs queued); "
                "raise the client timeout or send fewer passages")

    def _infer(self, batch: list[_RerankItem]) -> tuple[list[float], list[int]]:
        return self.reranker.compute_score_detailed([(item.query, p) for item in batch for p in item.passages], False)

    def _deliver(self, batch: list[_RerankItem], raw: tuple[list[float], list[int]], started: float,
                 seconds: float) -> None:
        scores, counts = raw
        n_pairs = sum(len(item.passages) for item in batch)
        if self.metrics is not None:
            self.metrics.observe_rerank(len(batch), n_pairs, int(sum(counts)), seconds)
        offset = 0
        for item in batch:
            end = offset + len(item.passages)
            if not item.future.done():
                item.future.set_result(RerankBatchResult(
                    scores=scores[offset:end], token_counts=counts[offset:end],
                    queue_ms=(started - item.enqueued) * 1000.0, inference_ms=seconds * 1000.0,
                    batch_requests=len(batch), batch_pairs=n_pairs))
            offset = end
