"""The sidecar's HTTP face: text-embeddings-inference's and OpenAI's dialects, served by uvicorn in the gRPC
server's event loop with the gRPC side's keys, TLS, limits, metrics, logs and micro-batcher (docs/http.md).

Layout: ``face`` (uvicorn lifecycle), ``app`` (routes and the guard around each request), ``tei`` and
``openai_compat`` (the two dialects' handlers), ``core`` (checks and calls into the batcher), ``errors``
(domain errors -> each dialect's status and body).
"""

from .core import NO_RERANKER, HttpCore, Reranker
from .face import HttpFace

__all__ = ["HttpFace", "HttpCore", "Reranker", "NO_RERANKER"]
