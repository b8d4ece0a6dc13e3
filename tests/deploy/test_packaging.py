"""The wheel carries every package and the one copy of the built-in revisions (top-level migrations/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_package_list_names_every_package_folder() -> None:
    listed = set(_setuptools()["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "milvus_embed_ext").rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    mapped = set(_setuptools()["package-dir"])
    assert listed - found == mapped


def test_wheel_ships_the_top_level_migrations(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("milvus_embed_ext", "migrations"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and "No module named pip" in out.stderr:  # pragma: no cover
        pytest.skip("pip is not installed in this interpreter")
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    scripts = sorted(p.name for p in (REPO / "migrations").glob("*.py"))
    for name in scripts:
        assert f"milvus_embed_ext/migrations_builtin/{name}" in names
        assert zipfile.ZipFile(wheel).read(f"milvus_embed_ext/migrations_builtin/{name}") == \
            (REPO / "migrations" / name).read_bytes()
    assert "milvus_embed_ext/wire/_generated/search_pb2.py" in names

    # installed (a pure wheel unpacks as it installs), the package loads its own copy of the revisions
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import json; from milvus_embed_ext.migrations import builtin_migrations_dir, load_scripts; "
             "d = builtin_migrations_dir(); "
             "scripts = {s.path.name: [s.checksum, list(s.replaces_checksums)] for s in load_scripts(d)}; "
             "print(json.dumps([str(d), scripts]))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert run.returncode == 0, run.stderr
    loaded_from, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(loaded_from) == site / "milvus_embed_ext" / "migrations_builtin"
    from milvus_embed_ext.migrations import load_scripts

    assert loaded == {s.path.name: [s.checksum, list(s.replaces_checksums)] for s in load_scripts(REPO / "migrations")}
