"""Run ``milvus-embed serve`` as a real subprocess for tests (tiny checkpoint, embedded Milvus Lite in a work dir).

Shared by the end-to-end tests (tests/service/test_e2e.py) and the reliability suite (tests/reliability/):
start, wait for SERVING, kill or stop, restart on the same data directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from milvus_embed_ext.client import SidecarClient, TLSConfig
from milvus_embed_ext.wire.tls import channel_credentials

_FIRST_KEY = object()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command() -> list[str]:
    exe = Path(sys.executable).with_name("milvus-embed")
    return [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "milvus_embed_ext.cli", "serve"]


def sidecar_env(model_dir: Path, work: Path, port: int, **settings: Any) -> dict[str, str]:
    """The environment of a test sidecar: no inherited MEE_* variable, the tiny model on CPU, Lite in ``work``.

    ``settings`` are extra ``MEE_<NAME>`` values (``api_keys=("a", "b")`` becomes ``MEE_API_KEYS=a,b``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEE_")}
    env.update({
        "MEE_MODEL": str(model_dir), "MEE_DEVICE": "cpu", "MEE_DTYPE": "fp32", "MEE_MAX_LENGTH": "512",
        "MEE_MILVUS_URI": str(work / "milvus.db"), "MEE_LISTEN": f"127.0.0.1:{port}", "MEE_ALLOW_DEMO_MODEL": "false",
        "MEE_HTTP_LISTEN": "",  # HTTP off unless a test asks (http_listen=...): no fixed port shared between runs
    })
    for name, value in settings.items():
        if value is None:
            continue
        env[f"MEE_{name.upper()}"] = ",".join(value) if isinstance(value, (tuple, list)) else str(value)
    return env


class Server:
    """A running ``serve`` subprocess; ``restart()`` starts it again on the same port, data and log file."""

    def __init__(self, proc: subprocess.Popen, address: str, metrics: str, log_path: Path, *, env: dict[str, str],
                 work: Path, keys: tuple[str, ...] = (), max_message: int = 4 << 20, tls: TLSConfig | None = None) -> None:
        self.proc, self.address, self.metrics, self.log_path = proc, address, metrics, log_path
        self.env, self.work, self.keys, self.max_message, self.tls = env, work, tuple(keys), max_message, tls

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, key: Any = _FIRST_KEY, **kw: Any) -> SidecarClient:
        """A client with the first configured key (``key=None``: none), TLS when the server uses it."""
        if key is _FIRST_KEY:
            key = self.keys[0] if self.keys else None
        kw.setdefault("tls", self.tls)
        return SidecarClient(self.address, api_key=key, max_message_bytes=4 * self.max_message, **kw)

    def channel(self) -> grpc.Channel:
        options = [("grpc.max_send_message_length", 4 * self.max_message),
                   ("grpc.max_receive_message_length", 4 * self.max_message)]
        if self.tls is None:
            return grpc.insecure_channel(self.address, options=options)
        creds = channel_credentials(self.tls.ca, self.tls.cert, self.tls.key)
        return grpc.secure_channel(self.address, creds, options=options)

    def metadata(self, key: Any = _FIRST_KEY) -> tuple[tuple[str, str], ...]:
        if key is _FIRST_KEY:
            key = self.keys[0] if self.keys else None
        return (("authorization", f"Bearer {key}"),) if key else ()

    def wait_serving(self, timeout: float = 180.0) -> None:
        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode} during start-up:\n{self.log()[-4000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not SERVING after {timeout:.0f} s:\n{self.log()[-4000:]}")
                try:  # health needs no key
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Signal the process (SIGKILL: no clean-up at all) and wait; returns the exit code. Also waits for the Milvus
        Lite server it spawned to go (it exits once its parent's file lock is released), so a restart can take it."""
        lite = lite_server_pids(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        _wait_gone(lite, 30.0)
        return self.proc.returncode

    def restart(self, timeout: float = 180.0) -> Server:
        """Stop (if running) and start again with the same environment; waits for SERVING."""
        self.stop()
        self.proc = _spawn(self.env, self.work, self.log_path, append=True)
        self.wait_serving(timeout)
        return self


def _spawn(env: dict[str, str], work: Path, log_path: Path, *, append: bool = False) -> subprocess.Popen:
    with log_path.open("ab" if append else "wb") as log_file:
        return subprocess.Popen(server_command(), cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def _wait_gone(pids: list[int], timeout: float) -> None:
    import psutil

    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:  # a Lite server that outlived its sidecar: ours to end (we started it, by pid)
        p.kill()
    psutil.wait_procs(alive, timeout=10)


def lite_server_pids(sidecar_pid: int) -> list[int]:
    """PIDs of the Milvus Lite server process(es) a sidecar spawned (its children whose last argv is the lock)."""
    import psutil

    found = []
    try:
        for child in psutil.Process(sidecar_pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if cmd and cmd[-1].endswith(".lock") and "milvus" in Path(cmd[0]).name:
                found.append(child.pid)
    except psutil.NoSuchProcess:
        return []
    return found


def start_sidecar(model_dir: Path, work: Path, *, keys: tuple[str, ...] = (), tls: TLSConfig | None = None,
                  metrics: bool = True, wait: bool = True, timeout: float = 180.0, **settings: Any) -> Server:
    """Start ``milvus-embed serve`` in ``work`` and (by default) wait until health says SERVING.

    ``settings`` become ``MEE_*`` variables; ``max_message_bytes`` also sizes the test client's channel.
    """
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    mport = free_port() if metrics else None
    env = sidecar_env(model_dir, work, port, api_keys=keys or None,
                      metrics_listen=f"127.0.0.1:{mport}" if mport else None, **settings)
    log_path = work / "server.log"
    proc = _spawn(env, work, log_path)
    srv = Server(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{mport}/metrics" if mport else "", log_path, env=env,
                 work=work, keys=keys, max_message=int(settings.get("max_message_bytes") or 4 << 20), tls=tls)
    if wait:
        try:
            srv.wait_serving(timeout)
        except BaseException:
            srv.stop(signal.SIGKILL)
            raise
    return srv


@contextlib.contextmanager
def running_sidecar(model_dir: Path, work: Path, **kwargs: Any) -> Iterator[Server]:
    """:func:`start_sidecar` for a ``with`` block (a fixture's lifetime): stopped however the block ends."""
    srv = start_sidecar(model_dir, work, **kwargs)
    try:
        yield srv
    finally:
        srv.stop()
