"""The built-in revisions state their parameters and list the checksums of their earlier texts (no Milvus).

What 0001 and 0002 create must come from their own text, never from CollectionLayout's defaults or the
settings; an earlier text that did the same thing is accepted by its checksum, any other edit is drift.
"""

from __future__ import annotations

import dataclasses
import runpy
import shutil
from pathlib import Path
from typing import Any

import pytest

from milvus_embed_ext.errors import InvalidArgument
from milvus_embed_ext.migrations import builtin_migrations_dir, load_environment, load_scripts, plan
from milvus_embed_ext.migrations import script as script_module
from milvus_embed_ext.migrations.ops import Operations
from milvus_embed_ext.store import layout as layout_module
from milvus_embed_ext.store.layout import CollectionLayout, TruncatedField
from tests.migrations.mig_helpers import BUILTIN, EARLIER_BUILTIN_TEXTS, copy_builtins, write_scripts

# every CollectionLayout parameter a script states; the name is the migrated collection's, the dense width the
# served model's, and `extra` holds annotations that are stored but not interpreted
NOT_STATED = {"name", "dense_dim", "extra"}


def _stated_layout() -> dict[str, Any]:
    return dict(runpy.run_path(str(BUILTIN / "0001_initial_layout.py"))["LAYOUT"])


def _layout_params(layout: CollectionLayout) -> dict[str, Any]:
    d = layout.to_dict()
    return {k: d[k] for k in d if k not in NOT_STATED | {"format"}}


@dataclasses.dataclass(frozen=True)
class ShiftedDefaults(CollectionLayout):
    """CollectionLayout with every default changed, as a later library version might change them."""

    truncated: tuple[TruncatedField, ...] = (TruncatedField(32, "pca"),)
    store_text: bool = False
    colbert: str = "none"
    colbert_codec: str = "bits"
    index_type: str = "HNSW"
    max_id_length: int = 64


def test_0001_states_every_layout_parameter() -> None:
    stated = _stated_layout()
    fields = {f.name for f in dataclasses.fields(CollectionLayout)}
    assert set(stated) == fields - NOT_STATED, "a new CollectionLayout parameter must be stated by 0001"
    assert stated["colbert_codec"] == "int8" and tuple(stated["truncated"]) == ()


def test_builtins_ignore_the_library_defaults(lite_free_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    stated = _stated_layout()
    monkeypatch.setattr(layout_module, "CollectionLayout", ShiftedDefaults)
    monkeypatch.setattr(Operations.add_truncated_dense, "__defaults__", ("pca",))
    unstated = Operations("c", dense_dim=1024)
    unstated.create_collection(unstated.layout())
    assert unstated.ops[0].layout.colbert_codec == "bits", "the patch reaches op.layout()"
    assert unstated.add_truncated_dense(16).projection == "pca", "the patch reaches op.add_truncated_dense()"

    first, second = plan(lite_free_settings, "head", applied=set())
    (create,) = first.ops
    assert isinstance(create.layout, ShiftedDefaults)
    want = {**stated, "truncated": []}
    assert _layout_params(create.layout) == want
    assert create.layout.dense_dim == 1024, "the dense width is the served model's"
    (add,) = second.ops
    assert (add.dim, add.projection) == (256, "prefix")
    assert second.model is not None
    after = second.model[lite_free_settings.collection].layout
    assert {k: after[k] for k in want} == {**want, "truncated": [{"dim": 256, "projection": "prefix"}]}


def test_builtins_list_the_checksums_of_their_earlier_texts() -> None:
    scripts = {s.path.name: s for s in load_scripts(BUILTIN)}
    for name, text in EARLIER_BUILTIN_TEXTS.items():
        earlier = script_module.script_checksum(text.encode())
        assert scripts[name].replaces_checksums == (earlier,)
        assert scripts[name].matches(earlier) and scripts[name].matches(scripts[name].checksum)
        assert not scripts[name].matches(script_module.script_checksum(text.encode() + b"# edited\n"))


def test_replaces_checksums_of_a_user_script_are_read_and_checked(tmp_path: Path) -> None:
    old = 'revision = "r1"\ndown_revision = None\ndef upgrade(op): pass\n'
    old_sum = script_module.script_checksum(old.encode())
    write_scripts(tmp_path / "ok", {"r1.py": f'REPLACES_CHECKSUMS = ("{old_sum}",)\n{old}'})
    (script,) = load_scripts(tmp_path / "ok")
    assert script.matches(old_sum) and not script.matches("0" * 64) and not script.matches(None)
    write_scripts(tmp_path / "bad", {"r1.py": f'REPLACES_CHECKSUMS = ("{old_sum[:12]}",)\n{old}'})
    with pytest.raises(InvalidArgument, match="REPLACES_CHECKSUMS must be a tuple of checksums"):
        load_scripts(tmp_path / "bad")


def test_the_packaged_copy_is_the_one_loaded(tmp_path: Path, lite_free_settings,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed wheel has milvus_embed_ext/migrations_builtin next to the package: that copy is loaded,
    with the same text, checksums and stated parameters as the repository's migrations/."""
    package = tmp_path / "site" / "milvus_embed_ext"
    (package / "migrations").mkdir(parents=True)
    shipped = copy_builtins(package / "migrations_builtin")
    shutil.copy(BUILTIN / "__init__.py", shipped / "__init__.py")
    monkeypatch.setattr(script_module, "__file__", str(package / "migrations" / "script.py"))
    assert builtin_migrations_dir() == shipped.resolve()
    loaded = load_environment(lite_free_settings).scripts
    assert {s.path.parent for s in loaded.values()} == {shipped.resolve()}
    source = {s.revision: s for s in load_scripts(BUILTIN)}
    assert {r: (s.checksum, s.replaces_checksums) for r, s in loaded.items()} == \
        {r: (s.checksum, s.replaces_checksums) for r, s in source.items()}
    (create,) = plan(lite_free_settings, "0001_initial", applied=set())[0].ops
    assert _layout_params(create.layout) == {**_stated_layout(), "truncated": []}

