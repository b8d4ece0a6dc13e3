"""The Rerank RPC and search stage 3 through the server: clients (sync, async), CLI, limits, the reranker's own
queue, FAILED_PRECONDITION without a reranker, and one search over embedded Milvus Lite."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest

from milvus_embed_ext import cli
from milvus_embed_ext.client import AsyncSidecarClient, SidecarClient, build_search_request
from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from milvus_embed_ext.service.handlers import plan_overrides
from milvus_embed_ext.service.server import Sidecar
from milvus_embed_ext.wire._generated import search_pb2
from tests._fakes import NullStore
from tests.service.svc_helpers import GatedReranker, start_in_process

PASSAGES = ["Probiotics are good for the stomach", "Probiotics harm the stomach", "Tokyo is the capital of Japan"]


def test_rerank_rpc_sync_async_and_cli(tiny_encoder, tiny_reranker, capsys):
    async def main():
        sc = await start_in_process(tiny_encoder, tiny_reranker, reranker_max_pairs=4, reranker_max_text_chars=100)
        addr = f"127.0.0.1:{sc.port}"
        try:
            async with AsyncSidecarClient(addr) as c:
                res = await c.rerank("are probiotics good", PASSAGES)
                norm = await c.rerank("are probiotics good", PASSAGES, normalize=True)
                # the core function HTTP will call: same scores through the same batcher
                core = await sc.rt.rerank("are probiotics good", PASSAGES, normalize=True)
            ref_raw, counts = tiny_reranker.compute_score_detailed([("are probiotics good", p) for p in PASSAGES])
            assert res.scores == pytest.approx(ref_raw, abs=1e-6)
            assert res.token_counts == counts
            assert norm.scores == pytest.approx(tiny_reranker.compute_score(
                [("are probiotics good", p) for p in PASSAGES], normalize=True), abs=1e-6)
            assert core == pytest.approx(norm.scores, abs=1e-9)
            assert res.model == tiny_reranker.model_id and res.model_fingerprint == tiny_reranker.fingerprint
            assert sorted(res.order()) == [0, 1, 2] and res.timings.total_ms > 0

            def sync_part():
                with SidecarClient(addr) as s:
                    assert s.rerank("are probiotics good", PASSAGES).scores == pytest.approx(res.scores, abs=1e-6)
                    with pytest.raises(InvalidArgument, match="reranker_max_pairs=4"):
                        s.rerank("q", ["p"] * 5)
                    with pytest.raises(InvalidArgument, match="passages is empty"):
                        s.rerank("q", [])
                    with pytest.raises(InvalidArgument, match="query is empty"):
                        s.rerank("  ", ["p"])
                    with pytest.raises(InvalidArgument, match="reranker_max_text_chars=100"):
                        s.rerank("q", ["x" * 101])
                    with pytest.raises(InvalidArgument, match="single string"):
                        s.rerank("q", "passage")
                assert cli.main(["rerank", "are probiotics good", *PASSAGES, "--address", addr, "--normalize"]) == 0

            await asyncio.get_running_loop().run_in_executor(None, sync_part)
        finally:
            await sc.stop(1)

    asyncio.run(main())
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and '"rank"' in lines[0] and '"passage": "Probiotics' in lines[0]


def test_without_a_reranker_rerank_and_stage_three_say_how_to_enable_it(tiny_encoder):
    async def main():
        sc = await start_in_process(tiny_encoder)
        try:
            async with AsyncSidecarClient(f"127.0.0.1:{sc.port}") as c:
                with pytest.raises(FailedPrecondition, match="MEE_RERANKER_MODEL"):
                    await c.rerank("q", ["p"])
                with pytest.raises(FailedPrecondition, match="MEE_RERANKER_MODEL"):
                    await c.hybrid_search("q", cross_encoder=True)
                assert (await c.embed(["still embeds"])).dense is not None
        finally:
            await sc.stop(1)

    asyncio.run(main())


def test_reranks_have_their_own_queue_and_do_not_block_embedding(tiny_encoder, tiny_reranker):
    gated = GatedReranker(tiny_reranker)

    async def main():
        sc = await start_in_process(tiny_encoder, gated, reranker_max_queue=4, max_wait_ms=1)
        try:
            async with AsyncSidecarClient(f"127.0.0.1:{sc.port}") as c:
                gated.gate.clear()
                busy = asyncio.create_task(c.rerank("q", ["keeps the reranker busy"]))
                await asyncio.get_running_loop().run_in_executor(None, gated.started.wait, 10)
                a = asyncio.create_task(c.rerank("q", ["a1", "a2"]))
                b = asyncio.create_task(c.rerank("q2", ["b1"]))
                await asyncio.sleep(0.3)
                assert sc.rt.rerank_batcher.queued_pairs == 3
                with pytest.raises(ResourceExhausted, match="reranker_max_queue"):
                    await c.rerank("q", ["x", "y"])
                # the encoder's queue and thread are free while the reranker is stuck
                emb = await asyncio.wait_for(c.embed(["embedding is not starved"]), 20)
                assert emb.dense is not None
                gated.gate.set()
                await busy
                ra, rb = await a, await b
                assert len(ra.scores) == 2 and len(rb.scores) == 1
            # the two waiting requests (different queries) were merged into one reranker call
            assert gated.calls == [1, 3]
        finally:
            gated.gate.set()
            await sc.stop(1)

    asyncio.run(main())


def test_old_rerank_name_still_accepted_with_a_warning():
    req = build_search_request("q", collection="", top_k=5, offset=0, filter="", output_fields=[], candidates=None,
                               rescore=["dense"], candidate_k=None, truncate_dim=None, allow_partial=False,
                               fusion=None, weights=None, rrf_k=None, normalization=None)
    assert plan_overrides(req)["representations"] == ("dense",)
    old = search_pb2.HybridSearchRequest(query="q")
    old.plan.rerank.append(search_pb2.REPRESENTATION_SPARSE)  # an old client
    assert plan_overrides(old)["representations"] == ("sparse",)
    old.plan.rescore.append(search_pb2.REPRESENTATION_DENSE)
    with pytest.raises(InvalidArgument, match="disagree"):
        plan_overrides(old)
    client = SidecarClient("127.0.0.1:1", timeout=0.5)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(Exception):  # noqa: B017, PT011
        warnings.simplefilter("always")
        client.hybrid_search("q", rerank=["dense"])  # nothing listens: the warning comes first
    client.close()
    assert any(issubclass(w.category, DeprecationWarning) and "rescore" in str(w.message) for w in caught)


def test_search_stage_three_over_milvus_lite(tiny_model_dir: Path, tiny_encoder, tiny_reranker, tmp_path):
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(
        PASSAGES + ["Probiotics and yogurt", "Stomach aches after antibiotics", "The stomach digests food",
                    "Kyoto temples", "Osaka food"])]

    async def main():
        sc = await start_in_process(tiny_encoder, tiny_reranker, lite=True, model=str(tiny_model_dir),
                                    milvus_uri=str(tmp_path / "m.db"))
        try:
            async with AsyncSidecarClient(f"127.0.0.1:{sc.port}") as c:
                await c.upsert(docs)
                plain = await c.hybrid_search("are probiotics good for the stomach", top_k=8)
                res = await c.hybrid_search("are probiotics good for the stomach", top_k=3, output_fields=["text"],
                                            cross_encoder=True, cross_encoder_top_n=8)
                fused = await c.hybrid_search("are probiotics good for the stomach", top_k=3, cross_encoder=True,
                                              cross_encoder_order="fused", cross_encoder_weight=0.5)
            # the order is the cross-encoder's over the fused top 8, which is the whole corpus here
            texts = {d["id"]: d["text"] for d in docs}
            pairs = [("are probiotics good for the stomach", texts[h.id]) for h in plain.hits]
            ref = tiny_reranker.compute_score(pairs)
            expected = [plain.hits[i].id for i in sorted(range(len(ref)), key=lambda i: -ref[i])[:3]]
            assert [h.id for h in res.hits] == expected
            for h in res.hits:
                assert set(h.scores) == {"dense", "sparse", "colbert", "fused", "cross_encoder"}
                assert h.score == pytest.approx(h.scores["cross_encoder"])
                assert h.text == texts[h.id]
            assert "cross_encoder" in res.timings.stages_ms
            assert all(0.0 <= h.score <= 1.0 for h in fused.hits)
        finally:
            await sc.stop(1)

    asyncio.run(main())


def test_reranker_loads_from_settings_and_a_broken_one_fails_start_up(tiny_encoder, tiny_reranker_dir, tiny_model_dir):
    async def main():
        sc = await start_in_process(tiny_encoder, reranker_model=str(tiny_reranker_dir), reranker_device="cpu",
                                    reranker_dtype="fp32", reranker_max_length=128)
        try:
            assert sc.rt.reranker is not None and sc.rt.reranker.max_length == 128
            assert len(await sc.rt.rerank("q", ["a", "b"])) == 2
        finally:
            await sc.stop(1)
        # an embedding checkpoint is not a cross-encoder: start-up fails and says why
        settings = load_settings(env={}, overrides={"listen": "127.0.0.1:0", "reranker_model": str(tiny_model_dir),
                                                    "reranker_device": "cpu"})
        bad = Sidecar(settings, encoder=tiny_encoder, store=NullStore())
        await bad.start()
        try:
            await asyncio.wait_for(bad.failed.wait(), 60)
            assert "one-logit cross-encoder" in str(bad.startup_error)
        finally:
            await bad.stop(0)

    asyncio.run(main())


def test_http_rerank_goes_through_the_rerank_batcher(tiny_encoder, tiny_reranker):
    """TEI ``POST /rerank`` scores with the configured reranker through the same batcher (and limits) as gRPC."""
    import httpx

    from tests._sidecar import free_port

    port = free_port()
    gated = GatedReranker(tiny_reranker)

    async def main():
        sc = await start_in_process(tiny_encoder, gated, http_listen=f"127.0.0.1:{port}", reranker_max_pairs=4)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                r = await http.post("/rerank", json={"query": "are probiotics good", "texts": PASSAGES,
                                                     "raw_scores": True})
                assert r.status_code == 200, r.text
                got = {item["index"]: item["score"] for item in r.json()}
                too_many = await http.post("/rerank", json={"query": "q", "texts": ["p"] * 5})
            ref = tiny_reranker.compute_score([("are probiotics good", p) for p in PASSAGES])
            assert [got[i] for i in range(len(PASSAGES))] == pytest.approx(ref, abs=1e-6)
            assert gated.calls == [len(PASSAGES)]  # one batched call on the reranker's thread
            assert too_many.status_code in (413, 422) and "reranker_max_pairs" in too_many.text
        finally:
            await sc.stop(1)

    asyncio.run(main())
