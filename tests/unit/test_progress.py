"""Progress of long CLI work: a bar on a terminal (checked under a real pseudo-terminal), JSON log lines at a
steady interval otherwise, nothing with --quiet; unknown totals show a rate and no ETA."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from milvus_embed_ext.cli import main
from milvus_embed_ext.progress import (
    BarProgress,
    LogProgress,
    NullProgress,
    ProgressBoard,
    open_progress,
    track,
)
from tests.service.svc_helpers import RecordingDocuments, recording_documents_server

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _progress_lines(text: str) -> list[dict]:
    return [d for d in _lines(text) if d.get("event") == "progress"]


# ----------------------------------------------------------------------------- the module itself


def test_log_lines_at_a_steady_interval_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), FakeClock()
    p = open_progress("copy", 1000, initial=200, stream=out, interval_s=10, clock=clock)
    assert isinstance(p, LogProgress)
    for step in range(1, 31):  # 30 s of work, an update every second, 20 rows each
        clock.now += 1
        p.update(200 + 20 * step)
    p.close()
    p.close()  # idempotent
    lines = _progress_lines(out.getvalue())
    assert [d["state"] for d in lines] == ["started", "running", "running", "running", "finished"]
    assert [d["done"] for d in lines] == [200, 400, 600, 800, 800]
    first, mid = lines[0], lines[1]
    assert first["done"] == 200 and first["total"] == 1000 and first["eta_s"] is None  # resumed at its checkpoint
    # the rate counts this run's rows only (200 rows in 10 s), not the checkpoint's
    assert mid["rate_per_s"] == pytest.approx(20.0) and mid["eta_s"] == pytest.approx(30.0)
    # the service's JSON log format
    assert {"ts", "level", "logger", "msg"} <= set(mid) and mid["level"] == "INFO" and "400/1000" in mid["msg"]


def test_unknown_total_logs_a_rate_and_no_eta() -> None:
    out, clock = io.StringIO(), FakeClock()
    p = open_progress("upsert", None, stream=out, interval_s=5, clock=clock, unit="docs")
    for _ in range(12):
        clock.now += 1
        p.advance(3)
    p.close()
    lines = _progress_lines(out.getvalue())
    assert all(d["total"] is None and d["eta_s"] is None for d in lines)
    assert lines[-1]["done"] == 36 and lines[-1]["rate_per_s"] == pytest.approx(3.0)


def test_quiet_prints_nothing() -> None:
    out = io.StringIO()
    p = open_progress("x", 10, quiet=True, stream=out)
    assert isinstance(p, NullProgress)
    assert list(track(range(10), p)) == list(range(10))
    with ProgressBoard(quiet=True, stream=out) as board:
        board("op", 0, 5)
        board("op", 5, 5)
    assert out.getvalue() == ""


def test_board_opens_one_reporter_per_task_and_closes_finished_ones() -> None:
    out, clock = io.StringIO(), FakeClock()
    with ProgressBoard(stream=out, clock=clock) as board:
        board("a", 40, 100)  # resumed
        board("a", 100, 100)  # done: closed here, before the caller prints anything
        assert board.current is None
        board("b", 0, None)
        board("b", 7, None)
    lines = _progress_lines(out.getvalue())
    assert [(d["task"], d["state"], d["done"]) for d in lines] == [
        ("a", "started", 40), ("a", "finished", 100), ("b", "started", 0), ("b", "finished", 7)]


def _pty_stream() -> tuple[int, io.TextIOWrapper]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    return master, io.TextIOWrapper(os.fdopen(slave, "wb", buffering=0), encoding="utf-8", write_through=True)


def _drain(fd: int, timeout: float = 0.5) -> str:
    chunks = []
    while select.select([fd], [], [], timeout)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def test_terminal_gets_a_bar_with_eta_only_when_the_total_is_known() -> None:
    master, stream = _pty_stream()
    try:
        p = open_progress("backfill", 50, initial=10, stream=stream)
        assert isinstance(p, BarProgress)
        p.update(50)
        p.close()
        known = _drain(master)
        q = open_progress("stdin", None, stream=stream, unit="docs")
        q.advance(7)
        q.close()
        unknown = _drain(master)
    finally:
        stream.close()
        os.close(master)
    assert "\r" in known and "50/50" in known and "100%" in known and "<" in known  # elapsed<remaining
    assert "\r" in unknown and "7" in unknown and "docs/s" in unknown
    assert "<" not in unknown and "%" not in unknown  # no ETA, no percentage without a total


# ----------------------------------------------------------------------------- the commands, end to end


def _run_cli(args: list[str], *, tty: bool, stdin: bytes | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``milvus-embed ARGS`` in a child; with ``tty`` its stderr is a pseudo-terminal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    cmd = [sys.executable, "-m", "milvus_embed_ext.cli", *args]
    if not tty:
        run = subprocess.run(cmd, input=stdin or b"", capture_output=True, env=env, timeout=timeout)
        return run.returncode, run.stdout.decode(), run.stderr.decode()
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    err: list[str] = []
    try:
        if stdin is not None:
            proc.stdin.write(stdin)  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            err.append(_drain(master, 0.2))
        err.append(_drain(master, 0.2))
        out = proc.stdout.read().decode()  # type: ignore[union-attr]
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return rc, out, "".join(err)


def test_make_test_model_progress_on_a_terminal_in_logs_and_quiet(tmp_path: Path) -> None:
    rc, out, err = _run_cli(["make-test-model", str(tmp_path / "a")], tty=True)
    assert rc == 0, err
    assert "build tiny test model" in err and "\r" in err and "steps/s" in err and "100%" in err
    assert not _lines(err) and "built tiny test model" in out

    rc, out, err = _run_cli(["make-test-model", str(tmp_path / "b")], tty=False)
    assert rc == 0, err
    lines = _progress_lines(err)
    assert lines[0]["state"] == "started" and lines[-1]["state"] == "finished"
    assert lines[-1]["done"] == lines[-1]["total"] > 10 and "\r" not in err

    rc, out, err = _run_cli(["make-test-model", str(tmp_path / "c"), "--quiet"], tty=False)
    assert rc == 0 and err.strip() == "" and "built tiny test model" in out


@pytest.fixture
def documents_server() -> Iterator[tuple[str, RecordingDocuments]]:
    with recording_documents_server() as served:
        yield served


def _jsonl(n: int) -> bytes:
    return "".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(n)).encode()


def test_upsert_progress_file_and_stdin(documents_server, tmp_path: Path, capsys) -> None:
    address, servicer = documents_server
    path = tmp_path / "docs.jsonl"
    path.write_bytes(_jsonl(150) + b"\n")  # a blank line is not a document
    assert main(["upsert", str(path), "--address", address, "--chunk-size", "16"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["upserted"] == 150
    lines = _progress_lines(captured.err)
    assert lines[0]["total"] == 150 and lines[0]["done"] == 0
    assert lines[-1]["state"] == "finished" and lines[-1]["done"] == 150 and lines[-1]["unit"] == "docs"

    # stdin: the total is unknown, so rate and count only
    rc, out, err = _run_cli(["upsert", "--address", address, "--chunk-size", "16"], tty=False, stdin=_jsonl(40))
    assert rc == 0, err
    lines = _progress_lines(err)
    assert lines[-1]["done"] == 40 and all(d["total"] is None and d["eta_s"] is None for d in lines)

    rc, out, err = _run_cli(["upsert", "-", "--address", address], tty=True, stdin=_jsonl(30))
    assert rc == 0, err
    assert "upsert: " in err and "30" in err and "docs/s" in err and "%" not in err and "<" not in err

    rc, out, err = _run_cli(["upsert", str(path), "--address", address, "--quiet"], tty=True)
    assert rc == 0 and "upsert" not in err and json.loads(out)["upserted"] == 150
    assert servicer.received == 150 + 40 + 30 + 150
