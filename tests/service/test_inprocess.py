"""The server in-process (tiny encoder, no Milvus): limits, deadlines, cancellation, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from milvus_embed_ext.client import AsyncSidecarClient, TLSConfig
from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from milvus_embed_ext.service.server import Sidecar
from milvus_embed_ext.wire._generated import embedder_pb2, embedder_pb2_grpc
from tests._fakes import NullStore
from tests._pki import make_pki
from tests.service.svc_helpers import GatedEncoder, start_in_process


def test_overload_deadline_and_cancellation(tiny_encoder):
    enc = GatedEncoder(tiny_encoder)

    async def main():
        sc = await start_in_process(enc, max_concurrent=3, max_queue=4, max_wait_ms=1)
        addr = f"127.0.0.1:{sc.port}"
        try:
            async with AsyncSidecarClient(addr) as c:
                enc.gate.clear()
                enc.started.clear()
                busy = asyncio.create_task(c.embed(["keeps the encoder busy"]))
                await asyncio.get_running_loop().run_in_executor(None, enc.started.wait, 10)
                # queue: 4 texts max; 3 are waiting -> 2 more do not fit
                waiting = asyncio.create_task(c.embed(["q1", "q2", "q3"], timeout=0.5))
                await asyncio.sleep(0.2)
                assert sc.rt.batcher.queued_texts == 3
                with pytest.raises(ResourceExhausted, match="max_queue"):
                    await c.embed(["x", "y"])
                # in flight: busy + waiting + this one = 3 -> the 4th is refused
                third = asyncio.create_task(c.embed(["z"], timeout=0.5))
                await asyncio.sleep(0.1)
                with pytest.raises(ResourceExhausted, match="max_concurrent"):
                    await c.embed(["w"])
                # deadlines: the queued requests time out and leave the queue without reaching the model
                with pytest.raises(DeadlineExceeded):
                    await waiting
                with pytest.raises(DeadlineExceeded):
                    await third
                await asyncio.sleep(0.1)
                assert sc.rt.batcher.queued_texts == 0
                # a cancelled call leaves the queue too
                cancelled = asyncio.create_task(c.embed(["cancelled text"]))
                await asyncio.sleep(0.2)
                assert sc.rt.batcher.queued_texts == 1
                cancelled.cancel()
                await asyncio.sleep(0.2)
                assert sc.rt.batcher.queued_texts == 0
                enc.gate.set()
                await busy
                ok = await c.embed(["still serving"])
                assert ok.dense.shape == (1, tiny_encoder.hidden_size)
            assert not {"q1", "z", "cancelled text"} & set(enc.texts_seen)
        finally:
            enc.gate.set()
            await sc.stop(1)

    asyncio.run(main())


def test_raw_malformed_requests_get_invalid_argument(tiny_encoder):
    async def main():
        sc = await start_in_process(tiny_encoder, max_texts_per_request=4)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
                raw = ch.unary_unary("/milvus_embed_ext.v1.Embedder/Embed")  # bytes in, bytes out
                # invalid UTF-8 in a string field (a lone surrogate encoded as CESU-8)
                bad = embedder_pb2.EmbedRequest(texts=["PLACEHOLDER"]).SerializeToString().replace(
                    b"PLACEHOLDER", b"\xed\xa0\x80ACEHOLDER")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await raw(bad)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "UTF-8" in info.value.details()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await raw(b"\xff\xff\xff")
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                stub = embedder_pb2_grpc.EmbedderStub(ch)
                cases = {
                    "texts is empty": embedder_pb2.EmbedRequest(),
                    "max_texts_per_request=4": embedder_pb2.EmbedRequest(texts=["a"] * 5),
                    "outputs[0]=9": embedder_pb2.EmbedRequest(texts=["a"], outputs=[9]),
                    "dtype=5": embedder_pb2.EmbedRequest(texts=["a"], dtype=5),
                    "truncate_dims[0]=4096": embedder_pb2.EmbedRequest(texts=["a"], truncate_dims=[4096]),
                    "max_length=100000": embedder_pb2.EmbedRequest(texts=["a"], max_length=100000),
                }
                for needle, req in cases.items():
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.Embed(req)
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, needle
                    assert needle in info.value.details()
                resp = await stub.Embed(embedder_pb2.EmbedRequest(texts=["fine"], outputs=[embedder_pb2.OUTPUT_DENSE]))
                assert list(resp.dense.shape) == [1, tiny_encoder.hidden_size]
        finally:
            await sc.stop(1)

    asyncio.run(main())


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("certs"))


def test_mutual_tls(tiny_encoder, certs):
    async def main():
        sc = await start_in_process(tiny_encoder, tls_cert=str(certs / "server.pem"),
                                    tls_key=str(certs / "server.key"), tls_client_ca=str(certs / "ca.pem"))
        addr = f"localhost:{sc.port}"
        try:
            full = TLSConfig(ca=str(certs / "ca.pem"), cert=str(certs / "client.pem"), key=str(certs / "client.key"))
            async with AsyncSidecarClient(addr, tls=full) as c:
                res = await c.embed(["over mutual TLS"])
                np.testing.assert_allclose(res.dense, tiny_encoder.encode(["over mutual TLS"]).dense, atol=1e-5)
            async with AsyncSidecarClient(addr, tls=TLSConfig(ca=str(certs / "ca.pem")), timeout=5) as c:
                with pytest.raises(Unavailable):  # no client certificate: handshake refused
                    await c.embed(["no client cert"])
            async with AsyncSidecarClient(addr, timeout=5) as c:
                with pytest.raises(Unavailable):  # plaintext against TLS
                    await c.embed(["plaintext"])
        finally:
            await sc.stop(1)

    asyncio.run(main())


def test_tls_settings_with_unreadable_files_say_which():
    settings = load_settings(env={}, overrides={"listen": "127.0.0.1:0", "tls_cert": "/nonexistent/c.pem",
                                                "tls_key": "/nonexistent/k.pem"})

    async def main():
        with pytest.raises(InvalidArgument, match="tls_cert"):
            await Sidecar(settings, encoder=object(), store=NullStore()).start()

    asyncio.run(main())
