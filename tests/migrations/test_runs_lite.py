"""Crash recovery, the lock under concurrent runs, drift detection and the service's startup check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from milvus_embed_ext import migrations as m
from milvus_embed_ext.errors import FailedPrecondition
from milvus_embed_ext.migrations.history import SystemTable
from milvus_embed_ext.migrations.script import script_checksum
from tests.migrations.mig_helpers import (
    EARLIER_BUILTIN_TEXTS,
    WIDE,
    Crash,
    copy_builtins,
    count,
    insert_docs,
    unlist_earlier_texts,
    write_scripts,
)

HERE = Path(__file__).resolve().parent
N = 130
BATCH = 20

def _assert_prefix_backfill(store, name: str) -> None:
    rows = store.client.query(name, filter='id != ""', output_fields=["dense", "dense_256"], limit=1000)
    assert len(rows) == N
    dense = np.asarray([r["dense"] for r in rows])
    want = dense[:, :256] / np.linalg.norm(dense[:, :256], axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray([r["dense_256"] for r in rows]), want, atol=1e-5)


@pytest.mark.parametrize("phase", ["copy", "copyback"])
def test_crash_mid_backfill_then_rerun_completes_exactly(lite, wide_model: Path, phase: str) -> None:
    """The built-in revisions: a crash after two batches of the copy (or of Lite's copy-back) resumes."""
    settings = lite.scope(None, model=str(wide_model))
    cfg = m.config_from_settings(settings, batch_size=BATCH)
    st, name = lite.store, settings.collection
    m.upgrade(cfg, "0001_initial", store=st)
    insert_docs(st, name, N, dim=WIDE)
    batches: list[str] = []

    def crash(key: str, copied: int) -> None:
        if key.endswith(":" + phase):
            batches.append(key)
            if len(batches) == 2:
                raise Crash(key)

    with pytest.raises(Crash):
        m.upgrade(cfg, store=st, hooks=m.RunHooks(after_batch=crash))
    assert set(m.current(cfg, store=st).applied) == {"0001_initial"}

    resumed: list[int] = []
    assert m.upgrade(cfg, store=st, hooks=m.RunHooks(
        after_batch=lambda key, copied: resumed.append(copied) if key.endswith(":" + phase) else None)) == [
        "0002_dense_256"]
    assert resumed[0] == 3 * BATCH, "the rerun starts after the last checkpointed batch"
    assert count(st, name) == N
    _assert_prefix_backfill(st, name)
    assert [c for c in st.client.list_collections() if c.startswith(f"{name}__m")] == []
    table = SystemTable(st.client)
    assert table.rows("ckpt", name) == [] and table.rows("progress", name) == []
    assert m.check(cfg, store=st).ok


def _child(lite, overrides: dict, mode: str = "plain") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}  # the child runs this checkout's package
    return subprocess.Popen([sys.executable, str(HERE / "_child.py"), lite.socket_uri, json.dumps(overrides), mode,
                             str(BATCH)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_killed_process_leaves_a_lock_that_unlock_breaks_then_rerun_resumes(lite, wide_model: Path) -> None:
    """A real kill (os._exit in another process, mid-backfill): no cleanup runs, so the lock stays."""
    settings = lite.scope(None, model=str(wide_model))
    st, name = lite.store, settings.collection
    m.upgrade(settings, "0001_initial", store=st)
    insert_docs(st, name, N, dim=WIDE)
    proc = _child(lite, {"model": str(wide_model), "collection": name, "milvus_uri": settings.milvus_uri},
                  "kill-after-batches:3")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 9, err
    cfg = m.config_from_settings(settings, batch_size=BATCH, lock_wait_s=0)
    with pytest.raises(FailedPrecondition, match="another migration .* is running"):
        m.upgrade(cfg, store=st)
    with pytest.raises(FailedPrecondition, match="unlock --force"):
        m.unlock(cfg, store=st)  # the lock has not expired: a live run cannot be ruled out
    assert [lk.owner for lk in m.unlock(cfg, force=True, store=st)][0].endswith(f"pid {proc.pid}")
    assert m.upgrade(cfg, store=st) == ["0002_dense_256"]
    assert count(st, name) == N
    _assert_prefix_backfill(st, name)


SLOW_PAIR = {
    "s1.py": 'revision = "s1"\ndown_revision = None\ndef upgrade(op):\n    op.create_collection()\n',
    "s2.py": 'revision = "s2"\ndown_revision = "s1"\ndef upgrade(op):\n    op.add_truncated_dense(16)\n',
}


def _applies(cfg, store) -> dict[str, int]:
    events = m.history(cfg, store=store)[1]
    out: dict[str, int] = {}
    for e in events:
        if e["action"] == "upgrade":
            out[e["revision"]] = out.get(e["revision"], 0) + 1
    return out


def test_two_runners_in_one_process_exactly_one_applies(lite, tmp_path: Path) -> None:
    """Two threads, each with its own client connection, start `upgrade` at the same moment.

    A Lite .db file can be opened by one process only, so concurrency inside one process (separate gRPC
    connections to the same server) is the closest in-process model; the next test adds real processes.
    """
    from pymilvus import MilvusClient

    from milvus_embed_ext.store.client import MilvusStore

    settings = lite.scope(write_scripts(tmp_path / "s", SLOW_PAIR))
    cfg = m.config_from_settings(settings, batch_size=BATCH, lock_wait_s=30)
    m.upgrade(cfg, "s1", store=lite.store)
    insert_docs(lite.store, settings.collection, 80)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def run() -> None:
        store = MilvusStore.from_client(MilvusClient(uri=lite.socket_uri), lite.store.capabilities)
        barrier.wait()
        try:
            results.append(m.upgrade(cfg, store=store))
        except FailedPrecondition as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 2, "both runners finished"
    applied_lists = [r for r in results if isinstance(r, list)]
    assert sum(1 for r in applied_lists if r == ["s2"]) == 1, results
    assert _applies(cfg, lite.store) == {"s1": 1, "s2": 1}
    assert count(lite.store, settings.collection) == 80


def test_two_processes_upgrading_at_once_exactly_one_applies(lite, tmp_path: Path) -> None:
    """Two OS processes share the Lite server through its unix socket (as two sidecars share a server)."""
    scripts = write_scripts(tmp_path / "p", SLOW_PAIR)
    settings = lite.scope(scripts)
    cfg = m.config_from_settings(settings)
    overrides = {"model": settings.model, "collection": settings.collection, "milvus_uri": settings.milvus_uri,
                 "migrations_dir": str(scripts)}
    m.upgrade(cfg, "s1", store=lite.store)
    insert_docs(lite.store, settings.collection, 60)
    procs = [_child(lite, overrides) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted(len(o["applied"]) for o in outs) == [0, 1], outs
    assert _applies(cfg, lite.store) == {"s1": 1, "s2": 1}
    assert count(lite.store, settings.collection) == 60


def test_check_catches_an_edited_script_and_schema_drift(lite, tmp_path: Path) -> None:
    scripts = write_scripts(tmp_path / "e", SLOW_PAIR)
    settings = lite.scope(scripts)
    st = lite.store
    m.upgrade(settings, store=st)
    assert m.check(settings, store=st).ok
    with (scripts / "s2.py").open("a") as f:
        f.write("# tweaked after it ran\n")
    report = m.check(settings, store=st)
    assert len(report.problems) == 1 and "s2 (s2.py) was edited after it was applied" in report.problems[0]
    (scripts / "s2.py").write_text(SLOW_PAIR["s2.py"])
    st.client.release_collection(settings.collection)
    st.client.drop_index(settings.collection, "dense_16")
    report = m.check(settings, store=st)
    assert not report.ok and any("dense_16" in p for p in report.problems), report.problems


def test_startup_check_for_the_service(lite, tmp_path: Path) -> None:
    scripts = write_scripts(tmp_path / "k", SLOW_PAIR)
    settings = lite.scope(scripts)
    with pytest.raises(FailedPrecondition, match="not migrated yet: run `milvus-embed migrate upgrade`"):
        m.check_revision_known(settings, store=lite.store)
    m.upgrade(settings, "s1", store=lite.store)
    with pytest.raises(FailedPrecondition, match="pending .*migrate upgrade"):
        m.check_revision_known(settings, store=lite.store)
    assert m.check_revision_known(settings, store=lite.store, require_head=False) == ("s1",)
    m.upgrade(settings, store=lite.store)
    assert m.check_revision_known(settings, store=lite.store) == ("s2",)
    older = write_scripts(tmp_path / "older", {"s1.py": SLOW_PAIR["s1.py"]})
    with pytest.raises(FailedPrecondition, match="s2, which this sidecar's migration scripts .* do not know.*migrate upgrade"):
        m.check_revision_known(settings.replace(migrations_dir=str(older)), store=lite.store)


def test_cli_plan_revision_current_and_unlock(lite, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from milvus_embed_ext.cli import main

    scripts = write_scripts(tmp_path / "cli", SLOW_PAIR)
    settings = lite.scope(scripts)
    base = ["--milvus-uri", settings.milvus_uri, "--model", settings.model, "--collection", settings.collection,
            "--migrations-dir", str(scripts)]
    assert main(["migrate", "plan", *base]) == 0
    out = capsys.readouterr().out
    assert "upgrade s1" in out and "add_truncated_dense" in out and "rebuild" in out
    assert main(["migrate", "revision", "-m", "add a thing", "--rev-id", "s3", *base]) == 0
    assert "s3_add_a_thing.py" in capsys.readouterr().out
    assert main(["migrate", "heads", *base]) == 0 and capsys.readouterr().out.strip() == "s3"
    assert main(["migrate", "upgrade", *base]) == 0
    assert main(["migrate", "current", *base]) == 0 and "s3 (head)" in capsys.readouterr().out
    assert main(["migrate", "check", *base]) == 0
    assert main(["migrate", "unlock", *base]) == 0 and "no migration lock" in capsys.readouterr().out
    assert main(["migrate", "downgrade", "-1", *base]) == 0
    assert main(["migrate", "history", "--log", *base]) == 0 and "downgrade" in capsys.readouterr().out
    assert main(["migrate", "revision", "-m", "x", "--milvus-uri", settings.milvus_uri]) == 2  # built-in dir


def test_check_compares_with_the_recorded_schema_not_todays_environment(lite, tmp_path: Path,
                                                                        wide_model: Path) -> None:
    """The built-in revisions applied for a 320-d model: the history records the resolved layout, so `check`
    stays clean when the environment changes later (another model width, another codec setting)."""
    settings = lite.scope(None, model=str(wide_model))
    st = lite.store
    m.upgrade(settings, store=st)
    rec = SystemTable(st.client).applied(settings.collection)["0002_dense_256"]
    layout = rec["schema"][settings.collection]["layout"]
    assert rec["applied_set"] == ["0001_initial", "0002_dense_256"]
    assert layout["dense_dim"] == WIDE and layout["colbert"] != "auto" and layout["index_type"] != "auto"
    assert [t["dim"] for t in layout["truncated"]] == [256]
    other = tmp_path / "narrow-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"hidden_size": 128}))
    moved = settings.replace(model=str(other), colbert_codec="int8")
    assert m.check(moved, store=st).ok, m.check(moved, store=st).problems
    # a history without the record (an older version applied it): replayed from today's environment
    SystemTable(st.client).mark_applied(settings.collection, "0002_dense_256", rec["checksum"], 0.0, "t", "x")
    problems = m.check(moved, store=st).problems
    assert any("dense_dim: live 320, revisions 128" in p for p in problems), problems
    assert m.check(settings, store=st).ok


def test_a_history_of_the_earlier_builtin_texts_is_not_drift_but_an_unlisted_edit_is(lite, tmp_path: Path,
                                                                                     wide_model: Path) -> None:
    """Deployments migrated by the built-ins before they stated their parameters recorded the earlier texts'
    checksums: today's scripts accept them (REPLACES_CHECKSUMS). An edit they do not list is still drift."""
    earlier = write_scripts(tmp_path / "earlier", EARLIER_BUILTIN_TEXTS)
    settings = lite.scope(earlier, model=str(wide_model))
    st = lite.store
    assert m.upgrade(settings, store=st) == ["0001_initial", "0002_dense_256"]
    recorded = {r: rec["checksum"] for r, rec in SystemTable(st.client).applied(settings.collection).items()}
    assert recorded == {"0001_initial": script_checksum(EARLIER_BUILTIN_TEXTS["0001_initial_layout.py"].encode()),
                        "0002_dense_256": script_checksum(EARLIER_BUILTIN_TEXTS["0002_truncated_256.py"].encode())}
    today = settings.replace(migrations_dir="")  # the built-in scripts as they are now
    report = m.check(today, store=st)
    assert report.problems == [], report.problems

    unlisted = copy_builtins(tmp_path / "unlisted")
    unlist_earlier_texts(unlisted / "0001_initial_layout.py")
    problems = m.check(settings.replace(migrations_dir=str(unlisted)), store=st).problems
    assert len(problems) == 1 and "revision 0001_initial (0001_initial_layout.py) was edited" in problems[0], problems

    # a deployment migrated by today's text, which an edit then changes: its checksum is listed nowhere
    current = lite.scope(None, model=str(wide_model))
    m.upgrade(current, "0001_initial", store=st)
    edited = copy_builtins(tmp_path / "edited")
    path = edited / "0001_initial_layout.py"
    path.write_text(path.read_text().replace('"colbert_codec": "int8"', '"colbert_codec": "fp16"'))
    problems = m.check(current.replace(migrations_dir=str(edited)), store=st).problems
    assert any("revision 0001_initial (0001_initial_layout.py) was edited" in p for p in problems), problems


TWO_OPS = {
    "t1.py": 'revision = "t1"\ndown_revision = None\ndef upgrade(op):\n    op.create_collection(op.layout())\n',
    "t2.py": 'revision = "t2"\ndown_revision = "t1"\ndef upgrade(op):\n'
             '    op.add_truncated_dense(16)\n    op.add_truncated_dense(32)\n',
}


def test_an_interrupted_revision_resumes_under_a_text_that_lists_its_checksum(lite, tmp_path: Path) -> None:
    """The progress of a revision interrupted part-way records its text's checksum: a new text of the script
    that lists it (REPLACES_CHECKSUMS) resumes the run; a text that does not list it refuses."""
    earlier = write_scripts(tmp_path / "earlier", TWO_OPS)
    settings = lite.scope(earlier)
    cfg = m.config_from_settings(settings, batch_size=BATCH)
    st, name = lite.store, settings.collection
    m.upgrade(cfg, "t1", store=st)
    insert_docs(st, name, N)
    batches: list[str] = []

    def crash(key: str, copied: int) -> None:
        if key.startswith("t2:up:1:") and key.endswith(":copy"):  # the second op, after the first finished
            batches.append(key)
            if len(batches) == 2:
                raise Crash(key)

    with pytest.raises(Crash):
        m.upgrade(cfg, store=st, hooks=m.RunHooks(after_batch=crash))
    tweaked = write_scripts(tmp_path / "tweaked", {"t2.py": TWO_OPS["t2.py"] + "# tweaked\n"})
    shutil.copy(earlier / "t1.py", tweaked / "t1.py")
    with pytest.raises(FailedPrecondition, match="t2.py has been edited since"):
        m.upgrade(m.config_from_settings(settings.replace(migrations_dir=str(tweaked)), batch_size=BATCH), store=st)

    stated = write_scripts(tmp_path / "stated", {"t2.py": (
        f'REPLACES_CHECKSUMS = ("{script_checksum((earlier / "t2.py").read_bytes())}",)\n'
        + TWO_OPS["t2.py"].replace("dense(16)", 'dense(16, projection="prefix")')
                          .replace("dense(32)", 'dense(32, projection="prefix")'))})
    shutil.copy(earlier / "t1.py", stated / "t1.py")
    resumed: list[int] = []
    today = m.config_from_settings(settings.replace(migrations_dir=str(stated)), batch_size=BATCH)
    assert m.upgrade(today, store=st, hooks=m.RunHooks(
        after_batch=lambda key, copied: resumed.append(copied) if key.endswith(":copy") else None)) == ["t2"]
    assert resumed[0] == 3 * BATCH, "the rerun resumes the second op after its last checkpointed batch"
    assert count(st, name) == N
    assert m.check(today, store=st).ok
