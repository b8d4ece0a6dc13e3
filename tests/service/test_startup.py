"""Start-up behaviour: demo-model fallback, health while Milvus is unreachable, refusal on a bad schema."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.encoder import factory, hub
from milvus_embed_ext.errors import FailedPrecondition, InvalidArgument, ModelLoadError, Unavailable
from milvus_embed_ext.service import server as server_mod
from tests._fakes import NullStore


def _offline(monkeypatch):
    def unreachable(value, **_kw):
        raise ModelLoadError(f"could not download model {value!r} from the Hugging Face Hub (ConnectionError); ...")

    monkeypatch.setattr(hub, "resolve_model_path", unreachable)


def test_demo_fallback_is_loud(monkeypatch, capsys, caplog, tiny_model_dir):
    _offline(monkeypatch)
    monkeypatch.setattr(factory, "demo_model_dir", lambda: tiny_model_dir)
    settings = load_settings(env={}, overrides={"model": "BAAI/bge-m3", "device": "cpu", "max_length": 128,
                                                "milvus_uri": "http://root:uri-pw-42@milvus.local:19530"})
    encoder, path = server_mod.load_encoder(settings)
    err = capsys.readouterr().err
    assert "DEMO MODEL IN USE" in err and "MEE_MODEL" in err and "BAAI/bge-m3" in err
    assert "http://milvus.local:19530" in err and "uri-pw-42" not in err
    assert "uri-pw-42" in server_mod.Sidecar(settings)._secrets  # scrubbed from status messages
    assert "DEMO MODEL IN USE" in caplog.text
    assert path == tiny_model_dir and encoder.encode(["x"], sparse=False, colbert=False).dense.shape[0] == 1


def test_no_fallback_when_disabled_or_for_a_local_path(monkeypatch, tmp_path):
    _offline(monkeypatch)
    with pytest.raises(ModelLoadError):
        server_mod.load_encoder(load_settings(env={}, overrides={"model": "BAAI/bge-m3", "allow_demo_model": False}))
    with pytest.raises(ModelLoadError):
        server_mod.load_encoder(load_settings(env={}, overrides={"model": str(tmp_path / "missing")}))


def test_health_not_serving_until_milvus_answers(monkeypatch, tiny_encoder):
    attempts = {"n": 0}

    def connect(_settings):
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise Unavailable("connection refused")
        return NullStore()

    monkeypatch.setattr(server_mod, "connect_store", connect)
    monkeypatch.setattr(server_mod, "ensure_schema", lambda settings, store: ("0001",))

    async def main():
        settings = load_settings(env={}, overrides={"listen": "127.0.0.1:0", "http_listen": "",
                                                    "milvus_uri": "http://127.0.0.1:1"})
        sc = server_mod.Sidecar(settings, encoder=tiny_encoder)
        port = await sc.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                statuses = []
                while not sc.ready.is_set():
                    resp = await stub.Check(health_pb2.HealthCheckRequest(service=""))
                    statuses.append(resp.status)
                    await asyncio.sleep(0.05)
                final = await stub.Check(health_pb2.HealthCheckRequest(service="milvus_embed_ext.v1.Search"))
            assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
            assert final.status == health_pb2.HealthCheckResponse.SERVING
            assert attempts["n"] == 3
        finally:
            await sc.stop(0.5)

    asyncio.run(main())


def test_serve_refuses_an_unknown_revision(monkeypatch, tiny_encoder, tmp_path):
    def unknown_revision(settings, store):
        raise FailedPrecondition("collection 'documents' is at revision(s) 9999_future, which this sidecar's "
                                 "migration scripts do not know")

    store = NullStore()
    monkeypatch.setattr(server_mod, "load_encoder", lambda s: (tiny_encoder, tmp_path))
    monkeypatch.setattr(server_mod, "connect_store", lambda s: store)
    monkeypatch.setattr(server_mod, "ensure_schema", unknown_revision)
    settings = load_settings(env={}, overrides={"listen": "127.0.0.1:0", "http_listen": "",
                                                "milvus_uri": str(tmp_path / "m.db")})
    with pytest.raises(FailedPrecondition, match="9999_future"):
        asyncio.run(asyncio.wait_for(server_mod.serve(settings), 60))
    assert store.closed


def test_encoder_threads_setting_applies_before_loading(tiny_model_dir):
    import torch

    before = torch.get_num_threads()
    try:
        server_mod.load_encoder(load_settings(env={}, overrides={"model": str(tiny_model_dir), "encoder_threads": 1,
                                                                 "device": "cpu"}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InvalidArgument, match="encoder_threads"):
        load_settings(env={"MEE_ENCODER_THREADS": "-1"})


def test_unusable_lite_directory_is_unavailable_with_the_reason(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = load_settings(env={}, overrides={"milvus_uri": str(blocker / "sub" / "m.db")})
    with pytest.raises(Unavailable, match="cannot create the Milvus Lite directory"):
        server_mod.connect_store(settings)


def test_embedded_lite_collections_are_loaded_before_serving(monkeypatch, tiny_encoder, tiny_model_dir, tmp_path):
    """Lite loads a collection on its first query and answers nothing else meanwhile (a 50,000-document corpus
    made the health probes time out and the first search fail): start-up loads them before SERVING."""
    from milvus_embed_ext.store import MilvusStore
    from tests.service.svc_helpers import start_in_process

    calls: list[tuple[bool, list[str]]] = []
    original = MilvusStore.reload_collections

    def recording(self, timeout):
        loaded = original(self, timeout)
        calls.append((sidecar_ready(), loaded))
        return loaded

    holder: dict = {}

    def sidecar_ready() -> bool:
        return bool(holder) and holder["sc"].ready.is_set()

    monkeypatch.setattr(MilvusStore, "reload_collections", recording)
    real_start = server_mod.Sidecar.start

    async def start(self):
        holder["sc"] = self
        return await real_start(self)

    monkeypatch.setattr(server_mod.Sidecar, "start", start)

    async def main():
        sc = await start_in_process(tiny_encoder, lite=True, model=str(tiny_model_dir), milvus_uri=str(tmp_path / "m.db"))
        await sc.stop(0)

    asyncio.run(main())
    assert calls, "start-up did not load the collections"
    ready_then, loaded = calls[0]
    assert not ready_then, "the collections must be loaded before the sidecar says it is ready"
    assert "documents" in loaded and "documents__colbert" in loaded
