"""Subcommands of ``milvus-embed`` for the sidecar: ``serve`` and the client commands
``embed``, ``upsert``, ``search``, ``get``, ``delete`` (thin wrappers over :mod:`milvus_embed_ext.client`).

Client commands reach the sidecar at ``--address`` (default: the ``listen`` setting) and authenticate
with the first key of ``MEE_API_KEYS`` when it is set. Output is JSON, one object per line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ..errors import InvalidArgument
from .validation import parse_json_object

SERVE_FLAGS: dict[str, tuple[str, type, str]] = {
    "--listen": ("listen", str, "gRPC listen address host:port (MEE_LISTEN, default 127.0.0.1:50051)"),
    "--http-listen": ("http_listen", str, "HTTP (TEI/OpenAI) listen address host:port; empty: off "
                                          "(MEE_HTTP_LISTEN, default 127.0.0.1:8080)"),
    "--token-budget": ("token_budget", int, "padded tokens per forward pass (MEE_TOKEN_BUDGET)"),
    "--max-batch": ("max_batch", int, "texts per forward pass (MEE_MAX_BATCH)"),
    "--max-concurrent": ("max_concurrent", int, "requests in flight before RESOURCE_EXHAUSTED (MEE_MAX_CONCURRENT)"),
    "--max-message-bytes": ("max_message_bytes", int, "largest gRPC message accepted/sent (MEE_MAX_MESSAGE_BYTES)"),
    "--metrics-listen": ("metrics_listen", str, "host:port for Prometheus /metrics; empty: off (MEE_METRICS_LISTEN)"),
    "--log-format": ("log_format", str, "json|text (MEE_LOG_FORMAT)"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import add_settings_args
    from ..progress import add_quiet_arg

    p = subparsers.add_parser(
        "serve", help="run the gRPC sidecar",
        description="Run the gRPC sidecar. Every flag has a MEE_* variable; API keys only come from MEE_API_KEYS "
                    "(comma-separated), so they never appear in process listings.",
    )
    add_settings_args(p)
    for flag, (dest, typ, help_text) in SERVE_FLAGS.items():
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_text)
    p.set_defaults(handler=cmd_serve)

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        sp = subparsers.add_parser(name, help=help_text, description=help_text + " (through a running sidecar)")
        add_settings_args(sp, "--collection")
        sp.add_argument("--address", help="sidecar host:port (default: the listen setting)")
        sp.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --tls-ca)")
        sp.add_argument("--tls-ca", help="CA bundle that signed the sidecar's certificate")
        sp.add_argument("--tls-cert", help="client certificate (mutual TLS)")
        sp.add_argument("--tls-key", help="client key (mutual TLS)")
        sp.add_argument("--timeout", type=float, default=60.0, help="deadline per call in seconds (default 60)")
        return sp

    sp = client_parser("embed", "embed texts")
    sp.add_argument("texts", nargs="*", help="texts; none: one text per line from stdin")
    sp.add_argument("--no-dense", action="store_true")
    sp.add_argument("--no-sparse", action="store_true")
    sp.add_argument("--colbert", action="store_true", help="also return ColBERT token vectors")
    sp.add_argument("--truncate-dims", default="", help="comma-separated truncated dense sizes, e.g. 64,256")
    sp.add_argument("--fp16", action="store_true", help="fp16 packing on the wire")
    sp.set_defaults(handler=cmd_embed)

    sp = client_parser("upsert", "insert or replace documents from JSONL ({\"id\",\"text\",\"metadata\"} per line)")
    sp.add_argument("file", nargs="?", default="-", help="JSONL file; - or none: stdin")
    sp.add_argument("--chunk-size", type=int, default=64, help="documents per streamed message")
    add_quiet_arg(sp)
    sp.set_defaults(handler=cmd_upsert)

    sp = client_parser("search", "hybrid search")
    sp.add_argument("query")
    sp.add_argument("--top-k", type=int, default=10)
    sp.add_argument("--offset", type=int, default=0)
    sp.add_argument("--filter", default="", help='Milvus expression, e.g. \'metadata["lang"] == "en"\'')
    sp.add_argument("--output-fields", default="text", help="comma-separated subset of text,metadata")
    sp.add_argument("--candidates", default="", help="stage-1 sources: dense,sparse,dense_truncated")
    sp.add_argument("--rescore", default="", help="stage-2 scores: dense,sparse,colbert")
    sp.add_argument("--rerank", dest="rerank_deprecated", default="", help=argparse.SUPPRESS)  # old --rescore
    sp.add_argument("--candidate-k", type=int, default=None)
    sp.add_argument("--fusion", default=None, help="m3|rrf|weighted|dbsf")
    sp.add_argument("--weights", default="", help="e.g. dense=0.4,sparse=0.2,colbert=0.4")
    sp.add_argument("--cross-encoder", action="store_true",
                    help="stage 3: re-order the fused top N with the sidecar's reranker (needs MEE_RERANKER_MODEL)")
    sp.add_argument("--cross-encoder-top-n", type=int, default=None, help="fused hits to re-score (default 3x page)")
    sp.add_argument("--cross-encoder-order", default=None, help="reranker|fused")
    sp.add_argument("--cross-encoder-weight", type=float, default=None, help="cross-encoder share with fused, 0..1")
    sp.set_defaults(handler=cmd_search)

    sp = client_parser("rerank", "score passages against a query with the cross-encoder reranker")
    sp.add_argument("query")
    sp.add_argument("passages", nargs="*", help="passages; none: one passage per line from stdin")
    sp.add_argument("--normalize", action="store_true", help="sigmoid scores in 0..1 instead of raw logits")
    sp.set_defaults(handler=cmd_rerank)

    sp = client_parser("get", "fetch documents by id")
    sp.add_argument("ids", nargs="+")
    sp.add_argument("--allow-missing", action="store_true", help="skip unknown ids instead of failing")
    sp.set_defaults(handler=cmd_get)

    sp = client_parser("delete", "delete documents by id")
    sp.add_argument("ids", nargs="+")
    sp.set_defaults(handler=cmd_delete)


# ------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from ..cli import settings_from_args
    from .logs import configure_logging
    from .server import serve

    settings = settings_from_args(args, **{dest: getattr(args, dest) for dest, _, _ in SERVE_FLAGS.values()})
    configure_logging("DEBUG" if getattr(args, "verbose", False) else settings.log_level, settings.log_format,
                      secrets=settings.secrets)
    return asyncio.run(serve(settings))


# ------------------------------------------------------------------ client commands


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    from ..cli import settings_from_args
    from ..client import SidecarClient, TLSConfig

    settings = settings_from_args(args)
    tls = TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key) if (
        args.tls or args.tls_ca or args.tls_cert) else None
    client = SidecarClient(args.address or settings.listen, api_key=settings.api_keys[0] if settings.api_keys else None,
                           tls=tls, timeout=args.timeout, max_message_bytes=settings.max_message_bytes)
    return client, getattr(args, "collection", None) or ""


def _emit(obj: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(obj, ensure_ascii=False) + "\n")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_embed(args: argparse.Namespace) -> int:
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise InvalidArgument("no texts: pass them as arguments or one per line on stdin")
    try:
        dims = [int(d) for d in _csv(args.truncate_dims)]
    except ValueError:
        raise InvalidArgument(f"--truncate-dims must be comma-separated integers, got {args.truncate_dims!r}") from None
    client, _ = _client(args)
    with client:
        res = client.embed(texts, dense=not args.no_dense, sparse=not args.no_sparse, colbert=args.colbert,
                           truncate_dims=dims, fp16=args.fp16)
    for i in range(len(res)):
        row: dict[str, Any] = {"index": i, "tokens": int(res.token_counts[i])}
        if res.dense is not None:
            row["dense"] = [round(float(x), 6) for x in res.dense[i]]
        if res.sparse is not None:
            row["sparse"] = {str(k): round(v, 6) for k, v in res.sparse[i].items()}
        for d, m in res.truncated.items():
            row[f"dense_{d}"] = [round(float(x), 6) for x in m[i]]
        if res.colbert is not None:
            row["colbert"] = [[round(float(x), 6) for x in r] for r in res.colbert[i]]
        _emit(row)
    return 0


def _read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    """Documents from a JSONL file (or stdin for ``-``), read lazily so bulk loads stream."""
    if path != "-" and not Path(path).is_file():
        raise InvalidArgument(f"{path} does not exist; pass a JSONL file or - for stdin")
    with contextlib.ExitStack() as stack:
        stream: TextIO = sys.stdin if path == "-" else stack.enter_context(Path(path).open(encoding="utf-8"))
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            yield parse_json_object(line, f"{path}:{lineno}", fix="write one document object per line",
                                    example='{"id": ..., "text": ..., "metadata": ...}')


def _count_documents(path: str) -> int | None:
    """Non-blank lines of a file (the progress total); None for stdin, which cannot be counted up front."""
    if path == "-" or not Path(path).is_file():
        return None
    with Path(path).open("rb") as f:
        return sum(1 for line in f if line.strip())


def cmd_upsert(args: argparse.Namespace) -> int:
    from ..progress import open_progress, track

    client, collection = _client(args)
    progress = open_progress("upsert", _count_documents(args.file), unit="docs", quiet=args.quiet)
    with client:
        try:
            # Counts documents as the stream takes them (gRPC flow control keeps that close to what the server has).
            res = client.upsert(track(_read_jsonl(args.file), progress), collection=collection,
                                chunk_size=args.chunk_size)
        finally:
            progress.close()
    _emit({"upserted": res.upserted, "tokens": res.tokens, "total_ms": round(res.timings.total_ms, 3)})
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    weights: dict[str, float] = {}
    for item in _csv(args.weights):
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InvalidArgument(f"--weights must look like dense=0.4,sparse=0.2, got {args.weights!r}")
    rescore = _csv(args.rescore)
    if args.rerank_deprecated:
        print("warning: --rerank is deprecated, use --rescore (stage-2 scores); --cross-encoder runs the reranker",
              file=sys.stderr)
        rescore = rescore or _csv(args.rerank_deprecated)
    client, collection = _client(args)
    with client:
        res = client.hybrid_search(
            args.query, collection=collection, top_k=args.top_k, offset=args.offset, filter=args.filter,
            output_fields=_csv(args.output_fields), candidates=_csv(args.candidates) or None,
            rescore=rescore or None, candidate_k=args.candidate_k, fusion=args.fusion,
            weights=weights or None, cross_encoder=args.cross_encoder, cross_encoder_top_n=args.cross_encoder_top_n,
            cross_encoder_order=args.cross_encoder_order, cross_encoder_weight=args.cross_encoder_weight,
        )
    for rank, hit in enumerate(res.hits, start=args.offset + 1):
        row: dict[str, Any] = {"rank": rank, "id": hit.id, "score": round(hit.score, 6),
                               "scores": {k: round(v, 6) for k, v in hit.scores.items()}}
        if hit.text is not None:
            row["text"] = hit.text
        if hit.metadata is not None:
            row["metadata"] = hit.metadata
        _emit(row)
    return 0


def cmd_rerank(args: argparse.Namespace) -> int:
    passages = args.passages or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not passages:
        raise InvalidArgument("no passages: pass them as arguments or one per line on stdin")
    client, _ = _client(args)
    with client:
        res = client.rerank(args.query, passages, normalize=args.normalize)
    rank = {i: r for r, i in enumerate(res.order(), start=1)}
    for i, score in enumerate(res.scores):
        _emit({"index": i, "rank": rank[i], "score": round(score, 6), "tokens": res.token_counts[i],
               "passage": passages[i]})
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    client, collection = _client(args)
    with client:
        rows = client.get(args.ids, collection=collection, allow_missing=args.allow_missing)
    for row in rows:
        _emit(row)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    client, collection = _client(args)
    with client:
        deleted = client.delete(args.ids, collection=collection)
    _emit({"deleted": deleted})
    return 0
