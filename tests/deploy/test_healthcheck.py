"""The gRPC health probe used by Docker HEALTHCHECK and exec probes (`milvus-embed health`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from milvus_embed_ext.cli import main
from milvus_embed_ext.errors import InvalidArgument
from milvus_embed_ext.healthcheck import check, probe_address

EMBEDDER = "milvus_embed_ext.v1.Embedder"


@pytest.fixture()
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    servicer.set(EMBEDDER, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_check_follows_the_serving_status(health_server) -> None:
    address, servicer = health_server
    assert check(address).status == "NOT_SERVING" and not check(address).serving
    assert check(address, service=EMBEDDER).serving
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check(address).serving
    unknown = check(address, service="nope.Service")
    assert not unknown.serving and unknown.status == "SERVICE_UNKNOWN"


def test_unreachable_server_is_unhealthy_not_an_exception() -> None:
    result = check("127.0.0.1:1", timeout_s=1.0)
    assert not result.serving and result.status == "UNAVAILABLE"


@pytest.mark.parametrize(("listen", "expected"), [
    ("0.0.0.0:50051", "127.0.0.1:50051"),
    ("[::]:7000", "[::1]:7000"),
    ("10.1.2.3:50051", "10.1.2.3:50051"),
    ("unix:/tmp/mee.sock", "unix:/tmp/mee.sock"),
])
def test_probe_address(listen: str, expected: str) -> None:
    assert probe_address(listen) == expected


def test_probe_address_rejects_garbage() -> None:
    with pytest.raises(InvalidArgument, match="MEE_LISTEN"):
        probe_address("localhost")


def test_cli_exit_codes(health_server, capsys) -> None:
    address, servicer = health_server
    assert main(["health", "--address", address]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    assert main(["health", "--address", address, "--service", EMBEDDER]) == 0
    assert "SERVING" in capsys.readouterr().out
    servicer.enter_graceful_shutdown()
    assert main(["health", "--address", address, "--service", EMBEDDER, "-q"]) == 1
    assert capsys.readouterr().err == ""


def test_module_form_reads_the_listen_setting(health_server) -> None:
    """`python -m milvus_embed_ext.healthcheck` (the Docker HEALTHCHECK) probes MEE_LISTEN, exit 0/1 only."""
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = address.rsplit(":", 1)[1]
    env = {"MEE_LISTEN": f"0.0.0.0:{port}", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "milvus_embed_ext.healthcheck"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "milvus_embed_ext.healthcheck"],
                         env={**env, "MEE_LISTEN": "nonsense"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "MEE_LISTEN" in bad.stderr
