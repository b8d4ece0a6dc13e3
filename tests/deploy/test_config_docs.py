"""docs/configuration.md is generated from Settings and must be committed fresh."""

from __future__ import annotations

from pathlib import Path

from milvus_embed_ext.config import setting_docs
from milvus_embed_ext.devtools import docsgen

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_committed_configuration_reference_is_fresh() -> None:
    assert DOC.read_text(encoding="utf-8") == docsgen.render(), (
        "docs/configuration.md is stale: run `python -m milvus_embed_ext.devtools.docsgen` and commit the result"
    )


def test_every_setting_and_variable_is_documented() -> None:
    text = docsgen.render()
    for name, env, _default, doc in setting_docs():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        assert f"`{env}`" in row
        assert doc == "" or doc.split()[0].strip("`") in row


def test_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    assert docsgen.main(["--output", str(out), "--check"]) == 1
    assert docsgen.main(["--output", str(out)]) == 0
    assert docsgen.main(["--output", str(out), "--check"]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("MEE_MODEL", "MEE_MODLE"), encoding="utf-8")
    assert docsgen.main(["--output", str(out), "--check"]) == 1
