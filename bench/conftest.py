"""Benchmark options and fixtures (pytest-benchmark). Not part of the default test run (testpaths = tests).

    pytest bench                       # the 'wide' checkpoint: BGE-M3's widths (1024-d vectors), 2 layers
    pytest bench --quick               # tiny checkpoint, small sizes: checks the suites work, ratios mean little
    pytest bench --full-model          # BGE-M3's exact shapes (built once into .cache/test-model-full, ~2.3 GB)
    pytest bench --model-dir DIR       # any BGE-M3 checkpoint directory, e.g. the real one
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("MEE_TEST_CACHE", REPO_ROOT / ".cache"))

# group -> implementation -> figures, filled by the suites, printed with ratios at the end of the run.
RESULTS: dict[str, dict[str, dict]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("milvus-embed bench")
    group.addoption("--full-model", action="store_true", default=False,
                    help="benchmark on a full-size (BGE-M3-shaped, random) checkpoint, built once and cached "
                         "(same as --model-size full)")
    group.addoption("--model-size", choices=("tiny", "wide", "full"), default=None,
                    help="test checkpoint to build and use: wide (default; BGE-M3's 1024-d vectors and vocabulary, "
                         "2 layers), tiny (default with --quick), full (BGE-M3's exact shapes)")
    group.addoption("--model-dir", default=None, help="benchmark this checkpoint directory instead")
    group.addoption("--reranker-dir", default=None,
                    help="cross-encoder checkpoint for test_rerank.py (default: a random one built like the model: "
                         "tiny, or bge-reranker-v2-m3's shape with --full-model)")
    group.addoption("--bench-device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    group.addoption("--no-baseline", action="store_true", default=False,
                    help="skip FlagEmbedding (e.g. where it is not installed)")
    group.addoption("--flag-batch-size", type=int, default=0,
                    help="FlagEmbedding batch_size; 0 (default) = the number of texts in the call. Its own "
                         "default, 256, first runs a trial forward pass of 256 copies of the longest text")
    # service-level suites (test_search.py, test_ingest.py, test_storage.py; helpers in benchlib.py)
    group.addoption("--quick", action="store_true", default=False,
                    help="small sizes and short durations: checks the suites work; figures are not comparable")
    group.addoption("--search-docs", type=int, default=None,
                    help="documents in the search data (default 10000, --quick 1000; 100000 for the large run; "
                         "built once, cached under .cache/bench/)")
    group.addoption("--search-queries", type=int, default=None, help="distinct queries (default 50, --quick 20)")
    group.addoption("--corpus-dtype", choices=("fp32", "bf16"), default="fp32",
                    help="dtype the search corpus is encoded with, once (cached). bf16 is 2-3x faster on CPUs with "
                         "AMX or AVX-512 BF16; queries are still encoded at search time by each implementation")
    group.addoption("--colbert-codec", default=None,
                    help="ColBERT codec of the search data (default: the one the built-in 0001 states, int8); another "
                         "is built from a copy of the built-in revisions that states it, served with MEE_MIGRATIONS_DIR")
    group.addoption("--duration", type=float, default=None,
                    help="seconds per concurrency level in the throughput tests (default 10, --quick 2)")
    group.addoption("--concurrency", default=None,
                    help="comma-separated client counts for the throughput tests (default 1,4,16; --quick 1,8)")
    group.addoption("--ingest-docs", type=int, default=None, help="documents per ingestion round (default 512, --quick 64)")
    group.addoption("--storage-docs", type=int, default=None, help="documents per storage collection (default 300, --quick 60)")
    group.addoption("--sidecar-address", default=None,
                    help="host:port of a running sidecar to measure instead of starting one (baselines are skipped); "
                         "API key from MEE_BENCH_API_KEY, else the first key of MEE_API_KEYS")
    group.addoption("--sidecar-collection", default="", help="collection to search on --sidecar-address (default: its own)")
    group.addoption("--sidecar-ingest-collection", default="",
                    help="with --sidecar-address: collection the ingestion test may write to (ids mee-bench-*, deleted "
                         "afterwards); without it ingestion is not measured on a live sidecar")
    group.addoption("--sidecar-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the sidecar started here (repeatable), e.g. OMP_NUM_THREADS=1")
    group.addoption("--sidecar-tls", action="store_true", default=False, help="TLS to --sidecar-address (system roots)")
    group.addoption("--sidecar-ca", default=None, help="CA bundle for --sidecar-address (implies TLS)")


@pytest.fixture(scope="session")
def flag_batch_size(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--flag-batch-size"))


@pytest.fixture(scope="session")
def bench_full(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--full-model"))


@pytest.fixture(scope="session")
def bench_model_dir(request: pytest.FixtureRequest, bench_full: bool) -> Path:
    from milvus_embed_ext.encoder.testmodel import ensure_test_model

    explicit = request.config.getoption("--model-dir")
    if explicit:
        return Path(explicit)
    size = bench_model_size(request.config)
    return ensure_test_model(CACHE_DIR / f"test-model-{size}", size=size, seed=0)


def bench_model_size(config: pytest.Config) -> str:
    """The test checkpoint's size: --model-size, else full with --full-model, tiny with --quick, else wide."""
    if config.getoption("--model-size"):
        return str(config.getoption("--model-size"))
    if config.getoption("--full-model"):
        return "full"
    return "tiny" if config.getoption("--quick") else "wide"


@pytest.fixture(scope="session")
def bench_reranker_dir(request: pytest.FixtureRequest, bench_full: bool) -> Path:
    from milvus_embed_ext.encoder.testmodel import ensure_test_model

    explicit = request.config.getoption("--reranker-dir")
    if explicit:
        return Path(explicit)
    size = "full" if bench_full else "tiny"
    return ensure_test_model(CACHE_DIR / f"test-reranker-{size}", size=size, seed=0, kind="reranker")


@pytest.fixture(scope="session")
def bench_device(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--bench-device"))


@pytest.fixture(scope="session")
def m3_encoder(bench_model_dir: Path, bench_device: str):
    from milvus_embed_ext.encoder import M3Encoder

    dtype = "fp32" if bench_device == "cpu" else "fp16"
    return M3Encoder.from_pretrained(str(bench_model_dir), device=bench_device, dtype=dtype, max_length=8192)


def _flag_baseline(request: pytest.FixtureRequest, model_class: str, model_dir: Path, device: str):
    """FlagEmbedding's ``model_class`` on the same checkpoint and device, in-process (one device, no pool), for
    the fixture to yield from; skips without FlagEmbedding or with --no-baseline."""
    if request.config.getoption("--no-baseline"):
        pytest.skip("--no-baseline")
    flag = pytest.importorskip("FlagEmbedding")
    model = getattr(flag, model_class)(str(model_dir), use_fp16=device != "cpu", devices=device)
    assert len(model.target_devices) == 1
    yield model
    model.stop_self_pool()


@pytest.fixture(scope="session")
def flag_model(request: pytest.FixtureRequest, bench_model_dir: Path, bench_device: str):
    """FlagEmbedding's BGEM3FlagModel on the same checkpoint and device, in-process (one device, no pool)."""
    yield from _flag_baseline(request, "BGEM3FlagModel", bench_model_dir, bench_device)


@pytest.fixture(scope="module")
def flag_reranker(request: pytest.FixtureRequest, bench_reranker_dir: Path, bench_device: str):
    """FlagEmbedding's FlagReranker on the same reranker checkpoint and device (bench/test_rerank.py)."""
    yield from _flag_baseline(request, "FlagReranker", bench_reranker_dir, bench_device)


@pytest.fixture(scope="session")
def bench_record():
    """``record(group, impl, **figures)``: keep figures for the ratio summary printed at the end."""

    def record(group: str, impl: str, **values: float) -> None:
        RESULTS.setdefault(group, {})[impl] = values

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("milvus-embed vs FlagEmbedding")
    for group, impls in RESULTS.items():
        for impl, v in impls.items():
            tr.write_line(f"{group:>9} {impl:<14} " + "  ".join(f"{k}={v[k]:.4g}" for k in sorted(v)))
        ours, ref = impls.get("milvus-embed"), impls.get("flagembedding") or impls.get("flagreranker")
        if ours and ref and "pairs_per_s" in ours:
            tr.write_line(f"{group:>9} ratio          pairs/s x{ours['pairs_per_s'] / ref['pairs_per_s']:.2f}")
        if ours and ref:
            if "tokens_per_s" in ours and "texts_per_s" in ours:
                tr.write_line(f"{group:>9} ratio          tokens/s x{ours['tokens_per_s'] / ref['tokens_per_s']:.2f}"
                              f"  texts/s x{ours['texts_per_s'] / ref['texts_per_s']:.2f}")
            if "p50_ms" in ours:
                tr.write_line(f"{group:>9} ratio          p50 x{ref['p50_ms'] / ours['p50_ms']:.2f} faster"
                              f"  p99 x{ref['p99_ms'] / ours['p99_ms']:.2f} faster")


# ------------------------------------------------------------------ saved-run metadata (bench/report.py, compare.py)

_LOAD_AT_START: list[float] = []


def _bench_options(config) -> dict:
    names = ["colbert_codec", "corpus_dtype", "full_model", "model_size", "model_dir", "reranker_dir", "bench_device", "no_baseline", "quick", "search_docs", "search_queries",
             "duration", "concurrency", "ingest_docs", "storage_docs", "sidecar_address", "sidecar_collection", "sidecar_env"]
    opts = {n: config.getoption("--" + n.replace("_", "-")) for n in names}
    opts["model_size"] = bench_model_size(config)  # resolved: the default depends on --quick
    return opts


def pytest_sessionstart(session) -> None:  # noqa: ARG001
    with contextlib.suppress(OSError):
        _LOAD_AT_START[:] = list(os.getloadavg())


def cpu_simd_flags() -> list[str]:
    """The CPU's vector extensions (AVX2, AVX-512, VNNI, BF16, AMX): int8 and bf16 speed hinges on them, so
    every saved figure carries them and figures are compared only within one kind of CPU."""
    from milvus_embed_ext.encoder.loading import cpu_flags

    return sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    """Load average before the run, cores, torch build and threads: the report prints them beside the figures."""
    machine_info["load_avg_start"] = _LOAD_AT_START
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["bench_options"] = _bench_options(config)
    from milvus_embed_ext.encoder import resolve_dtype

    device = str(config.getoption("--bench-device"))
    machine_info["sidecar_dtype"] = resolve_dtype("auto", "cuda" if device.startswith("cuda") else "cpu")
    machine_info["cpu_simd"] = cpu_simd_flags()
    try:
        import torch

        machine_info["torch"] = torch.__version__
        machine_info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            machine_info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:  # noqa: ARG001
    with contextlib.suppress(OSError):
        output_json["machine_info"]["load_avg_end"] = list(os.getloadavg())


@pytest.fixture(autouse=True)
def _bench_extra_info(request: pytest.FixtureRequest):
    """Every saved benchmark carries ``config`` (what it ran on: compare.py matches on it), the 1-minute load
    average when it started, and per-call p50/p99 when it timed single calls (saved stats have no p99)."""
    if "benchmark" not in request.fixturenames:
        yield
        return
    bench = request.getfixturevalue("benchmark")
    opts = request.config.getoption
    where = opts("--sidecar-address") or "local"
    model = "live" if opts("--sidecar-address") else opts("--model-dir") or bench_model_size(request.config)
    env = " env=" + ",".join(opts("--sidecar-env")) if opts("--sidecar-env") else ""
    bench.extra_info.setdefault("config", f"model={model} device={opts('--bench-device')} quick={opts('--quick')}"
                                          f" sidecar={where}{env}")
    with contextlib.suppress(OSError):
        bench.extra_info["load_1m"] = round(os.getloadavg()[0], 2)
    yield
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    data = list(getattr(stats, "data", None) or [])
    if len(data) >= 10 and not bench.extra_info.get("harness_timing"):
        import numpy as np

        ms = np.asarray(data, dtype=np.float64) * 1000.0
        bench.extra_info.setdefault("p50_ms", float(np.percentile(ms, 50)))
        bench.extra_info.setdefault("p99_ms", float(np.percentile(ms, 99)))
