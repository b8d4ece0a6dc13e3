"""Ingestion: documents per second from text to every representation stored.

- ``milvus-embed``: ``SidecarClient.upsert`` through the streaming RPC (chunks of 64) into a sidecar started on
  a fresh Milvus Lite file (or ``--sidecar-address`` with ``--sidecar-ingest-collection``): dense, sparse,
  ColBERT (companion rows, default codec), the truncated dense fields of the default layout, text, metadata.
- ``flagembedding``: the client loop a user writes today — per chunk of 64, FlagEmbedding encode of dense +
  sparse (batch size 16, as pymilvus-model's ``BGEM3EmbeddingFunction``), then ``MilvusClient.insert``.
  It stores less (no ColBERT, no truncated field): the ratio is "everything" against "dense + sparse".

Every round writes new ids, so each round is an insert, not an overwrite.
"""

from __future__ import annotations

import itertools
import uuid

import benchlib
import pytest

CHUNK = 64
IMPLS = ["milvus-embed", "flagembedding"]


@pytest.fixture(scope="module")
def n_docs(request) -> int:
    return int(benchlib.sized_option(request.config, "--ingest-docs", 512, 64))


@pytest.fixture(scope="module")
def corpus(n_docs):
    from milvus_embed_ext.devtools.synthetic import generate_corpus

    return generate_corpus(n_docs, seed=21, min_words=20, max_words=200)


@pytest.fixture(scope="module")
def ingest_sidecar(request, bench_device, tmp_path_factory):
    live = request.config.getoption("--sidecar-address")
    if live:
        target = request.config.getoption("--sidecar-ingest-collection")
        if not target:
            pytest.skip("--sidecar-address: ingestion writes, so it needs --sidecar-ingest-collection NAME")
        yield benchlib.live_sidecar(live, target, request.config.getoption("--sidecar-tls"),
                                    request.config.getoption("--sidecar-ca"))
        return
    work = tmp_path_factory.mktemp("bench-ingest")
    env = benchlib.parse_env(request.config.getoption("--sidecar-env"))
    model_dir = request.getfixturevalue("bench_model_dir")
    with benchlib.start_sidecar(model_dir, work / "ingest.db", work, device=bench_device, extra_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def baseline_client(request, tmp_path_factory):
    if request.config.getoption("--sidecar-address"):
        pytest.skip("--sidecar-address: the baseline runs locally only")
    from pymilvus import MilvusClient

    m3_encoder = request.getfixturevalue("m3_encoder")

    client = MilvusClient(str(tmp_path_factory.mktemp("bench-ingest-base") / "baseline.db"))
    benchlib.baseline_create(client, benchlib.BASELINE_COLLECTION, m3_encoder.hidden_size)
    yield client
    client.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_ingest(benchmark, request, impl, corpus, bench_record):
    quick = request.config.getoption("--quick")
    run_tag = uuid.uuid4().hex[:8]
    counter = itertools.count()
    written: list[list[str]] = []

    def fresh_round():
        r = next(counter)
        ids = [f"mee-bench-{run_tag}-{r}-{i}" for i in range(len(corpus))]
        written.append(ids)
        return (ids,), {}

    token_counts: list[int] = []  # as the sidecar counted them (a live one may run another model)
    texts = [d.text for d in corpus]
    meta = [d.metadata for d in corpus]
    if impl == "milvus-embed":
        sidecar = request.getfixturevalue("ingest_sidecar")
        client = sidecar.client(timeout=600.0)

        def ingest(ids):
            docs = ({"id": i, "text": t, "metadata": m} for i, t, m in zip(ids, texts, meta, strict=True))
            res = client.upsert(docs, collection=sidecar.collection, chunk_size=CHUNK)
            assert res.upserted == len(ids)
            token_counts.append(res.tokens)

        def check(ids):
            got = client.get(ids[:3], collection=sidecar.collection, output_fields=["text"])
            assert [g["text"] for g in got] == texts[:3]
    else:
        base = request.getfixturevalue("baseline_client")
        flag = request.getfixturevalue("flag_model")

        def ingest(ids):
            for s in range(0, len(ids), CHUNK):
                dense, sparse = benchlib.flag_encode(flag, texts[s:s + CHUNK])
                base.insert(benchlib.BASELINE_COLLECTION,
                            benchlib.baseline_rows(ids[s:s + CHUNK], texts[s:s + CHUNK], meta[s:s + CHUNK], dense, sparse))

        def check(ids):
            got = base.get(benchlib.BASELINE_COLLECTION, ids=ids[:3], output_fields=["text"])
            assert sorted(g["text"] for g in got) == sorted(texts[:3])

    benchmark.group = "ingest"
    try:
        benchmark.pedantic(ingest, setup=fresh_round, rounds=2 if quick else 3, warmup_rounds=1)
        check(written[-1])
    finally:
        if impl == "milvus-embed":
            if sidecar.live:  # leave a live deployment as it was
                for ids in written:
                    client.delete(ids, collection=sidecar.collection)
            client.close()
    tokens = (token_counts[-1] if token_counts
              else int(sum(request.getfixturevalue("m3_encoder").count_tokens(texts))))
    mean = benchmark.stats.stats.mean
    stored = ("dense, sparse, ColBERT, truncated dense, text, metadata" if impl == "milvus-embed"
              else "dense, sparse, text, metadata")
    benchmark.extra_info.update(impl=impl, docs=len(corpus), tokens=tokens, chunk=CHUNK, stored=stored,
                                docs_per_s=len(corpus) / mean, tokens_per_s=tokens / mean)
    benchmark.extra_info["config"] += f" docs={len(corpus)}"
    bench_record("ingest", impl, docs_per_s=len(corpus) / mean, texts_per_s=len(corpus) / mean,
                 tokens_per_s=tokens / mean)
