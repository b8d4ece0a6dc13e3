"""Fixtures for the migrations tests: one Milvus Lite server for the whole session (startup costs seconds);
each test migrates its own collection (its own history scope), so tests do not see each other."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.migrations.mig_helpers import DENSE_DIM, WIDE

_names = itertools.count()


@dataclass
class Lite:
    settings: Any
    store: Any
    socket_uri: str  # unix:... of the Lite server, for other processes
    root: Path

    def scope(self, scripts: Path | None = None, **overrides: Any) -> Any:
        """Settings for a fresh collection migrated with the given scripts."""
        name = f"c{next(_names)}"
        return self.settings.replace(collection=name, migrations_dir=str(scripts) if scripts else "", **overrides)


@pytest.fixture(scope="session")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Lite:
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.store.client import MilvusStore

    root = tmp_path_factory.mktemp("migrations-lite")
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": DENSE_DIM}))
    settings = load_settings(env={}, overrides={"milvus_uri": str(root / "milvus.db"), "model": str(model)})
    store = MilvusStore.connect(settings)
    from milvus_lite.server_manager import server_manager_instance

    socket_uri = server_manager_instance.start_and_get_uri(str(root / "milvus.db"))
    yield Lite(settings, store, socket_uri, root)
    store.close()


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder (config.json only) of width WIDE: the built-in 0002 revision has work to do."""
    d = tmp_path_factory.mktemp("wide-model")
    (d / "config.json").write_text(json.dumps({"hidden_size": WIDE}))
    return d


@pytest.fixture
def lite_free_settings(tmp_path: Path) -> Any:
    """Settings for offline planning: a 1024-d model (config.json only), the built-in scripts."""
    from milvus_embed_ext.config import load_settings

    (tmp_path / "config.json").write_text('{"hidden_size": 1024}')
    return load_settings(env={}, overrides={"model": str(tmp_path), "milvus_uri": str(tmp_path / "x.db")})
