"""GPU check: the CUDA path of M3Encoder on the full-size (BGE-M3-shaped) checkpoint.

Run by ``bench/gpu_check.sh`` on a CUDA machine in well under 5 minutes:
  1. builds (or reuses) the full-size random checkpoint (24 layers, hidden 1024, vocab 250002);
  2. parity of fp16 and bf16 against fp32 on the same GPU: dense cosine / max abs diff, lexical weights,
     ColBERT vectors, and M3 scores of query/passage pairs (tolerances printed beside the figures);
  3. throughput: tokens/s on passages of mixed length (50-500 tokens) per dtype, one-query latency p50/p99;
  4. the cross-encoder Reranker (bge-reranker-v2-m3's shape: the same body with a one-logit head, made in
     seconds from the checkpoint of step 1): fp16/bf16 logits against fp32 (max abs, sigmoid max abs,
     Spearman), pairs/s on (query, 50-400-token passage) pairs and one 10-passage request p50/p99.
Writes a Markdown section (``--markdown``) and a JSON file (``--json``); prints both.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Tolerances the fp16/bf16 path must stay within, relative to fp32 on the same device.
# Scores are compared relative to max(1, |fp32 score|): lexical scores are unbounded sums of weight products.
TOLERANCES = {
    "fp16": {"dense_cos_min": 0.999, "m3_score_rel": 1e-2, "spearman_min": 0.99},
    "bf16": {"dense_cos_min": 0.99, "m3_score_rel": 5e-2, "spearman_min": 0.95},
}
# Reranker: sigmoid scores (0..1) against fp32, and the order of the pairs.
RERANK_TOLERANCES = {
    "fp16": {"sigmoid_abs": 1e-2, "spearman_min": 0.99},
    "bf16": {"sigmoid_abs": 5e-2, "spearman_min": 0.95},
}


def reranker_from_m3(m3_dir: Path, out: Path, seed: int = 0) -> Path:
    """A reranker checkpoint in bge-reranker-v2-m3's layout from a BGE-M3-layout one: the same XLM-R body
    (``roberta.*``), a random one-logit head, the same tokenizer. Seconds instead of building a second body."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = json.loads((m3_dir / "config.json").read_text(encoding="utf-8"))
    config.update(architectures=["XLMRobertaForSequenceClassification"], id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0})
    (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model"):
        if (m3_dir / name).is_file():
            shutil.copy(m3_dir / name, tmp / name)
    state = {f"roberta.{k}": v for k, v in load_file(str(m3_dir / "model.safetensors")).items()
             if not k.startswith("pooler.")}
    h = int(config["hidden_size"])
    gen = torch.Generator().manual_seed(seed)
    state.update({"classifier.dense.weight": torch.randn((h, h), generator=gen) / h ** 0.5,
                  "classifier.dense.bias": torch.zeros(h),
                  "classifier.out_proj.weight": torch.randn((1, h), generator=gen) * 2 / h ** 0.5,
                  "classifier.out_proj.bias": torch.zeros(1)})
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def rerank_check(model_dir: Path, reranker_dir: Path, device: str, seconds: float, n_pairs: int,
                 rng: random.Random, report: dict) -> bool:
    """Step 4: the reranker per dtype on ``device``; fills report["reranker"], returns whether it is in tolerance."""
    import torch

    from milvus_embed_ext.encoder import Reranker

    t0 = time.perf_counter()
    path = reranker_from_m3(model_dir, reranker_dir)
    rerankers = {dt: Reranker.from_pretrained(str(path), device=device, dtype=dt, max_length=512,
                                              token_budget=65536, max_batch=256) for dt in ("fp32", "fp16", "bf16")}
    ref = rerankers["fp32"]
    word_src = M3Words(ref)
    queries = [word_src.text(rng, 8, 24) for _ in range(8)]
    parity_pairs = [(q, word_src.text(rng, 50, 400)) for q in queries for _ in range(16)]
    bench_pairs = [(queries[i % len(queries)], word_src.text(rng, 50, 400)) for i in range(n_pairs)]
    requests = [[(q, word_src.text(rng, 40, 80)) for _ in range(10)] for q in queries]
    out: dict = {"checkpoint_ready_s": round(time.perf_counter() - t0, 1), "bench_pairs": len(bench_pairs),
                 "bench_tokens": int(sum(ref.count_tokens(bench_pairs))), "parity": {}, "throughput": {},
                 "request_latency": {}}
    ok = True
    base = np.asarray(ref.compute_score(parity_pairs))
    for dt in ("fp16", "bf16"):
        got = np.asarray(rerankers[dt].compute_score(parity_pairs))
        sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
        res = {"logit_abs_max": float(np.max(np.abs(base - got))),
               "sigmoid_abs_max": float(np.max(np.abs(sig(base) - sig(got)))),
               "spearman": spearman(base, got), "logit_std_fp32": float(base.std())}
        tol = RERANK_TOLERANCES[dt]
        res["within_tolerance"] = res["sigmoid_abs_max"] <= tol["sigmoid_abs"] and res["spearman"] >= tol["spearman_min"]
        ok &= res["within_tolerance"]
        out["parity"][dt] = res
        print(json.dumps({f"reranker {dt}": res}), flush=True)
    for dt, r in rerankers.items():
        r.compute_score(bench_pairs[:64])  # warm-up
        _sync()
        runs, elapsed = repeat_for(seconds, lambda r=r: r.compute_score(bench_pairs))
        out["throughput"][dt] = {"pairs_per_s": len(bench_pairs) * runs / elapsed,
                                 "tokens_per_s": out["bench_tokens"] * runs / elapsed}
        out["request_latency"][dt] = latency_ms(lambda i, r=r: r.compute_score(requests[i % len(requests)]), 50)
        print(json.dumps({f"reranker {dt}": [out["throughput"][dt], out["request_latency"][dt]]}), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report["reranker"] = out
    return ok


class M3Words:
    """Texts of a target token length for the reranker (count_tokens of a pair with an empty query)."""

    def __init__(self, reranker) -> None:
        from milvus_embed_ext.encoder.testmodel import _corpus_lines

        self.reranker = reranker
        self.words = " ".join(_corpus_lines()).split()

    def text(self, rng: random.Random, lo: int, hi: int) -> str:
        target = rng.randint(lo, hi)
        start = rng.randrange(len(self.words))
        text = " ".join(self.words[(start + i) % len(self.words)] for i in range(max(4, target // 2)))
        while self.reranker.count_tokens([(".", text)], max_length=8192)[0] - 5 < target:
            text += " " + " ".join(rng.choice(self.words) for _ in range(16))
        return text


def make_texts(encoder, rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    """Texts whose token counts spread over [lo, hi], built from the tokenizer's multilingual corpus."""
    from milvus_embed_ext.encoder.testmodel import _corpus_lines

    words = " ".join(_corpus_lines()).split()
    texts = []
    for _ in range(n):
        target = rng.randint(lo, hi)
        start = rng.randrange(len(words))
        count = max(8, target // 2)
        text = " ".join(words[(start + i) % len(words)] for i in range(count))
        while encoder.count_tokens([text])[0] < target:
            text += " " + " ".join(rng.choice(words) for _ in range(16))
        texts.append(text)
    return texts


def parity(ref, test, queries: list[str], passages: list[str]) -> dict[str, float]:
    from milvus_embed_ext.encoder import m3_score

    a = ref.encode(passages)
    b = test.encode(passages)
    cos = np.sum(a.dense * b.dense, axis=1)
    colbert_diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a.colbert, b.colbert, strict=True))
    lexical = []
    for x, y in zip(a.sparse, b.sparse, strict=True):
        for k in set(x) | set(y):
            lexical.append(abs(x.get(k, 0.0) - y.get(k, 0.0)))
    qa = ref.encode(queries)
    qb = test.encode(queries)
    ref_scores, test_scores = [], []
    for i in range(len(queries)):
        for j in range(len(passages)):
            ref_scores.append(m3_score(qa.select([i]), a.select([j])))
            test_scores.append(m3_score(qb.select([i]), b.select([j])))
    r, t = np.asarray(ref_scores), np.asarray(test_scores)
    max_weight = max((max(x.values(), default=0.0) for x in a.sparse), default=1.0) or 1.0
    return {
        "dense_cos_min": float(cos.min()),
        "dense_abs_max": float(np.max(np.abs(a.dense - b.dense))),
        "lexical_rel_max": float(max(lexical, default=0.0) / max_weight),
        "colbert_abs_max": colbert_diff,
        "m3_score_rel_max": float(np.max(np.abs(r - t) / np.maximum(1.0, np.abs(r)))),
        "m3_spearman": spearman(r, t),
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def repeat_for(seconds: float, call: Callable[[], object]) -> tuple[int, float]:
    """``call`` back to back, each synced with the device, until ``seconds`` have passed: (calls, seconds taken)."""
    runs, started = 0, time.perf_counter()
    while True:
        call()
        _sync()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return runs, elapsed


def latency_ms(call: Callable[[int], object], repeats: int) -> dict[str, float]:
    """p50 / p99 in ms of ``call(i)`` for i in range(repeats), each synced with the device."""
    samples = []
    for i in range(repeats):
        t0 = time.perf_counter()
        call(i)
        _sync()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p99_ms": samples[int(0.99 * (len(samples) - 1))]}


def throughput(encoder, passages: list[str], seconds: float) -> dict[str, float]:
    tokens = sum(encoder.count_tokens(passages))
    encoder.encode(passages[:64])  # warm-up (kernels, allocator)
    _sync()
    runs, elapsed = repeat_for(seconds, lambda: encoder.encode(passages))
    return {"tokens_per_s": tokens * runs / elapsed, "texts_per_s": len(passages) * runs / elapsed}


def query_latency(encoder, queries: list[str], repeats: int) -> dict[str, float]:
    for q in queries[:5]:
        encoder.encode([q])
    return latency_ms(lambda i: encoder.encode([queries[i % len(queries)]]), repeats)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=".cache/test-model-full")
    ap.add_argument("--seconds", type=float, default=15.0, help="throughput measuring time per dtype")
    ap.add_argument("--size", default="full", choices=("tiny", "full"), help="tiny: a smoke run of this script")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script without a GPU")
    ap.add_argument("--passages", type=int, default=512, help="passages in the throughput set")
    ap.add_argument("--reranker-dir", default="", help="where to make the reranker checkpoint (default: beside "
                    "--model-dir, suffix -reranker)")
    ap.add_argument("--rerank-pairs", type=int, default=256, help="pairs in the reranker throughput set")
    ap.add_argument("--no-reranker", action="store_true", help="skip step 4 (the cross-encoder)")
    ap.add_argument("--markdown", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import torch
    import transformers

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; run this on a GPU machine", file=sys.stderr)
        return 2
    from milvus_embed_ext.encoder import M3Encoder, ensure_test_model

    t0 = time.perf_counter()
    model_dir = ensure_test_model(args.model_dir, size=args.size, seed=0)
    build_s = time.perf_counter() - t0
    print(f"gpu_check: checkpoint ready in {build_s:.1f}s", flush=True)
    rng = random.Random(1234)
    encoders = {dt: M3Encoder.from_pretrained(str(model_dir), device=args.device, dtype=dt, max_length=8192,
                                              token_budget=65536, max_batch=256) for dt in ("fp32", "fp16", "bf16")}
    ref = encoders["fp32"]
    queries = make_texts(ref, rng, 8, 8, 24)
    parity_passages = make_texts(ref, rng, 16, 50, 500)
    bench_passages = make_texts(ref, rng, args.passages, 50, 500)

    report: dict = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "checkpoint": ("full-size random BGE-M3 layout (24 layers, hidden 1024, vocab 250002)" if args.size == "full"
                       else "tiny test checkpoint (smoke run)"),
        "checkpoint_ready_s": round(build_s, 1),
        "bench_passages": len(bench_passages),
        "bench_tokens": int(sum(ref.count_tokens(bench_passages))),
        "parity": {},
        "throughput": {},
        "query_latency": {},
    }
    ok = True
    for dt in ("fp16", "bf16"):
        try:
            res = parity(ref, encoders[dt], queries, parity_passages)
        except Exception as exc:  # noqa: BLE001 - report the failure, keep measuring the rest
            print(f"gpu_check: parity {dt} failed: {exc!r}", file=sys.stderr)
            ok = False
            continue
        tol = TOLERANCES[dt]
        res["within_tolerance"] = (res["dense_cos_min"] >= tol["dense_cos_min"]
                                   and res["m3_score_rel_max"] <= tol["m3_score_rel"]
                                   and res["m3_spearman"] >= tol["spearman_min"])
        ok &= res["within_tolerance"]
        report["parity"][dt] = res
        print(json.dumps({dt: res}), flush=True)
    for dt, enc in encoders.items():
        try:
            report["throughput"][dt] = throughput(enc, bench_passages, args.seconds)
            report["query_latency"][dt] = query_latency(enc, queries, 100)
        except Exception as exc:  # noqa: BLE001
            print(f"gpu_check: throughput {dt} failed: {exc!r}", file=sys.stderr)
            ok = False
            continue
        print(json.dumps({dt: [report["throughput"][dt], report["query_latency"][dt]]}), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if not args.no_reranker:
        try:
            reranker_dir = Path(args.reranker_dir or f"{str(model_dir).rstrip('/')}-reranker")
            ok &= rerank_check(Path(model_dir), reranker_dir, args.device, args.seconds, args.rerank_pairs, rng, report)
        except Exception as exc:  # noqa: BLE001 - report it, keep the encoder figures
            print(f"gpu_check: reranker check failed: {exc!r}", file=sys.stderr)
            ok = False
    report["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0

    md = to_markdown(report)
    print(md)
    print(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(md, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0 if ok else 1


def _verdict(p: dict, tol: dict) -> str:
    """'yes', or 'NO' with the criteria that failed (so a reader sees which tolerance was missed)."""
    failed = [name for name, bad in (("dense cos", p["dense_cos_min"] < tol["dense_cos_min"]),
                                     ("score rel", p["m3_score_rel_max"] > tol["m3_score_rel"]),
                                     ("Spearman", p["m3_spearman"] < tol["spearman_min"])) if bad]
    return "yes" if not failed else "NO: " + ", ".join(failed)


def to_markdown(r: dict) -> str:
    fp32 = r["throughput"].get("fp32", {}).get("tokens_per_s", float("nan"))
    lines = [
        f"Device: {r['device']}; torch {r['torch']}, transformers {r['transformers']}, Python {r['python']}.",
        f"Checkpoint: {r['checkpoint']}. Throughput set: {r['bench_passages']} passages, "
        f"{r['bench_tokens']} tokens (50-500 tokens each), token budget 65536, max batch 256.",
        "",
        "| dtype | tokens/s | texts/s | x fp32 | one query p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for dt, t in r["throughput"].items():
        q = r["query_latency"][dt]
        lines.append(f"| {dt} | {t['tokens_per_s']:,.0f} | {t['texts_per_s']:,.1f} | {t['tokens_per_s'] / fp32:.2f} "
                     f"| {q['p50_ms']:.1f} | {q['p99_ms']:.1f} |")
    lines += ["", "Parity against fp32 on the same GPU (16 passages, 8 queries, all 128 pairs):", "",
              "| dtype | dense cos min | dense max abs | lexical max rel | ColBERT max abs | M3 score max rel "
              "| M3 Spearman | tolerance | ok |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for dt, p in r["parity"].items():
        tol = TOLERANCES[dt]
        lines.append(f"| {dt} | {p['dense_cos_min']:.6f} | {p['dense_abs_max']:.2e} | {p['lexical_rel_max']:.2e} "
                     f"| {p['colbert_abs_max']:.2e} | {p['m3_score_rel_max']:.2e} | {p['m3_spearman']:.4f} "
                     f"| cos >= {tol['dense_cos_min']}, score rel <= {tol['m3_score_rel']}, "
                     f"Spearman >= {tol['spearman_min']} | {_verdict(p, tol)} |")
    rr = r.get("reranker")
    if rr:
        fp32r = rr["throughput"].get("fp32", {}).get("pairs_per_s", float("nan"))
        lines += ["", f"Reranker (bge-reranker-v2-m3's shape: the body above plus a random one-logit head), "
                      f"{rr['bench_pairs']} (query, 50-400-token passage) pairs, {rr['bench_tokens']} tokens; "
                      "one request = a query and 10 passages of 40-80 tokens:", "",
                  "| dtype | pairs/s | tokens/s | x fp32 | one request p50 ms | p99 ms |",
                  "|---|---:|---:|---:|---:|---:|"]
        for dt, t in rr["throughput"].items():
            q = rr["request_latency"][dt]
            lines.append(f"| {dt} | {t['pairs_per_s']:,.1f} | {t['tokens_per_s']:,.0f} | "
                         f"{t['pairs_per_s'] / fp32r:.2f} | {q['p50_ms']:.1f} | {q['p99_ms']:.1f} |")
        lines += ["", "Reranker scores against fp32 on the same device (8 queries x 16 passages):", "",
                  "| dtype | logit max abs | sigmoid max abs | Spearman | fp32 logit std | tolerance | ok |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for dt, p in rr["parity"].items():
            tol = RERANK_TOLERANCES[dt]
            lines.append(f"| {dt} | {p['logit_abs_max']:.2e} | {p['sigmoid_abs_max']:.2e} | {p['spearman']:.4f} | "
                         f"{p['logit_std_fp32']:.3f} | sigmoid abs <= {tol['sigmoid_abs']}, Spearman >= "
                         f"{tol['spearman_min']} | {'yes' if p['within_tolerance'] else 'NO'} |")
    lines += ["", f"Peak GPU memory: {r['peak_gpu_mem_gib']} GiB. Checkpoint build/reuse: {r['checkpoint_ready_s']} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
