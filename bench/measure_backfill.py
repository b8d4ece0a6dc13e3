"""Backfill throughput of the sharded re-encode with 1, 2, ... `migrate work` workers on one Milvus server.

    .venv/bin/python bench/measure_backfill.py --quick                          # smoke run, tiny checkpoint
    .venv/bin/python bench/measure_backfill.py --model .cache/test-model-wide --docs 2000 --workers 1,2
    .venv/bin/python bench/measure_backfill.py --uri http://127.0.0.1:19530 --model /models/bge-m3

For each worker count it creates a fresh collection (companion ColBERT, texts stored), seeds it with
``--docs`` synthetic documents carrying random "old model" vectors, starts that many worker processes at
once (``milvus-embed migrate work``, ``MEE_ENCODER_THREADS`` = cores / workers) and times the backfill
from the first shard claim until every shard is done (model loading excluded: each worker loads its
model before it opens the plan or claims a shard; polled every 0.1 s). Then ``migrate upgrade`` finishes the revision, which checks
that every shard is done and the rows add up. It reports documents/s and tokens/s in all and per worker,
and what one GPU at ``--gpu-tokens-per-s`` (default: the H100 fp16 figure in docs/hardware.md) needs for
10M and 100M documents of the measured length.

Without ``--uri`` it starts a milvus-lite 3.2.x server (``--server-bin``, default MEE_TEST_MILVUS_SERVER_BIN
or ``.venv-lite3/bin/milvus-lite``) in a temporary directory and stops it at the end. Run it on a quiet
machine; on a shared one the figures say little.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from benchlib import CACHE_DIR, free_port  # noqa: E402

SHIM_DIR = REPO / "tests" / "server_backfill"  # milvus-lite 3.2.2 drops collection descriptions: see there
REV = "0002_reencode"
SCRIPTS = {
    "0001_layout.py": '''
        """Companion ColBERT (portable on every server), texts stored."""
        revision = "0001_layout"
        down_revision = None


        def upgrade(op):
            op.create_collection(op.layout(truncated=(), colbert="companion", index_type="FLAT"))
        ''',
    "0002_reencode.py": '''
        """Re-encode every document with the configured model."""
        revision = "0002_reencode"
        down_revision = "0001_layout"


        def upgrade(op):
            op.reencode()
        ''',
}
H100_FP16_TOKENS_PER_S = 174_000.0  # docs/hardware.md, GPU check, one H100, fp16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="checkpoint dir (e.g. a `make-test-model --size wide` one); "
                   "empty: the tiny test checkpoint, built into the test cache")
    p.add_argument("--uri", default="", help="an existing Milvus server (http://host:port); empty: start one")
    p.add_argument("--server-bin", default=os.environ.get("MEE_TEST_MILVUS_SERVER_BIN",
                                                          str(REPO / ".venv-lite3" / "bin" / "milvus-lite")))
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--words", type=int, default=220, help="words per document (~300 tokens at the default)")
    p.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores shared by the workers")
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lease-ttl", type=float, default=600.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu-tokens-per-s", type=float, default=H100_FP16_TOKENS_PER_S)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker count")
    p.add_argument("--out", default="", help="also write the JSON report here")
    p.add_argument("--quick", action="store_true", help="smoke run: 120 short documents, 8 shards")
    args = p.parse_args(argv)
    if args.quick:
        args.docs, args.words, args.shards, args.batch_size = 120, 30, 8, 8
    return args


def start_server(binary: str, root: Path) -> tuple[subprocess.Popen, str]:
    if not Path(binary).is_file():
        sys.exit(f"no Milvus server binary at {binary}: pass --uri or --server-bin (pip install milvus-lite==3.2.2)")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([binary, "server", "--data-dir", str(root / "data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the Milvus server did not start; see {root / 'server.log'}")
            time.sleep(0.3)


def _drops_descriptions(client: Any) -> bool:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, description="probe")
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=8)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="L2")
    name = "mee_bench_probe"
    if client.has_collection(name):
        client.drop_collection(name)
    client.create_collection(name, schema=schema, index_params=index)
    dropped = not client.describe_collection(name).get("description")
    client.drop_collection(name)
    return dropped


def cli_prefix(shim: bool) -> list[str]:
    if not shim:
        return [sys.executable, "-m", "milvus_embed_ext.cli"]
    code = (f"import sys; sys.path.insert(0, {str(SHIM_DIR)!r}); import _desc_shim; _desc_shim.install(); "
            "from milvus_embed_ext.cli import main; sys.exit(main())")
    return [sys.executable, "-c", code]


def seed(store: Any, name: str, docs: list[Any], dim: int) -> None:
    """Documents as an older model wrote them (random vectors, a short ColBERT matrix each)."""
    from milvus_embed_ext.encoder.output import M3Output
    from milvus_embed_ext.store.documents import DocumentStore

    ds = DocumentStore.open(store, name)
    rng = np.random.default_rng(0)
    for i in range(0, len(docs), 256):
        part = docs[i:i + 256]
        dense = rng.normal(size=(len(part), dim)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        colbert = [dense[j:j + 1].repeat(2, axis=0) for j in range(len(part))]
        sparse = [{int(k): 0.5 for k in rng.choice(1000, 4, replace=False)} for _ in part]
        ds.write([{"id": d.id, "text": d.text, "metadata": d.metadata} for d in part],
                 M3Output(dense=dense, sparse=sparse, colbert=colbert))
    store.client.flush(name)
    store.client.flush(ds.layout.companion_name)


def count_tokens(model: str, texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return int(sum(len(ids) for ids in tok(texts, truncation=True, max_length=8192)["input_ids"]))


_DID = re.compile(r"this worker did (\d+) shards, (\d+) rows in ([\d.]+)s")


def run_workers(args: argparse.Namespace, uri: str, model: str, scripts: Path, workers: int, shim: bool,
                store: Any, docs: list[Any], dim: int) -> dict[str, Any]:
    from milvus_embed_ext import migrations as m
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.migrations.history import SystemTable
    from milvus_embed_ext.migrations.shards import read_plan

    name = f"bench_backfill_w{workers}_{int(time.time())}"
    settings = load_settings(env={}, overrides={"milvus_uri": uri, "collection": name, "model": model,
                                                "migrations_dir": str(scripts), "device": args.device})
    m.upgrade(m.config_from_settings(settings), "0001_layout", store=store)
    seed(store, name, docs, dim)
    threads = max(1, args.cores // workers)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MEE_DEVICE": args.device, "MEE_ENCODER_THREADS": str(threads)}
    cmd = [*cli_prefix(shim), "migrate", "work", "--revision", REV, "--milvus-uri", uri, "--collection", name,
           "--model", model, "--migrations-dir", str(scripts), "--shards", str(args.shards),
           "--batch-size", str(args.batch_size), "--lease-ttl", str(args.lease_ttl), "--workers", str(workers)]
    procs = [subprocess.Popen([*cmd, "--worker-index", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for i in range(workers)]
    table = SystemTable(store.client)
    key = f"{REV}:up:0:shards"
    t_open = t_done = None
    deadline = time.monotonic() + args.timeout
    while t_done is None:
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            sys.exit(f"{workers} worker(s): the backfill did not finish within {args.timeout}s")
        plan = read_plan(table, name, key)
        if plan is not None:
            if t_open is None and (table.rows("lease", plan.group) or table.rows("shard", plan.group)):
                t_open = time.monotonic()  # the first claim: workers load their model before claiming
            done = sum(1 for r in table.rows("shard", plan.group) if r.get("done"))
            if done == plan.n_shards:
                t_done = time.monotonic()
        if all(p.poll() is not None for p in procs) and t_done is None:
            break
        time.sleep(0.1)
    per_worker = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            sys.exit(f"a worker failed ({p.returncode}):\n{out[-3000:]}")
        hit = _DID.search(out)
        if hit:
            shards, rows, secs = int(hit.group(1)), int(hit.group(2)), float(hit.group(3))
            per_worker.append({"shards": shards, "rows": rows, "seconds": secs,
                               "docs_per_s": rows / secs if secs else None})
    if t_done is None or t_open is None:
        sys.exit(f"{workers} worker(s) exited before every shard was done")
    m.upgrade(m.config_from_settings(settings), store=store)  # the finish step: verifies, marks applied
    wall = t_done - t_open
    return {"workers": workers, "encoder_threads_per_worker": threads, "wall_s": round(wall, 3),
            "docs_per_s": round(len(docs) / wall, 2), "per_worker": per_worker, "collection": name}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.migrations.context import dense_dim_for_model
    from milvus_embed_ext.search.synthetic import generate_corpus
    from milvus_embed_ext.store.client import MilvusStore

    model = args.model
    if not model:
        from milvus_embed_ext.encoder.testmodel import ensure_test_model

        model = str(ensure_test_model(CACHE_DIR / "test-model-tiny", size="tiny", seed=0))
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    root = Path(tempfile.mkdtemp(prefix="mee-bench-backfill-"))
    server = None
    try:
        uri = args.uri
        if not uri:
            server, uri = start_server(args.server_bin, root)
        scripts = root / "scripts"
        scripts.mkdir()
        for fname, source in SCRIPTS.items():
            (scripts / fname).write_text(textwrap.dedent(source).lstrip())
        docs = generate_corpus(args.docs, seed=5, min_words=max(1, args.words * 3 // 4),
                               max_words=max(2, args.words * 5 // 4))
        tokens = count_tokens(model, [d.text for d in docs])
        settings = load_settings(env={}, overrides={"milvus_uri": uri, "model": model})
        dim = dense_dim_for_model(settings)
        with MilvusStore.connect(settings) as store:
            shim = _drops_descriptions(store.client)
            if shim:
                sys.path.insert(0, str(SHIM_DIR))
                import _desc_shim

                _desc_shim.install()
            runs = [run_workers(args, uri, model, scripts, w, shim, store, docs, dim) for w in counts]
        tokens_per_doc = tokens / len(docs)
        for r in runs:
            r["tokens_per_s"] = round(r["docs_per_s"] * tokens_per_doc, 1)
            r["tokens_per_s_per_worker"] = round(r["tokens_per_s"] / r["workers"], 1)
        gpu = args.gpu_tokens_per_s
        report = {
            "bench": "sharded re-encode backfill", "model": model, "hidden": dim, "docs": len(docs),
            "tokens": tokens, "tokens_per_doc": round(tokens_per_doc, 1), "shards": args.shards,
            "batch_size": args.batch_size, "device": args.device, "cores": args.cores,
            "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} cpus",
            "server": uri if args.uri else f"milvus-lite server ({args.server_bin})", "runs": runs,
            "one_gpu_projection": {
                "tokens_per_s": gpu,
                "hours_10M_docs": round(10e6 * tokens_per_doc / gpu / 3600, 2),
                "hours_100M_docs": round(100e6 * tokens_per_doc / gpu / 3600, 2),
                "note": "encode time only at the given rate; Milvus writes must keep up (docs/operations.md)",
            },
        }
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        return 0
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
