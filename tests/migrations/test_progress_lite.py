"""Backfill progress from the migrations engine: per op, rows done of total; a resumed run starts at its
checkpoint; the CLI turns it into JSON progress lines (stderr is not a terminal here) or nothing (--quiet)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from milvus_embed_ext import migrations as m
from milvus_embed_ext.cli import main
from tests.migrations.mig_helpers import WIDE, Crash, insert_docs

N = 90
BATCH = 20

def test_progress_callback_resumes_from_the_checkpoint(lite, wide_model: Path) -> None:
    settings = lite.scope(None, model=str(wide_model))
    cfg = m.config_from_settings(settings, batch_size=BATCH)
    st = lite.store
    m.upgrade(cfg, "0001_initial", store=st)
    insert_docs(st, settings.collection, N, dim=WIDE)
    calls: list[tuple[str, int, int | None]] = []

    def crash_after_two(key: str, done: int, total: int | None) -> None:
        calls.append((key, done, total))
        if key.endswith(":copy") and done == 2 * BATCH:
            raise Crash(key)

    with pytest.raises(Crash):
        m.upgrade(cfg, store=st, hooks=m.RunHooks(progress=crash_after_two))
    copy = [c for c in calls if c[0].endswith(":copy")]
    assert copy == [(copy[0][0], 0, N), (copy[0][0], BATCH, N), (copy[0][0], 2 * BATCH, N)]

    calls.clear()
    m.upgrade(cfg, store=st, hooks=m.RunHooks(progress=lambda *a: calls.append(a)))
    resumed = [c for c in calls if c[0] == copy[0][0]]
    assert resumed[0] == (copy[0][0], 2 * BATCH, N), "a resumed run starts from its checkpoint"
    assert resumed[-1] == (copy[0][0], N, N)
    assert [d for _, d, _ in resumed] == sorted(d for _, d, _ in resumed)


def test_cli_upgrade_and_downgrade_log_progress_per_op(lite, wide_model: Path, monkeypatch, capsys) -> None:
    settings = lite.scope(None, model=str(wide_model))
    st = lite.store
    m.upgrade(m.config_from_settings(settings), "0001_initial", store=st)
    insert_docs(st, settings.collection, N, dim=WIDE)

    @contextlib.contextmanager
    def shared_store(cfg, store):  # the session's Lite server instead of a second connection to its file
        yield st

    monkeypatch.setattr("milvus_embed_ext.migrations.runner._connected", shared_store)
    base = ["--model", str(wide_model), "--collection", settings.collection, "--milvus-uri",
            settings.milvus_uri, "--batch-size", str(BATCH)]
    assert main(["migrate", "upgrade", *base]) == 0
    captured = capsys.readouterr()
    assert "applied 1 revision(s)" in captured.out
    lines = [json.loads(x) for x in captured.err.splitlines() if x.startswith("{")]
    tasks = {d["task"] for d in lines}
    assert any(t.endswith(":copy") for t in tasks), tasks
    for task in tasks:
        mine = [d for d in lines if d["task"] == task]
        assert mine[0]["state"] == "started" and mine[-1]["state"] == "finished"
        assert mine[-1]["done"] == mine[-1]["total"] == N and mine[-1]["unit"] == "rows"

    assert main(["migrate", "downgrade", "0001_initial", "--quiet", *base]) == 0
    captured = capsys.readouterr()
    assert "unapplied 1 revision(s)" in captured.out and '"progress"' not in captured.err
