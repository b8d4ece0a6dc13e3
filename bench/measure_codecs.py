"""Measure the ColBERT storage codecs and write the "ColBERT codecs" section of bench/RESULTS.md.

    .venv/bin/python bench/measure_codecs.py                       # tiny test checkpoint (64-d)
    .venv/bin/python bench/measure_codecs.py --size full --docs 300  # full-size random checkpoint (1024-d)
    .venv/bin/python bench/measure_codecs.py --model /models/bge-m3  # a real BGE-M3 checkpoint

For every codec (fp32, fp16, int8 with a per-vector scale, int6 text with a least-squares scale, 1-bit signs
with a per-vector scale) it
encodes the ColBERT vectors of a deterministic synthetic corpus (milvus_embed_ext.devtools.synthetic),
decodes them as the store does, and scores a fixed query set with MaxSim (float32 queries, as at search
time) against every document. Fidelity is measured against fp32 MaxSim: Spearman rank correlation over
the whole corpus and over the fp32 top-100 (mean over queries), top-10 overlap, and the largest absolute
score error. Bytes per token: the packed record, and the base64 payload stored in the companion
collection's VARCHAR rows (row overhead — key, doc id, version, placeholder vector — listed apart).

Only the section between the markers in RESULTS.md is replaced; the rest of the file is left alone.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from resultsmd import cpu_encoder, data_path, publish, script_parser, table  # noqa: E402

SECTION = "colbert-codecs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = script_parser(__doc__.splitlines()[0], SECTION, size="tiny", corpus=(2000, 50, 11))
    p.add_argument("--append", action="store_true", help="add this run's table to the section instead of replacing it")
    return p.parse_args(argv)


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if np.any(counts > 1):
        sums = np.bincount(inverse, weights=r)
        r = sums[inverse] / counts[inverse]
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 1.0


def maxsim_all(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    """[n_queries, n_docs] MaxSim (mean over query vectors of the best document vector)."""
    flat = np.concatenate(docs).astype(np.float32)
    starts = np.cumsum([0] + [d.shape[0] for d in docs[:-1]])
    out = np.empty((len(queries), len(docs)), dtype=np.float64)
    for i, q in enumerate(queries):
        sims = q.astype(np.float32) @ flat.T  # [q_tokens, all doc tokens]
        out[i] = np.maximum.reduceat(sims, starts, axis=1).mean(axis=0)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from milvus_embed_ext.devtools.synthetic import generate_corpus, generate_queries
    from milvus_embed_ext.store import codecs
    from milvus_embed_ext.store.documents import new_version_prefix
    from milvus_embed_ext.store.layout import PLACEHOLDER_DIM

    encoder, label = cpu_encoder(args)
    corpus = generate_corpus(args.docs, seed=args.seed)
    queries = generate_queries(corpus, args.queries, seed=args.seed + 1)
    t0 = time.perf_counter()
    docs = encoder.encode([d.text for d in corpus], dense=False, sparse=False, colbert=True).colbert
    qs = encoder.encode(queries, dense=False, sparse=False, colbert=True).colbert
    encode_s = time.perf_counter() - t0
    assert docs is not None and qs is not None
    dim = int(docs[0].shape[1])
    n_tokens = sum(d.shape[0] for d in docs)
    reference = maxsim_all(qs, docs)

    rows = []
    records = []  # the same figures as data, for bench/results (the plots)
    for codec in codecs.CODECS:
        decoded = [codecs.decode(codecs.encode(d, codec), codec, dim) for d in docs]
        scores = maxsim_all(qs, decoded)
        rho_all, rho_top, overlap = [], [], []
        for ref, got in zip(reference, scores, strict=True):
            rho_all.append(spearman(ref, got))
            top100 = np.argsort(-ref, kind="mergesort")[:100]
            rho_top.append(spearman(ref[top100], got[top100]))
            top10_ref = set(np.argsort(-ref, kind="mergesort")[:10].tolist())
            top10_got = set(np.argsort(-got, kind="mergesort")[:10].tolist())
            overlap.append(len(top10_ref & top10_got) / 10)
        chunks = [codecs.to_chunks(d, codec) for d in docs]
        payload = sum(len(c.payload) for cs in chunks for c in cs)
        n_rows = sum(len(cs) for cs in chunks)
        rows.append([
            codec,
            str(codecs.record_size(codec, dim)),
            f"{payload / n_tokens:.1f}",
            f"{codecs.tokens_per_row(codec, dim)}",
            f"{n_rows / len(docs):.2f}",
            f"{np.mean(rho_all):.4f}",
            f"{np.mean(rho_top):.4f}",
            f"{np.mean(overlap):.3f}",
            f"{np.abs(scores - reference).max():.2e}",
        ])
        records.append({"codec": codec, "payload_bytes": payload, "rows": n_rows,
                        "bytes_per_token_stored": payload / n_tokens, "top10_overlap": float(np.mean(overlap)),
                        "spearman_all": float(np.mean(rho_all)), "spearman_top100": float(np.mean(rho_top))})

    mean_doc_tokens = n_tokens / len(docs)
    version = new_version_prefix() + ".000000"
    # key "<version>/<chunk>" + version + chunk, n_tokens (int32) + codec name + 2-d float32 placeholder
    overhead = len(version) + 4 + len(version) + 4 + 4 + len("fp16") + 4 * PLACEHOLDER_DIM
    if not args.no_write:  # one file per ColBERT width, so the tiny and full runs sit side by side
        from plots import save_results

        for r in records:  # stored companion bytes per document: payload plus each row's fixed fields
            r["bytes_per_doc"] = (r.pop("payload_bytes") + r.pop("rows") * overhead) / len(docs)
        save_results("codecs", {"label": label, "dim": dim, "docs": len(corpus), "queries": len(queries),
                                "tokens_per_doc": mean_doc_tokens, "codecs": records},
                     data_path(args, f"codecs_{dim}d.json"))
    body = "\n".join([
        f"### {label}: {dim}-d ColBERT vectors",
        "",
        f"{len(corpus)} synthetic documents ({n_tokens} ColBERT vectors, {mean_doc_tokens:.1f} per document), "
        f"{len(queries)} queries, seed {args.seed}; float32 queries against decoded documents. "
        f"Encoding took {encode_s:.0f} s on {platform.processor() or platform.machine()} "
        f"({sys.platform}, {platform.python_version()}).",
        "",
        table(["codec", "bytes/token (record)", "bytes/token (stored base64)", "tokens/row", "rows/doc",
               "Spearman (all docs)", "Spearman (fp32 top-100)", "top-10 overlap", "max abs score error"], rows,
              align="---:"),
        "",
        f"Each companion row also carries about {overhead} bytes besides the payload, plus the document id "
        "(key, version, chunk, codec, n_tokens, a 2-d placeholder vector).",
    ])
    header = "\n".join([
        "## ColBERT codecs",
        "",
        "Regenerate: `.venv/bin/python bench/measure_codecs.py`, then "
        "`.venv/bin/python bench/measure_codecs.py --size full --docs 200 --queries 40 --append` for 1024-d "
        "(the full-size random checkpoint; about 15 minutes of encoding on 2 busy cores).",
        "Codecs: milvus_embed_ext/store/codecs.py (setting `colbert_codec`, default int6). They apply to the",
        "portable companion store (Milvus Lite, servers before 2.6.4); native multi-vector fields store float32.",
        "Reading: fp16 halves fp32 with no rank change; int8 halves fp16 again; int6 stores one printable",
        "character per element (no base64: 0.38x of fp16's stored bytes); compare their top-10 overlap in the",
        "tables. 1-bit signs are 16x smaller than fp16 but reorder the top (worse at low dimension), so use",
        "them only with a deeper candidate set or as a pre-filter before an exact re-score.",
    ])
    publish(args, SECTION, body if args.append else f"{header}\n\n{body}", append=args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
