"""Settings: precedence, coercion, validation, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from milvus_embed_ext.config import Settings, load_settings, setting_docs
from milvus_embed_ext.errors import InvalidArgument


def test_defaults_are_safe() -> None:
    s = load_settings(env={})
    assert s.listen == "127.0.0.1:50051"  # loopback unless exposed deliberately
    assert s.milvus_uri == "./data/milvus.db"
    assert s.is_embedded
    assert s.api_keys == ()


def test_precedence_file_env_override(tmp_path: Path) -> None:
    cfg = tmp_path / "mee.toml"
    cfg.write_text('max_batch = 8\ntoken_budget = 100\ncollection = "from_file"\n')
    env = {"MEE_TOKEN_BUDGET": "200", "MEE_COLLECTION": "from_env", "OTHER": "x"}
    s = load_settings(cfg, env=env, overrides={"collection": "from_flag", "device": None})
    assert s.max_batch == 8
    assert s.token_budget == 200
    assert s.collection == "from_flag"
    assert s.device == "auto"


def test_config_file_from_env_and_table(tmp_path: Path) -> None:
    cfg = tmp_path / "mee.toml"
    cfg.write_text('[milvus_embed]\ntruncate_dims = [128, 256]\nallow_demo_model = false\n')
    s = load_settings(env={"MEE_CONFIG": str(cfg)})
    assert s.truncate_dims == (128, 256)
    assert s.allow_demo_model is False


def test_env_coercion_of_tuples_and_bools() -> None:
    s = load_settings(env={"MEE_TRUNCATE_DIMS": "64, 128", "MEE_ALLOW_DEMO_MODEL": "no", "MEE_API_KEYS": "a,b"})
    assert s.truncate_dims == (64, 128)
    assert s.allow_demo_model is False
    assert s.api_keys == ("a", "b")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MEE_MAX_BATCH": "many"}, "MEE_MAX_BATCH"),
        ({"MEE_MAX_BATCH": "0"}, "max_batch must be > 0"),
        ({"MEE_DEVICE": "tpu"}, "device must be"),
        ({"MEE_DTYPE": "int4"}, "dtype must be"),
        ({"MEE_TLS_CERT": "c.pem"}, "tls_cert and tls_key"),
        ({"MEE_TLS_CLIENT_CA": "ca.pem"}, "mutual TLS"),
        ({"MEE_COLBERT_CODEC": "zip"}, "colbert_codec"),
        ({"MEE_TRUNCATE_DIMS": "-4"}, "truncate_dims"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        load_settings(env=env)


def test_secrets_never_in_errors_or_redacted_view() -> None:
    with pytest.raises(InvalidArgument) as info:
        load_settings(env={}, overrides={"api_keys": 982451653})
    assert "982451653" not in str(info.value)
    assert "MEE_API_KEYS" in str(info.value)
    s = load_settings(env={"MEE_MILVUS_PASSWORD": "hunter2", "MEE_API_KEYS": "k1"})
    red = s.redacted()
    assert "hunter2" not in repr(red) and "k1" not in repr(red)


def test_uri_password_is_a_secret_and_redacted() -> None:
    s = load_settings(env={"MEE_MILVUS_URI": "http://root:uri-pw-42@milvus.local:19530", "MEE_MILVUS_TOKEN": "tok-1",
                           "MEE_API_KEYS": "key-a,key-b"})
    red = s.redacted()
    assert "uri-pw-42" not in repr(red)
    assert red["milvus_uri"] == "http://milvus.local:19530"
    assert set(s.secrets) == {"uri-pw-42", "tok-1", "key-a", "key-b"}
    lite = load_settings(env={"MEE_MILVUS_URI": "./data/m.db"})
    assert lite.redacted()["milvus_uri"] == "./data/m.db" and lite.secrets == ()


def test_unknown_keys_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("max_bacth = 3\n")
    with pytest.raises(InvalidArgument, match="unknown setting 'max_bacth'"):
        load_settings(cfg, env={})
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})
    cfg.write_text("this is = = not toml")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        load_settings(cfg, env={})


def test_server_uri_is_not_embedded() -> None:
    assert not load_settings(env={"MEE_MILVUS_URI": "https://milvus:19530"}).is_embedded


def test_every_setting_is_documented() -> None:
    docs = setting_docs()
    assert {name for name, *_ in docs} == set(Settings.__dataclass_fields__)
    undocumented = [name for name, _env, _default, doc in docs if not doc]
    assert undocumented == [], f"add a docstring line under these fields in config.py: {undocumented}"
