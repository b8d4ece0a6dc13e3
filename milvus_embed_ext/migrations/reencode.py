"""The data side of the ``reencode`` op: read stored texts by id, encode, write through the store.

Writes go through :meth:`DocumentStore.upsert` (the service's own write path), so a re-encoded document
is exactly what an upsert of the same text writes: every representation, ColBERT rows committed by
the main row and older versions swept. Upserts are idempotent by id, so a batch repeated after a crash
or a lease take-over rewrites the same documents and leaves no orphans.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConsistencyError, FailedPrecondition
from ..store.documents import Document, DocumentStore
from ..store.layout import ID, METADATA, TEXT

_ID_PAGE = 4096
MIN_COSINE = 0.999  # the fp16-vs-fp32 dense tolerance of docs/hardware.md


class ReencodeJob:
    """:class:`~.shards.ShardJob` over one collection, with the run's encoder (loaded on first use)."""

    def __init__(self, ctx: Any, collection: str) -> None:
        self.ctx = ctx
        self.docs = DocumentStore.open(ctx.store, collection)
        if not self.docs.layout.store_text:
            raise FailedPrecondition(
                f"reencode {collection}: the collection does not store texts (store_text=False), so there is "
                "nothing to re-encode from; re-ingest the documents from their source instead")

    def list_ids(self, filter: str) -> list[str]:
        ids: set[str] = set()
        for page in self.docs.iter_documents(batch_size=_ID_PAGE, output_fields=[ID], filter=filter):
            ids.update(str(r[ID]) for r in page)
        return sorted(ids)

    def sample_ids(self, n: int) -> list[str]:
        """A uniform sample of up to ``n`` ids (reservoir over one scan of the ids)."""
        rng = random.Random(n)
        sample: list[str] = []
        seen = 0
        for page in self.docs.iter_documents(batch_size=_ID_PAGE, output_fields=[ID]):
            for r in page:
                seen += 1
                if len(sample) < n:
                    sample.append(str(r[ID]))
                else:
                    j = rng.randrange(seen)
                    if j < n:
                        sample[j] = str(r[ID])
        return sample

    def _documents(self, ids: Sequence[str]) -> list[Document]:
        rows = self.docs.get(ids, output_fields=[ID, TEXT, METADATA])
        return [Document(r[ID], r[TEXT], r.get(METADATA) or None) for r in rows]

    def process(self, ids: Sequence[str]) -> int:
        docs = self._documents(ids)
        if docs:
            self.docs.upsert(docs, self.ctx.encoder())
        return len(docs)

    def count(self) -> int:
        return self.docs.count()

    def check_sample(self, ids: Sequence[str]) -> None:
        """The stored vectors of a sample read back whole and match a fresh encode of their text."""
        docs = self._documents(ids)
        if not docs:
            return
        stored = self.docs.fetch_vectors([d.id for d in docs])
        enc = self.ctx.encoder().encode([d.text for d in docs], **self.docs.encode_kwargs())
        for i, d in enumerate(docs):
            v = stored.get(d.id)
            if v is None:
                raise ConsistencyError(f"document {d.id!r} disappeared during the re-encode check")
            fresh = np.asarray(enc.dense[i], dtype=np.float64)
            stored_dense = np.asarray(v.dense, dtype=np.float64)
            cos = float(fresh @ stored_dense / (np.linalg.norm(fresh) * np.linalg.norm(stored_dense) or 1.0))
            if cos < MIN_COSINE:  # not bit-equality: batch composition and fp16 move the last digits
                raise ConsistencyError(
                    f"document {d.id!r}: the stored dense vector does not match the model's; was the backfill run "
                    "with another model (every worker needs the same --model)?")
            if self.docs.layout.colbert != "none" and v.colbert is None:
                raise ConsistencyError(
                    f"document {d.id!r}: its ColBERT vectors are missing (a writer of the same id raced the "
                    "backfill?); rerun `milvus-embed migrate upgrade` after re-upserting it")
