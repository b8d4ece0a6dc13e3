"""The revision graph, script loading and ops as data: no Milvus."""

from __future__ import annotations

from pathlib import Path

import pytest

from milvus_embed_ext.errors import FailedPrecondition, InvalidArgument, NotFound
from milvus_embed_ext.migrations import graph_from_mapping, load_scripts
from milvus_embed_ext.migrations.ops import (
    AddField,
    AddTruncatedDense,
    AlterProperties,
    CreateIndex,
    DropCollection,
    FieldSpec,
    IndexSpec,
    IrreversibleOperation,
    Operations,
    RunPython,
)
from milvus_embed_ext.migrations.script import script_checksum, write_revision
from tests.migrations.mig_helpers import write_scripts

REPO = Path(__file__).resolve().parents[2]

#   a - b - c ----- m - e      (m merges c and d)
#        \- d -----/
BRANCHY = {"a": None, "b": "a", "c": "b", "d": "b", "m": ("c", "d"), "e": "m"}


def test_linear_heads_bases_and_paths() -> None:
    g = graph_from_mapping({"a": None, "b": "a", "c": "b"})
    assert g.heads == ("c",) and g.bases == ("a",)
    assert g.upgrade_path(set(), "head") == ["a", "b", "c"]
    assert g.upgrade_path({"a"}, "b") == ["b"]
    assert g.upgrade_path({"a"}, "+1") == ["b"]
    assert g.downgrade_path({"a", "b", "c"}, "-2") == ["c", "b"]
    assert g.downgrade_path({"a", "b", "c"}, "a") == ["c", "b"]
    assert g.downgrade_path({"a", "b", "c"}, "base") == ["c", "b", "a"]
    assert g.heads_of({"a", "b"}) == ("b",)


def test_branches_and_merge() -> None:
    g = graph_from_mapping(BRANCHY)
    assert g.heads == ("e",)
    assert g.branch_points == ("b",) and g.merges == ("m",)
    path = g.upgrade_path({"a"}, "head")
    assert set(path) == {"b", "c", "d", "m", "e"}
    assert path.index("m") > max(path.index("c"), path.index("d")) and path[-1] == "e"
    assert g.heads_of({"a", "b", "c", "d"}) == ("c", "d")
    # downgrading to c unapplies what descends from c (m, e) but leaves the other branch d alone
    assert g.downgrade_path(set(BRANCHY), "c") == ["e", "m"]
    assert g.upgrade_path({"a", "b", "c"}, "d") == ["d"]


def test_two_heads_need_a_choice() -> None:
    g = graph_from_mapping({"a": None, "b": "a", "c": "a"})
    with pytest.raises(FailedPrecondition, match="2 heads.*--merge"):
        g.upgrade_path(set(), "head")
    assert g.upgrade_path(set(), "heads") == ["a", "b", "c"]
    assert g.upgrade_path(set(), "c") == ["a", "c"]


def test_all_revisions_and_pending_span_every_head() -> None:
    g = graph_from_mapping({"a": None, "b": "a", "c": "b", "d": "b", "x": None, "y": "x"})
    assert g.heads == ("c", "d", "y") and g.bases == ("a", "x")
    assert g.all_revisions() == {"a", "b", "c", "d", "x", "y"}
    pending = g.pending({"a", "b", "c"})
    assert sorted(pending) == ["d", "x", "y"] and pending.index("x") < pending.index("y")
    assert g.pending(g.all_revisions()) == []
    assert g.pending([]) == g.upgrade_path(set(), "heads") == g.topo(g.all_revisions())
    assert g.pending(["a"]) == g.upgrade_path({"a"}, "heads")


def test_cycle_and_unknown_parent_are_reported() -> None:
    with pytest.raises(InvalidArgument, match="cycle through: .*x.*y"):
        graph_from_mapping({"a": None, "x": ("a", "y"), "y": "x"})
    with pytest.raises(InvalidArgument, match="revises 'zz', which no script defines"):
        graph_from_mapping({"a": None, "b": "zz"})


def test_resolve_prefixes_and_bad_states() -> None:
    g = graph_from_mapping({"abc1": None, "abd2": "abc1"})
    assert g.resolve("abc") == "abc1"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        g.resolve("ab")
    with pytest.raises(NotFound):
        g.resolve("zz")
    with pytest.raises(FailedPrecondition, match="do not define.*migrate upgrade"):
        g.upgrade_path({"abc1", "ghost"}, "head")
    with pytest.raises(FailedPrecondition, match="ancestor"):
        g.upgrade_path({"abd2"}, "head")
    with pytest.raises(InvalidArgument, match="not applied"):
        g.downgrade_path({"abc1"}, "abd2")


def test_scripts_load_validate_and_template(tmp_path: Path) -> None:
    write_scripts(tmp_path / "ok", {"r1.py": 'revision = "r1"\ndown_revision = None\ndef upgrade(op): pass\n'})
    path = write_revision(tmp_path / "ok", "add a thing", ("r1",), revision="r2")
    scripts = {s.revision: s for s in load_scripts(tmp_path / "ok")}
    assert scripts["r2"].down_revisions == ("r1",) and scripts["r2"].message == "add a thing"
    assert scripts["r2"].checksum == script_checksum(path.read_bytes())
    assert script_checksum(b"a\r\nb") == script_checksum(b"a\nb")
    write_scripts(tmp_path / "dup", {"x.py": 'revision = "r"\ndown_revision = None\ndef upgrade(op): pass\n',
                                     "y.py": 'revision = "r"\ndown_revision = None\ndef upgrade(op): pass\n'})
    with pytest.raises(InvalidArgument, match="defined twice"):
        load_scripts(tmp_path / "dup")
    write_scripts(tmp_path / "bad", {"x.py": 'revision = "r"\ndef upgrade(op): pass\n'})
    with pytest.raises(InvalidArgument, match="missing `down_revision`"):
        load_scripts(tmp_path / "bad")
    write_scripts(tmp_path / "boom", {"x.py": 'raise RuntimeError("nope")\n'})
    with pytest.raises(InvalidArgument, match="failed to import: RuntimeError: nope"):
        load_scripts(tmp_path / "boom")


def test_ops_reverse_round_trip() -> None:
    idx = IndexSpec("dense", "IVF_FLAT", "IP", {"nlist": 64})
    ops = [
        AddField("c", FieldSpec("tag", "VARCHAR", max_length=16)),
        CreateIndex("c", idx, replaces=IndexSpec("dense", "FLAT", "IP")),
        CreateIndex("c", idx),
        AddTruncatedDense("c", 16, "pca"),
        AlterProperties("c", {"mmap.enabled": "true"}, previous={"mmap.enabled": None}),
    ]
    for op in ops:
        assert op.reverse().reverse() == op, op
    assert ops[2].reverse().kind == "drop_index"
    with pytest.raises(IrreversibleOperation, match="write downgrade"):
        DropCollection("c").reverse()
    with pytest.raises(IrreversibleOperation):
        RunPython(print).reverse()
    assert RunPython(print, reverse_fn=repr).reverse().fn is repr
    with pytest.raises(InvalidArgument, match="not nullable and has no default"):
        FieldSpec("x", "INT64", nullable=False)


def test_operations_record_and_model_tracks_schema() -> None:
    op = Operations("docs", dense_dim=64)
    op.create_collection()
    op.add_truncated_dense(16)
    op.add_field("tag", "varchar", max_length=8)
    op.create_index("dense", "IVF_FLAT", "IP", {"nlist": 8})
    assert [o.kind for o in op.ops] == ["create_collection", "add_truncated_dense", "add_field", "create_index"]
    layout = op.current_layout()
    assert [t.dim for t in layout.truncated] == [16]
    with pytest.raises(InvalidArgument, match="already exists"):
        op.add_truncated_dense(16)
    with pytest.raises(InvalidArgument, match="below dense_dim"):
        op.add_truncated_dense(64)
    op.drop_collection()
    assert op.ops[-1].layout.truncated == layout.truncated  # the reverse can recreate it


def test_builtin_revisions_plan_offline_from_the_top_level_folder(lite_free_settings) -> None:
    from milvus_embed_ext.migrations import builtin_migrations_dir, plan

    assert builtin_migrations_dir() == (REPO / "migrations").resolve()  # one copy: the one that runs
    steps = plan(lite_free_settings, "head", applied=set())
    assert [(s.revision, [o.kind for o in s.ops]) for s in steps] == [
        ("0001_initial", ["create_collection"]), ("0002_dense_256", ["add_truncated_dense"])]
    down = plan(lite_free_settings, "base", applied={"0001_initial", "0002_dense_256"})
    assert [(s.revision, [o.kind for o in s.ops]) for s in down] == [
        ("0002_dense_256", ["drop_truncated_dense"]), ("0001_initial", ["drop_collection"])]


def test_scripts_state_their_parameters_and_settings_fill_only_new_scripts(tmp_path: Path) -> None:
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.migrations import new_revision
    from milvus_embed_ext.migrations.ops import Operations

    settings = load_settings(env={}, overrides={"colbert_codec": "bits", "index_type": "IVF_FLAT",
                                                "migrations_dir": str(tmp_path / "m")})
    op = Operations("c", settings, dense_dim=64)
    layout = op.layout()
    assert (layout.colbert_codec, layout.index_type) == ("int6", "auto"), "op.layout() never reads the settings"
    assert op.layout(colbert_codec="bits").colbert_codec == "bits"
    op.create_collection(layout)
    later = Operations("c", None, model=op.model)
    assert later.dense_dim == 64, "later revisions take the width the history gave the collection"
    (tmp_path / "m").mkdir()
    write_scripts(tmp_path / "m", {"r1.py": 'revision = "r1"\ndown_revision = None\ndef upgrade(op): pass\n'})
    path = new_revision(settings, "next", revision_id="r2")
    assert "LAYOUT = {'colbert_codec': 'bits', 'index_type': 'IVF_FLAT'}" in path.read_text()
    scripts = {s.revision: s for s in load_scripts(tmp_path / "m")}
    assert scripts["r2"].down_revisions == ("r1",)
