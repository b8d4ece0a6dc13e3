"""``milvus-embed demo``: load the sample corpus and run a few hybrid searches, in-process.

No server needed: the demo uses the library directly (encoder + store + searcher) on embedded Milvus Lite
under ``./data`` (or a server with ``--milvus-uri``). It brings its own collection (``demo_corpus``) to the
latest schema revision with the project's migrations, upserts the corpus by id (a second run writes only
what changed), and prints each hit with every representation's exact score (dense, sparse, ColBERT), the
fused score and the stage timings. With ``--cross-encoder`` (and a reranker: ``MEE_RERANKER_MODEL`` or
``--reranker-model``) stage 3 re-orders each query's fused top N with the cross-encoder and prints its score.

Also registers ``milvus-embed health`` (the gRPC health probe, see :mod:`milvus_embed_ext.healthcheck`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .config import Settings
from .errors import FailedPrecondition, InvalidArgument
from .limits import FUSIONS
from .progress import ProgressBoard, ProgressCallback, add_quiet_arg

if TYPE_CHECKING:
    from .encoder.reranker import Reranker

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus" / "sample.jsonl"
DEMO_COLLECTION = "demo_corpus"
UPSERT_BATCH = 32


@dataclass(frozen=True)
class DemoQuery:
    text: str
    filter: str = ""
    note: str = ""


# Chosen to show what each representation contributes: paraphrase and cross-lingual matches (dense,
# ColBERT), exact terms (sparse), the near-contradictory pairs of the corpus, and a metadata filter.
DEFAULT_QUERIES = (
    DemoQuery("Are probiotics good for the stomach?",
              note="near-contradictory pair en-00 / en-01 and its translations"),
    DemoQuery("Wie wirkt sich täglicher Kaffee auf den Blutdruck aus?", note="German query, every language"),
    DemoQuery("电动汽车真的比汽油车更环保吗？", note="Chinese query"),
    DemoQuery("¿Se puede ver la Gran Muralla desde el espacio?", filter='metadata["lang"] in ["en", "ja"]',
              note="Spanish query, English and Japanese passages only"),
    DemoQuery("remote work productivity", filter='metadata["topic"] == "technology"',
              note="keywords, filtered to one topic"),
)


# ------------------------------------------------------------------------------------------ corpus


def load_corpus(path: str | Path = CORPUS_PATH) -> list[Any]:
    """The corpus as ``store.Document`` s, in file order; InvalidArgument names the bad line."""
    from .store import Document

    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"corpus file {p} does not exist")
    docs = []
    seen: set[str] = set()
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            doc_id, text, metadata = row["id"], row["text"], row.get("metadata") or {}
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"{p}:{n}: expected a JSON object with id, text and metadata ({exc})") from None
        if not isinstance(doc_id, str) or not isinstance(text, str) or not isinstance(metadata, dict):
            raise InvalidArgument(f"{p}:{n}: id and text must be strings and metadata an object")
        if doc_id in seen:
            raise InvalidArgument(f"{p}:{n}: duplicate id {doc_id!r}")
        seen.add(doc_id)
        docs.append(Document(id=doc_id, text=text, metadata=metadata))
    if not docs:
        raise InvalidArgument(f"corpus file {p} holds no documents")
    return docs


# ------------------------------------------------------------------------------------------ model


def load_demo_encoder(settings: Settings) -> tuple[Any, bool]:
    """The encoder for ``settings.model`` and whether it is the meaningless demo checkpoint.

    The fallback itself (hub unreachable -> locally built demo checkpoint, loud banner) is the encoder
    factory's ``load_encoder``, which ``serve`` uses too, so both behave the same.
    """
    from .encoder.factory import is_demo_checkpoint, load_encoder

    encoder, path = load_encoder(settings)
    return encoder, is_demo_checkpoint(path)


def demo_warning(model: str) -> str:
    return (
        "NOTE: these results come from a small RANDOM demo checkpoint, because the model "
        f"{model!r} is neither cached nor downloadable here: the scores above carry NO meaning.\n"
        "      Point the demo at the real model: MEE_MODEL=/path/to/bge-m3 milvus-embed demo "
        "(or --model), or pre-download it with `huggingface-cli download BAAI/bge-m3`."
    )


# ------------------------------------------------------------------------------------------ steps


def ensure_collection(settings: Settings, store: Any) -> Any:
    """Bring the demo collection to the latest revision (idempotent) and open it."""
    from . import migrations
    from .store import DocumentStore

    try:
        applied = migrations.upgrade(migrations.config_from_settings(settings), "head", store=store)
        doc_store = DocumentStore.open(store, settings.collection)
    except FailedPrecondition as exc:
        raise FailedPrecondition(f"{exc}. For the demo's own collection, rerun with --reset (drops and rebuilds "
                                 "it) or choose another --collection") from exc
    return doc_store, applied


def load_documents(doc_store: Any, encoder: Any, docs: Sequence[Any],
                   progress: ProgressCallback | None = None) -> tuple[int, float]:
    """Upsert the documents whose text or metadata differ from what is stored; returns (written, seconds).

    ``progress("load corpus", written, to_write)`` is called before the first batch and after each one.
    """
    stored = {row["id"]: row for row in doc_store.get([d.id for d in docs], output_fields=["text", "metadata"])}
    todo = [d for d in docs
            if d.id not in stored or stored[d.id].get("text") != d.text
            or (stored[d.id].get("metadata") or {}) != (d.metadata or {})]
    started = time.perf_counter()
    if progress is not None and todo:
        progress("load corpus", 0, len(todo))
    for i in range(0, len(todo), UPSERT_BATCH):
        doc_store.upsert(todo[i:i + UPSERT_BATCH], encoder)
        if progress is not None:
            progress("load corpus", min(i + UPSERT_BATCH, len(todo)), len(todo))
    return len(todo), time.perf_counter() - started


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_result(query: DemoQuery, result: Any, out: TextIO, *, width: int = 72) -> None:
    print(f"\nquery: {query.text}", file=out)
    if query.filter or query.note:
        print("       " + "  ".join(x for x in (f"filter: {query.filter}" if query.filter else "", query.note) if x),
              file=out)
    cross = any("cross_encoder" in h.scores for h in result.hits)
    reps = ("dense", "sparse", "colbert") + (("fused", "cross_encoder") if cross else ())
    head = " ".join(f"{'cross' if r == 'cross_encoder' else r:>7}" for r in reps)
    print(f"  {'#':>2}  {'id':<6} {'final' if cross else 'fused':>7} {head}  text", file=out)
    for rank, hit in enumerate(result.hits, start=1):
        s = hit.scores
        cols = " ".join(f"{s[r]:7.4f}" if r in s else f"{'-':>7}" for r in reps)
        text = _clip(str(hit.fields.get("text", "")), width)
        print(f"  {rank:>2}  {hit.id:<6} {hit.score:7.4f} {cols}  {text}", file=out)
    if not result.hits:
        print("  (no hits)", file=out)
    t = result.timings_ms
    stages = [("encode", "encode"), ("candidates", "candidates"), ("fetch", "fetch"), ("rescore", "rescore"),
              ("fuse", "fuse"), ("cross-encoder", "cross_encoder"), ("fields", "fields"), ("total", "total")]
    shown = "  ".join(f"{label} {t[key]:.1f}" for label, key in stages if key in t)
    routes = "  ".join(f"{k.split('.', 1)[1]} {v:.1f}" for k, v in sorted(t.items()) if k.startswith("candidates."))
    print(f"  timings ms: {shown}", file=out)
    if routes:
        print(f"  stage 1 per field ms: {routes}   ({result.candidates} candidates re-scored)", file=out)


def reranker_warning(path: str | Path) -> str | None:
    """A warning when the reranker is a locally built random checkpoint (its order then means nothing)."""
    from .encoder.testmodel import STAMP_FILE

    if (Path(path) / STAMP_FILE).is_file():
        return (f"NOTE: the cross-encoder {str(path)!r} is a RANDOM test checkpoint (make-test-model --kind "
                "reranker): its scores and the order of stage 3 carry NO meaning. Use MEE_RERANKER_MODEL="
                "BAAI/bge-reranker-v2-m3 (or a local copy of it) for real reranking.")
    return None


def run_demo(settings: Settings, *, queries: Sequence[DemoQuery] = DEFAULT_QUERIES, top_k: int = 5,
             corpus: str | Path = CORPUS_PATH, fusion: str | None = None, reset: bool = False,
             load: bool = True, out: TextIO = sys.stdout, encoder: Any = None,
             progress: ProgressCallback | None = None, cross_encoder: bool = False,
             reranker: Reranker | None = None, cross_encoder_top_n: int | None = None) -> dict[str, Any]:
    """The whole demo; returns a summary (documents, written, results) for tests and scripts.

    ``encoder``: an already loaded M3Encoder to use instead of loading ``settings.model``.
    ``progress``: told how loading the corpus advances (the CLI passes a bar or JSON log lines on stderr).
    ``cross_encoder``: run search stage 3 with ``reranker`` (or the one ``settings.reranker_model`` names).
    """
    from .search.crossencoder import stage_from_options

    stage = None
    reranker_note = None  # said at the end, after the results it qualifies
    if cross_encoder:
        if reranker is None:
            from .encoder.factory import reranker_from_settings

            reranker = reranker_from_settings(settings)
        if reranker is None:
            raise FailedPrecondition("--cross-encoder needs a reranker: set MEE_RERANKER_MODEL or --reranker-model "
                                     "(BAAI/bge-reranker-v2-m3, or offline: milvus-embed make-test-model DIR --kind "
                                     "reranker, then --reranker-model DIR)")
        stage = stage_from_options(top_n=cross_encoder_top_n, default_order=settings.cross_encoder_order,
                                   default_weight=settings.cross_encoder_weight,
                                   top_n_factor=settings.cross_encoder_top_n_factor,
                                   max_top_n=settings.reranker_max_pairs)
        print(f"cross-encoder: {reranker.model_id} on {reranker.device}/{reranker.dtype}, re-scores the fused top "
              f"{stage.depth(top_k)}, order {stage.order}", file=out)
        reranker_note = reranker_warning(reranker.path)
    from .search import HybridSearcher, SearchRequest
    from .store import DocumentStore, MilvusStore

    docs = load_corpus(corpus) if load else []
    print(f"model: {settings.model}  (device {settings.device}, dtype {settings.dtype})", file=out)
    t0 = time.perf_counter()
    if encoder is None:
        encoder, is_demo_model = load_demo_encoder(settings)
    else:
        is_demo_model = False
        settings = settings.replace(model=str(encoder.model_id))
    print(f"  loaded {encoder.model_id} on {encoder.device}/{encoder.dtype} in {time.perf_counter() - t0:.1f} s",
          file=out)
    requested_model = settings.model
    if is_demo_model:
        # Migrations size the collection from settings.model: make it the checkpoint actually loaded.
        settings = settings.replace(model=str(encoder.model_id))

    store = MilvusStore.connect(settings)
    searcher = None
    try:
        from .store.client import redact_uri

        print(f"milvus: {redact_uri(settings.milvus_uri)}  collection {settings.collection}", file=out)
        if reset and store.has_collection(settings.collection):
            DocumentStore.open(store, settings.collection).drop()
            _forget_history(settings, store)
            print(f"  dropped {settings.collection} (--reset)", file=out)
        doc_store, applied = ensure_collection(settings, store)
        if applied:
            print(f"  schema: applied {', '.join(applied)}", file=out)
        if doc_store.layout.dense_dim != encoder.hidden_size:
            raise FailedPrecondition(
                f"collection {settings.collection} holds {doc_store.layout.dense_dim}-d vectors but the model "
                f"makes {encoder.hidden_size}-d ones (it was loaded with another model); rerun with --reset "
                "or choose another --collection")
        written = 0
        if load:
            written, secs = load_documents(doc_store, encoder, docs, progress)
            rate = f" in {secs:.1f} s" if written else ""
            print(f"  corpus: {len(docs)} passages, {written} upserted{rate}, "
                  f"{len(docs) - written} already stored unchanged; collection holds {doc_store.count()}", file=out)

        searcher = HybridSearcher(doc_store, encoder.encode, settings=settings)
        plan = {"fusion": fusion} if fusion else None
        results = []
        for q in queries:
            request = SearchRequest(query=q.text, top_k=top_k, filter=q.filter, output_fields=("text", "metadata"),
                                    plan=plan, cross_encoder=stage)
            result = searcher.search(request, scorer=reranker)
            print_result(q, result, out)
            results.append(result)
        print(f"\nfusion: {searcher.prepare(SearchRequest(query='?', plan=plan)).plan.fusion}; scores are exact "
              "(re-scored from the stored vectors): dense = cosine, sparse = lexical weight product, "
              "colbert = MaxSim mean.", file=out)
        if stage is not None:
            print("cross = the cross-encoder's logit over (query, stored text); final = the order of stage 3 "
                  f"({stage.order}); fused = the stage-2 score it re-ordered.", file=out)
        if is_demo_model:
            print("\n" + demo_warning(requested_model), file=out)
        if reranker_note:
            print("\n" + reranker_note, file=out)
        return {"documents": len(docs), "written": written, "results": results, "demo_model": is_demo_model,
                "collection": settings.collection}
    finally:
        if searcher is not None:
            searcher.close()
        store.close()


def _forget_history(settings: Settings, store: Any) -> None:
    """After dropping the demo collection, its migration history must go too, or upgrade thinks it exists."""
    from . import migrations

    migrations.stamp(migrations.config_from_settings(settings), "base", store=store)


# ------------------------------------------------------------------------------------------ CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    from .cli import add_settings_args

    p = subparsers.add_parser(
        "demo", help="load the sample corpus and run a few hybrid searches (in-process, no server)",
        description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None,
    )
    add_settings_args(p, "--model", "--device", "--dtype", "--backend", "--milvus-uri", "--migrations-dir")
    p.add_argument("--collection", default=DEMO_COLLECTION,
                   help=f"collection for the demo (default {DEMO_COLLECTION}; MEE_COLLECTION is not used, so the "
                        "demo never writes into your documents)")
    p.add_argument("--query", action="append", default=None,
                   help="search this instead of the built-in queries (repeatable)")
    p.add_argument("--filter", default="", help="Milvus filter for --query searches, e.g. 'metadata[\"lang\"] == \"de\"'")
    p.add_argument("--top-k", type=int, default=5, help="hits per query (default 5)")
    p.add_argument("--fusion", choices=FUSIONS, default=None,
                   help="fusion method (default: the collection's, m3)")
    p.add_argument("--corpus", default=str(CORPUS_PATH), help="JSONL corpus {id, text, metadata} (default: the sample)")
    p.add_argument("--no-load", action="store_true", help="skip loading the corpus; search what is stored")
    p.add_argument("--reset", action="store_true", help="drop the demo collection first (e.g. after changing model)")
    add_quiet_arg(p)
    p.add_argument("--cross-encoder", action="store_true",
                   help="stage 3: re-order each query's fused top N with the cross-encoder reranker")
    p.add_argument("--reranker-model", default=None,
                   help="cross-encoder checkpoint or hub id (MEE_RERANKER_MODEL), e.g. BAAI/bge-reranker-v2-m3")
    p.add_argument("--cross-encoder-top-n", type=int, default=None, help="fused hits to re-score (default 3x top-k)")
    p.set_defaults(handler=cmd_demo)

    from . import healthcheck

    h = subparsers.add_parser(
        "health", help="ask a running sidecar for its gRPC health (exit 0 when SERVING)",
        description=(healthcheck.__doc__ or "").split("\n\n")[0],
    )
    healthcheck.add_arguments(h)
    h.set_defaults(handler=healthcheck.run)


def cmd_demo(args: argparse.Namespace) -> int:
    from .cli import settings_from_args

    if args.top_k <= 0:
        raise InvalidArgument(f"--top-k must be > 0, got {args.top_k}")
    if args.filter and not args.query:
        raise InvalidArgument("--filter applies to --query searches; give at least one --query")
    settings = settings_from_args(args, collection=args.collection, reranker_model=args.reranker_model)
    queries = tuple(DemoQuery(q, filter=args.filter) for q in args.query) if args.query else DEFAULT_QUERIES
    with ProgressBoard(unit="docs", quiet=args.quiet) as board:
        run_demo(settings, queries=queries, top_k=args.top_k, corpus=args.corpus, fusion=args.fusion,
                 reset=args.reset, load=not args.no_load, progress=board, cross_encoder=args.cross_encoder,
                 cross_encoder_top_n=args.cross_encoder_top_n)
    return 0
