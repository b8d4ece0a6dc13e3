"""Benchmark options and fixtures (pytest-benchmark). Not part of the default test run (testpaths = tests).

    pytest bench                       # tiny checkpoint: checks the suites work, ratios mean little
    pytest bench --full-model          # BGE-M3's exact shapes (built once into .cache/test-model-full, ~2.3 GB)
    pytest bench --model-dir DIR       # any BGE-M3 checkpoint directory, e.g. the real one
"""

from __future__ import annotations

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
                    help="benchmark on a full-size (BGE-M3-shaped, random) checkpoint, built once and cached")
    group.addoption("--model-dir", default=None, help="benchmark this checkpoint directory instead")
    group.addoption("--bench-device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    group.addoption("--no-baseline", action="store_true", default=False,
                    help="skip FlagEmbedding (e.g. where it is not installed)")


@pytest.fixture(scope="session")
def bench_full(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--full-model"))


@pytest.fixture(scope="session")
def bench_model_dir(request: pytest.FixtureRequest, bench_full: bool) -> Path:
    from milvus_embed_ext.encoder.testmodel import ensure_test_model

    explicit = request.config.getoption("--model-dir")
    if explicit:
        return Path(explicit)
    if bench_full:
        return ensure_test_model(CACHE_DIR / "test-model-full", size="full", seed=0)
    return ensure_test_model(CACHE_DIR / "test-model-tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def bench_device(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--bench-device"))


@pytest.fixture(scope="session")
def m3_encoder(bench_model_dir: Path, bench_device: str):
    from milvus_embed_ext.encoder import M3Encoder

    dtype = "fp32" if bench_device == "cpu" else "fp16"
    return M3Encoder.from_pretrained(str(bench_model_dir), device=bench_device, dtype=dtype, max_length=8192)


@pytest.fixture(scope="session")
def flag_model(request: pytest.FixtureRequest, bench_model_dir: Path, bench_device: str):
    """FlagEmbedding's BGEM3FlagModel on the same checkpoint and device, in-process (one device, no pool)."""
    if request.config.getoption("--no-baseline"):
        pytest.skip("--no-baseline")
    flag = pytest.importorskip("FlagEmbedding")
    model = flag.BGEM3FlagModel(str(bench_model_dir), use_fp16=bench_device != "cpu", devices=bench_device)
    assert len(model.target_devices) == 1
    yield model
    model.stop_self_pool()


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
        ours, ref = impls.get("milvus-embed"), impls.get("flagembedding")
        if ours and ref:
            if "tokens_per_s" in ours:
                tr.write_line(f"{group:>9} ratio          tokens/s x{ours['tokens_per_s'] / ref['tokens_per_s']:.2f}"
                              f"  texts/s x{ours['texts_per_s'] / ref['texts_per_s']:.2f}")
            if "p50_ms" in ours:
                tr.write_line(f"{group:>9} ratio          p50 x{ref['p50_ms'] / ours['p50_ms']:.2f} faster"
                              f"  p99 x{ref['p99_ms'] / ours['p99_ms']:.2f} faster")
