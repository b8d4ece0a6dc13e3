"""One settings object for the whole sidecar.

Precedence, lowest first: defaults < TOML file (``MEE_CONFIG`` or ``--config``) < environment ``MEE_*``
< explicit overrides (CLI flags). The environment is read here and nowhere else: every other module
receives a :class:`Settings` instance.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from .errors import InvalidArgument
from .limits import COLBERT_CODECS, DEFAULT_COLBERT_CODEC, DEFAULT_MAX_TOP_K

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "MEE_"
SECRET_FIELDS = frozenset({"milvus_token", "milvus_password", "api_keys"})


def redact_uri(uri: str) -> str:
    """The URI without user:password@ (safe for messages and logs)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<invalid uri>"
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Settings:
    """Every tunable of the sidecar. The field name in upper case, prefixed ``MEE_``, is its variable."""

    # --- model / encoder
    model: str = "BAAI/bge-m3"
    """Hub id or local directory of a BGE-M3 checkpoint (XLM-R dir + colbert_linear.pt + sparse_linear.pt)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N. auto picks CUDA when present."""
    dtype: str = "auto"
    """auto | fp32 | fp16 | bf16. auto is fp16 on CUDA; on CPU bf16 where the CPU multiplies bf16 natively (AMX or
    AVX-512 BF16: a query encodes 2-3x faster), else fp32. Pin fp32 for bit-level parity with FlagEmbedding on CPU."""
    backend: str = "torch"
    """Encoder backend: torch | onnx | onnx-int8 (ONNX Runtime on CPU; needs the `onnx` extra, see bench/RESULTS.md)."""
    onnx_cache_dir: str = ""
    """Where the onnx backends keep their exports (keyed by checkpoint hash); empty: ~/.cache/milvus-embed/onnx."""
    max_length: int = 8192
    """Tokens per text, special tokens included; longer texts are truncated."""
    token_budget: int = 16384
    """Padded tokens per forward pass (batch rows x longest row)."""
    max_batch: int = 64
    """Texts per forward pass, whatever their length."""
    truncate_dims: tuple[int, ...] = (256,)
    """Truncated dense fields (Matryoshka-style prefixes) kept for cheap first-stage search."""
    encoder_threads: int = 0
    """CPU threads for one forward pass. 0 (auto): one core fewer than the machine has (at least one) when
    embedded Milvus Lite shares the machine, else one per core. torch's threads wait on each other at every
    layer, so one held by another process stalls the whole pass (bench/RESULTS.md, encoder threads)."""
    allow_demo_model: bool = True
    """If the model is neither cached nor downloadable, fall back to a locally built demo checkpoint."""

    # --- cross-encoder reranker (Rerank RPC, search stage 3)
    reranker_model: str = ""
    """Hub id (BAAI/bge-reranker-v2-m3) or local directory of a cross-encoder; empty: no reranker, and the Rerank
    RPC and search stage 3 answer FAILED_PRECONDITION. Never falls back to a demo model."""
    reranker_device: str = ""
    """auto | cpu | cuda | cuda:N for the reranker; empty: the encoder's device."""
    reranker_dtype: str = ""
    """auto | fp32 | fp16 | bf16 for the reranker; empty: the encoder's dtype."""
    reranker_backend: str = ""
    """torch | onnx | onnx-int8 for the reranker; empty: the encoder's backend."""
    reranker_max_length: int = 512
    """Tokens per (query, passage) pair, special tokens included; the query keeps at most 3/4 of it."""
    reranker_token_budget: int = 16384
    """Padded tokens per reranker forward pass."""
    reranker_max_batch: int = 64
    """Pairs per reranker forward pass."""
    reranker_max_queue: int = 1024
    """Pairs waiting for the reranker (its own queue: a burst of reranks cannot starve embedding)."""
    reranker_max_pairs: int = 256
    """Passages in one Rerank request, and the largest search stage-3 top_n."""
    reranker_max_text_chars: int = 32768
    """Characters in one query or passage sent to the Rerank RPC."""
    cross_encoder_top_n_factor: int = 3
    """Search stage 3 re-scores this many times (offset + top_k) fused hits unless a request sets top_n."""
    cross_encoder_order: str = "reranker"
    """reranker (the cross-encoder's score alone) | fused (weighted with the stage-2 fused score)."""
    cross_encoder_weight: float = 0.7
    """With cross_encoder_order=fused: the cross-encoder's share, 0..1."""

    # --- Milvus
    milvus_uri: str = "./data/milvus.db"
    """A file path (embedded Milvus Lite, in-process) or http(s)://host:port of a Milvus server."""
    milvus_token: str = ""
    """Milvus API token (user:password or a cloud API key). Never logged."""
    milvus_user: str = ""
    """Milvus user name, with milvus_password, when no token is given."""
    milvus_password: str = ""
    """Milvus password. Never logged."""
    milvus_db: str = ""
    """Milvus database name; empty means the server default."""
    milvus_tls_ca: str = ""
    """CA bundle for https:// Milvus URIs (server certificate verification)."""
    milvus_timeout_s: float = 30.0
    """Timeout for each Milvus call, in seconds."""
    milvus_health_interval_s: float = 2.0
    """How often the sidecar probes Milvus once serving; one failed probe turns health NOT_SERVING (metric
    mee_milvus_up 0, reason in mee_milvus_last_error_info) and starts reconnecting."""
    milvus_startup_timeout_s: float = 300.0
    """How long start-up keeps retrying an unreachable Milvus (jittered exponential backoff, each attempt
    logged) before the sidecar exits; 0 retries forever."""
    milvus_lite_restarts: int = 5
    """Embedded Lite only: restarts of its dead server process tried in a row (with backoff) before the
    sidecar gives up and stays NOT_SERVING, saying why; a successful recovery resets the count."""
    collection: str = "documents"
    """Default collection for Upsert/Search when a request names none."""
    colbert_codec: str = DEFAULT_COLBERT_CODEC
    """fp32 | fp16 | int8 | int6 | bits: how ColBERT token vectors are packed in the portable store. A default
    that `migrate revision` writes into a new script (which then states it); applied revisions never read it.
    int6 (the default) stores and reads 0.38x of fp16's bytes with the ColBERT top-10 overlap of int8 on the
    measured checkpoints (bench/RESULTS.md, codecs). The built-in 0001 states int8 in its own text."""
    index_type: str = "auto"
    """auto (FLAT on Lite, HNSW on servers) | FLAT | IVF_FLAT | HNSW. Like colbert_codec, a default for new
    migration scripts."""
    migrations_dir: str = ""
    """Directory of migration scripts; empty means the project's built-in revisions."""

    # --- service
    listen: str = "127.0.0.1:50051"
    """gRPC listen address. Loopback by default: expose it deliberately."""
    http_listen: str = "127.0.0.1:8080"
    """host:port of the HTTP API in the same process (TEI and OpenAI dialects, docs/http.md); empty turns it off.
    API keys, TLS, limits and the micro-batcher are shared with gRPC."""
    max_wait_ms: float = 5.0
    """How long the micro-batcher waits for more requests before running a forward pass."""
    max_queue: int = 1024
    """Texts waiting for the encoder; beyond it requests get RESOURCE_EXHAUSTED."""
    milvus_threads: int = 16
    """Threads for blocking Milvus calls (searches, reads, writes): each concurrent request holds one while
    Milvus answers, so this bounds how many requests reach Milvus at once."""
    max_concurrent: int = 64
    """Requests in flight at once; beyond it requests get RESOURCE_EXHAUSTED."""
    max_message_bytes: int = 32 * 1024 * 1024
    """Largest gRPC message accepted or sent, in bytes."""
    max_texts_per_request: int = 256
    """Texts (or documents) in one Embed/Upsert request."""
    max_top_k: int = DEFAULT_MAX_TOP_K
    """Largest top_k + offset a search may ask for."""
    api_keys: tuple[str, ...] = ()
    """When non-empty every RPC needs ``authorization: Bearer <key>`` (health stays open for probes)."""
    tls_cert: str = ""
    """PEM certificate chain for serving TLS (with tls_key)."""
    tls_key: str = ""
    """PEM private key for serving TLS."""
    tls_client_ca: str = ""
    """With tls_cert/tls_key: require client certificates signed by this CA (mutual TLS)."""
    metrics_listen: str = ""
    """host:port for the Prometheus endpoint; empty disables it."""
    log_level: str = "INFO"
    """DEBUG | INFO | WARNING | ERROR."""
    log_format: str = "json"
    """json | text."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long in-flight requests may take to finish."""

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict, secrets replaced (the URI's user:password@ too), safe to log."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        if not self.is_embedded:
            out["milvus_uri"] = redact_uri(self.milvus_uri)
        return out

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value to scrub from messages and logs: token, password, API keys, the URI's password."""
        try:
            uri_password = urlsplit(self.milvus_uri).password or ""
        except ValueError:
            uri_password = ""
        values = (self.milvus_token, self.milvus_password, *self.api_keys, uri_password)
        return tuple(dict.fromkeys(v for v in values if v))

    def replace(self, **changes: Any) -> Settings:
        return load_settings(env={}, overrides={**dataclasses.asdict(self), **changes})

    @property
    def is_embedded(self) -> bool:
        """True when milvus_uri names a Milvus Lite file rather than a server."""
        return not self.milvus_uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


def _field_types() -> dict[str, Any]:
    return get_type_hints(Settings)


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Turn a TOML/env/flag value into the field's type, or say exactly what is wrong."""
    try:
        if get_origin(typ) is tuple:
            (inner, _ellipsis) = get_args(typ)
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, (list, tuple)):
                items = list(value)
            else:
                raise TypeError
            return tuple(inner(v) for v in items)
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return typ(value)
    except (TypeError, ValueError):
        shown = "***" if name in SECRET_FIELDS else repr(value)
        raise InvalidArgument(
            f"setting {name} (env {ENV_PREFIX}{name.upper()}) must be {getattr(typ, '__name__', typ)}, got {shown}"
        ) from None


def _validate(s: Settings) -> None:
    if s.device != "auto" and s.device != "cpu" and not (s.device == "cuda" or s.device.startswith("cuda:")):
        raise InvalidArgument(f"device must be auto, cpu, cuda or cuda:N, got {s.device!r}")
    if s.dtype not in {"auto", "fp32", "fp16", "bf16"}:
        raise InvalidArgument(f"dtype must be auto, fp32, fp16 or bf16, got {s.dtype!r}")
    if s.backend not in {"torch", "onnx", "onnx-int8"}:
        raise InvalidArgument(f"backend must be torch, onnx or onnx-int8, got {s.backend!r}")
    if s.reranker_device and s.reranker_device not in {"auto", "cpu"} and not (
            s.reranker_device == "cuda" or s.reranker_device.startswith("cuda:")):
        raise InvalidArgument(f"reranker_device must be empty, auto, cpu, cuda or cuda:N, got {s.reranker_device!r}")
    if s.reranker_dtype not in {"", "auto", "fp32", "fp16", "bf16"}:
        raise InvalidArgument(f"reranker_dtype must be empty, auto, fp32, fp16 or bf16, got {s.reranker_dtype!r}")
    if s.reranker_backend not in {"", "torch", "onnx", "onnx-int8"}:
        raise InvalidArgument(f"reranker_backend must be empty, torch, onnx or onnx-int8, got {s.reranker_backend!r}")
    if s.reranker_max_length < 8:
        raise InvalidArgument(f"reranker_max_length must be >= 8, got {s.reranker_max_length}")
    if s.cross_encoder_order not in {"reranker", "fused"}:
        raise InvalidArgument(f"cross_encoder_order must be reranker or fused, got {s.cross_encoder_order!r}")
    if not 0.0 <= s.cross_encoder_weight <= 1.0:
        raise InvalidArgument(f"cross_encoder_weight must be in 0..1, got {s.cross_encoder_weight}")
    if s.encoder_threads < 0:
        raise InvalidArgument(f"encoder_threads must be >= 0 (0: one per core), got {s.encoder_threads}")
    for name in ("max_length", "token_budget", "max_batch", "max_queue", "max_concurrent", "milvus_threads",
                 "max_message_bytes", "max_texts_per_request", "max_top_k", "reranker_token_budget",
                 "reranker_max_batch", "reranker_max_queue", "reranker_max_pairs", "reranker_max_text_chars",
                 "cross_encoder_top_n_factor"):
        if getattr(s, name) <= 0:
            raise InvalidArgument(f"{name} must be > 0, got {getattr(s, name)}")
    if s.milvus_health_interval_s <= 0:
        raise InvalidArgument(f"milvus_health_interval_s must be > 0, got {s.milvus_health_interval_s}")
    if s.milvus_startup_timeout_s < 0 or s.milvus_lite_restarts < 0:
        raise InvalidArgument("milvus_startup_timeout_s and milvus_lite_restarts must be >= 0 (0: no limit / none)")
    if any(d <= 0 for d in s.truncate_dims):
        raise InvalidArgument(f"truncate_dims must be positive, got {s.truncate_dims}")
    if s.colbert_codec not in COLBERT_CODECS:
        raise InvalidArgument(f"colbert_codec must be one of {', '.join(COLBERT_CODECS)}, got {s.colbert_codec!r}")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise InvalidArgument("tls_cert and tls_key must be given together")
    if s.tls_client_ca and not s.tls_cert:
        raise InvalidArgument("tls_client_ca (mutual TLS) needs tls_cert and tls_key too")
    if s.http_listen and s.http_listen == s.listen and not s.listen.endswith(":0"):
        raise InvalidArgument(f"http_listen and listen are both {s.listen!r}; give HTTP its own port or set "
                              "MEE_HTTP_LISTEN to empty to turn HTTP off")
    if s.log_format not in {"json", "text"}:
        raise InvalidArgument(f"log_format must be json or text, got {s.log_format!r}")
    if not s.collection:
        raise InvalidArgument("collection must not be empty")


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config file {p} is not valid TOML: {exc}") from None
    # Accept a [milvus_embed] table or top-level keys.
    return dict(data.get("milvus_embed", data))


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from file, environment and overrides (None values in overrides are ignored)."""
    env = os.environ if env is None else env
    types = _field_types()
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}

    config_file = config_file or env.get(f"{ENV_PREFIX}CONFIG") or None
    if config_file:
        for key, value in read_toml(config_file).items():
            if key not in known:
                raise InvalidArgument(f"config file {config_file}: unknown setting {key!r}; see docs/configuration.md")
            values[key] = value

    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name in known:
            values[name] = value

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise InvalidArgument(f"unknown setting {key!r}")
        values[key] = value

    settings = Settings(**{k: _coerce(k, v, types[k]) for k, v in values.items()})
    _validate(settings)
    return settings


def setting_docs() -> list[tuple[str, str, Any, str]]:
    """(name, env var, default, doc) for every setting: the source of docs/configuration.md."""
    import ast
    import inspect

    source = inspect.getsource(Settings)
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = ""
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                doc = str(nxt.value.value)
            docs[node.target.id] = doc
    return [(f.name, f"{ENV_PREFIX}{f.name.upper()}", f.default, docs.get(f.name, "")) for f in fields(Settings)]


__all__ = ["Settings", "load_settings", "setting_docs", "redact_uri", "ENV_PREFIX"]
