"""Storage: bytes per document in Milvus for each ColBERT codec and truncated dense field.

One collection per codec (fp32, fp16, int8, int6, bits) with the same documents and truncated fields, each in its
own Milvus Lite file, written through ``DocumentStore.write`` (the timed part). Then every row of the main
and companion collections is read back and the raw size of each stored field value is summed (what Milvus
keeps in its binlogs before compression: 4 bytes per float32 component, 8 per sparse non-zero, UTF-8 bytes
of VARCHAR/JSON...), and the Lite file's growth is measured. ``baseline`` is the dense + sparse collection a
user writes today, for scale. Index memory (HNSW graphs on a server) is not counted.
"""

from __future__ import annotations

import benchlib
import pytest

CASES = ["fp32", "fp16", "int8", "int6", "bits", "baseline"]


def _dims(hidden: int) -> tuple[int, ...]:
    """Up to three power-of-two truncations below the model's width (tiny 64-d: 16, 32; BGE-M3: 128, 256, 512)."""
    return tuple(d for d in (16, 32, 64, 128, 256, 512) if d < hidden)[-3:]


@pytest.fixture(scope="module")
def storage_corpus(request):
    if request.config.getoption("--sidecar-address"):
        pytest.skip("storage is measured on a local Milvus Lite file")
    from milvus_embed_ext.devtools.synthetic import generate_corpus
    from milvus_embed_ext.store import Document

    m3_encoder = request.getfixturevalue("m3_encoder")

    n = int(benchlib.sized_option(request.config, "--storage-docs", 300, 60))
    docs = [Document(d.id, d.text, d.metadata) for d in generate_corpus(n, seed=31, min_words=8, max_words=60)]
    dims = _dims(m3_encoder.hidden_size)
    return docs, m3_encoder.encode([d.text for d in docs], truncate_dims=dims), dims


@pytest.mark.parametrize("codec", CASES)
def test_storage(benchmark, codec, storage_corpus, m3_encoder, tmp_path):
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.store import CollectionLayout, DocumentStore, MilvusStore, TruncatedField

    docs, enc, dims = storage_corpus
    db = tmp_path / "storage.db"
    name = "bench_storage"
    layout = CollectionLayout(name=name, dense_dim=m3_encoder.hidden_size,
                              truncated=tuple(TruncatedField(d) for d in dims),
                              colbert_codec="fp16" if codec == "baseline" else codec)
    settings = load_settings(env={}, overrides={"milvus_uri": str(db)})

    store = MilvusStore.connect(settings)  # empty collections first, so the file growth is the documents'
    try:
        if codec == "baseline":
            benchlib.baseline_create(store.client, name, m3_encoder.hidden_size)
        else:
            DocumentStore.create(store, layout)
    finally:
        store.close()
    empty_size = db.stat().st_size

    benchmark.group = "storage"
    store = MilvusStore.connect(settings)
    try:
        client = store.client
        if codec == "baseline":
            rows = benchlib.baseline_rows([d.id for d in docs], [d.text for d in docs], [d.metadata for d in docs],
                                          enc.dense, enc.sparse)
            benchmark.pedantic(client.insert, args=(name, rows), rounds=1, iterations=1)
            collections = [name]
        else:
            ds = DocumentStore.open(store, name)
            benchmark.pedantic(ds.write, args=(docs, enc), rounds=1, iterations=1)
            collections = [c for c in client.list_collections() if c == name or c.startswith(name + "__")]
        per_field: dict[str, float] = {}
        per_collection: dict[str, float] = {}
        for coll in sorted(collections):
            n_rows, totals = benchlib.collection_bytes(client, coll)
            if coll == name:
                assert n_rows == len(docs), f"{coll}: {n_rows} rows for {len(docs)} documents"
                per_field.update({f: b / len(docs) for f, b in totals.items()})
            per_collection[coll.removeprefix(name) or "main"] = sum(totals.values()) / len(docs)
            per_collection[(coll.removeprefix(name) or "main") + " rows/doc"] = n_rows / len(docs)
    finally:
        store.close()
    file_growth = db.stat().st_size - empty_size

    total = sum(v for k, v in per_collection.items() if not k.endswith("rows/doc"))
    colbert_tokens = sum(int(m.shape[0]) for m in enc.colbert) / len(docs)
    benchmark.extra_info.update(
        codec=codec, docs=len(docs), dense_dim=m3_encoder.hidden_size, truncated=list(dims),
        colbert_tokens_per_doc=colbert_tokens, fields_bytes_per_doc=per_field, collections_bytes_per_doc=per_collection,
        bytes_per_doc=total, lite_file_bytes_per_doc=file_growth / len(docs),
        write_docs_per_s=len(docs) / benchmark.stats.stats.mean,
    )
    benchmark.extra_info["config"] += f" docs={len(docs)}"
