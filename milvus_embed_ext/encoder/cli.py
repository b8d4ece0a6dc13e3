"""Encoder subcommands: ``make-test-model`` (offline checkpoint) and ``encode`` (a quick look at the outputs)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import add_settings_args
    from ..progress import add_quiet_arg
    from .testmodel import SIZES

    p = subparsers.add_parser(
        "make-test-model",
        help="build an offline checkpoint in BGE-M3's exact on-disk layout (random weights)",
        description="Build, without network access, an XLM-RoBERTa checkpoint plus colbert_linear.pt and "
                    "sparse_linear.pt. 'tiny' is for tests; 'full' has BGE-M3's exact shapes; 'wide' has BGE-M3's "
                    "widths (1024-d vectors, full vocabulary) with 2 layers, for search and storage benchmarks.",
    )
    p.add_argument("out", help="output directory (must be empty or absent)")
    p.add_argument("--size", choices=tuple(SIZES), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    add_quiet_arg(p)
    p.add_argument("--kind", choices=("m3", "reranker"), default="m3",
                   help="m3: BGE-M3's layout (default); reranker: bge-reranker-v2-m3's (sequence classification, "
                        "one logit, same tokenizer)")
    p.set_defaults(handler=_make_test_model)

    e = subparsers.add_parser(
        "encode",
        help="encode texts and print shapes and the heaviest sparse tokens",
        description="Encode TEXT arguments (or stdin lines with '-') and print a summary, or JSON with --json.",
    )
    e.add_argument("texts", nargs="+", metavar="TEXT", help="texts to encode; '-' reads one text per stdin line")
    e.add_argument("--top", type=int, default=8, help="sparse tokens to show per text")
    e.add_argument("--max-length", type=int, default=None, help="tokens per text (default: settings max_length)")
    e.add_argument("--json", action="store_true", help="print the full vectors as JSON lines")
    add_settings_args(e, "--model", "--device", "--dtype", "--backend")
    e.set_defaults(handler=_encode)


def _make_test_model(args: argparse.Namespace) -> int:
    from ..progress import ProgressBoard
    from .testmodel import build_test_model

    started = time.perf_counter()
    with ProgressBoard(unit="steps", quiet=args.quiet) as board:
        out = build_test_model(Path(args.out), size=args.size, seed=args.seed, kind=args.kind, progress=board)
    kind = "" if args.kind == "m3" else f"{args.kind} "
    print(f"built {args.size} {kind}test model in {out} ({time.perf_counter() - started:.1f}s)")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from ..cli import settings_from_args
    from .factory import encoder_from_settings

    settings = settings_from_args(args)
    texts = [line.rstrip("\n") for line in sys.stdin] if args.texts == ["-"] else list(args.texts)
    encoder = encoder_from_settings(settings, max_length=args.max_length or settings.max_length)
    started = time.perf_counter()
    out = encoder.encode(texts, truncate_dims=[d for d in settings.truncate_dims if d <= encoder.hidden_size])
    elapsed = time.perf_counter() - started
    for i, text in enumerate(texts):
        sparse = out.sparse[i] if out.sparse is not None else {}
        top = sorted(sparse.items(), key=lambda kv: -kv[1])[: max(args.top, 0)]
        if args.json:
            print(json.dumps({
                "text": text,
                "tokens": int(out.token_counts[i]),
                "dense": out.dense[i].tolist() if out.dense is not None else None,
                "sparse": {str(k): v for k, v in sparse.items()},
                "colbert": out.colbert[i].tolist() if out.colbert is not None else None,
                "truncated": {str(d): v[i].tolist() for d, v in out.truncated.items()},
            }, ensure_ascii=False))
            continue
        shown = ", ".join(f"{encoder.id_to_token(k)!r}:{w:.3f}" for k, w in top)
        colbert_shape = tuple(out.colbert[i].shape) if out.colbert is not None else None
        print(f"[{i}] {text[:60]!r}")
        print(f"    tokens={int(out.token_counts[i])} dense={encoder.hidden_size} colbert={colbert_shape} "
              f"truncated={sorted(out.truncated)} sparse_nnz={len(sparse)}")
        print(f"    top sparse: {shown or '(none)'}")
    if not args.json:
        print(f"model {encoder.model_id} on {encoder.device}/{encoder.dtype}: {len(texts)} texts, "
              f"{int(out.token_counts.sum())} tokens in {elapsed * 1000:.1f} ms")
    return 0
