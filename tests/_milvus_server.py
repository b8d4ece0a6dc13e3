"""A Milvus *server* process for tests: milvus-lite 3.2.2 from its own venv (``make milvus-server``).

Found through ``MEE_TEST_MILVUS_SERVER_BIN`` (set by the Makefile's test targets) or ``.venv-lite3`` at the
repository root. Always bound to 127.0.0.1; ``kill()`` is SIGKILL, ``restart()`` starts it again on the same
port and data directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "MEE_TEST_MILVUS_SERVER_BIN"


def server_binary() -> Path | None:
    given = os.environ.get(ENV_VAR)
    path = Path(given) if given else REPO_ROOT / ".venv-lite3" / "bin" / "milvus-lite"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def missing_reason() -> str:
    return (f"no Milvus server binary: {ENV_VAR} is unset and .venv-lite3/bin/milvus-lite does not exist; "
            "`make test` creates it (make milvus-server)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilvusServer:
    """``milvus-lite server --data-dir D --host 127.0.0.1 --port P`` as a child process."""

    def __init__(self, binary: Path, data_dir: Path, port: int | None = None) -> None:
        self.binary, self.data_dir = binary, data_dir
        self.port = port or _free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MilvusServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MEE_", "PYTHON"))}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1",
                 "--port", str(self.port), "--max-workers", "8"],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until the port accepts connections and GetVersion answers."""
        import grpc

        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Milvus server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
                    grpc.channel_ready_future(ch).result(timeout=2)
                return time.monotonic() - started
            except (OSError, grpc.FutureTimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Milvus server not ready after {timeout:.0f} s:\n{self.log()[-3000:]}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no flush, no clean-up, exactly a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)

    def restart(self, timeout: float = 60.0) -> MilvusServer:
        self.stop()
        return self.start(timeout)
