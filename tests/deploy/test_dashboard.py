"""The Grafana dashboard (deploy/grafana) and its compose profile: every series a panel queries exists on the
``/metrics`` of a running sidecar, with the labels the queries group and filter by. A panel over a renamed
metric or label draws nothing and says nothing, so this is checked against the real thing."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from milvus_embed_ext.errors import InvalidArgument
from tests._sidecar import running_sidecar

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "milvus-embed-dashboard.json"
# Labels Prometheus adds when scraping, or that PromQL makes itself: not on the sidecar's own samples.
ADDED_LABELS = {"instance", "job", "le"}
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "min", "max", "clamp_min", "avg", "without"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, and of the template variables."""
    dash = _dashboard()
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["definition"]))
    return out


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(mee_[A-Za-z0-9_]+)", expr))


def _selector_labels(expr: str) -> dict[str, set[str]]:
    """metric -> label names used in its ``{...}`` matchers."""
    out: dict[str, set[str]] = {}
    for metric, matchers in re.findall(r"\b(mee_[A-Za-z0-9_]+)\{([^}]*)\}", expr):
        out.setdefault(metric, set()).update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return out


def _grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    return labels


def _legend_labels(dashboard: dict[str, Any]) -> list[tuple[str, str, set[str]]]:
    return [(p["title"], t["expr"], set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", t.get("legendFormat", ""))))
            for p in dashboard["panels"] for t in p.get("targets", [])]


# ------------------------------------------------------------------ the file itself (no server)


def test_dashboard_is_importable_grafana_json() -> None:
    dash = _dashboard()
    assert dash["uid"] == "milvus-embed" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    queries = [p for p in dash["panels"] if p["type"] != "row"]
    assert queries and all(p.get("targets") and p["datasource"]["uid"] == "${datasource}" for p in queries)
    for title, expr in _exprs():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), title
        assert _metric_names(expr), f"{title}: queries no mee_* series"


def test_dashboard_covers_what_the_issue_asks() -> None:
    queried = set().union(*(_metric_names(e) for _, e in _exprs()))
    for needed in ("mee_requests_total", "mee_request_latency_seconds_bucket", "mee_search_stage_seconds_bucket",
                   "mee_queue_depth_texts", "mee_batch_texts_sum", "mee_encoded_tokens_total",
                   "mee_milvus_call_seconds_bucket", "mee_milvus_up"):
        assert needed in queried, needed
    exprs = " ".join(e for _, e in _exprs())
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}" in exprs


def test_compose_monitoring_profile_is_off_by_default_and_mounts_existing_files() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], f"{name} must stay off by default"
        for volume in services[name]["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / "docker" / source).resolve().exists(), volume
    assert "sidecar:9464" in (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    assert services["sidecar"]["environment"]["MEE_METRICS_LISTEN"].endswith(":9464")
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------ against a running sidecar


@pytest.fixture(scope="module")
def scraped(tiny_model_dir, tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, from /metrics after embeds, upserts, searches and one rejected request."""
    with running_sidecar(tiny_model_dir, tmp_path_factory.mktemp("dashboard")) as srv:
        with srv.client() as c:
            c.upsert([{"id": f"d{i}", "text": f"document number {i} about rivers"} for i in range(6)])
            c.embed(["hello", "world"])
            for query in ("rivers", "number three"):
                c.hybrid_search(query, top_k=3)
            with pytest.raises(InvalidArgument):
                c.hybrid_search("   ")
        text = urllib.request.urlopen(srv.metrics, timeout=10).read().decode()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(dict(s.labels))
    return samples


@pytest.mark.e2e
def test_every_series_and_label_the_dashboard_queries_exists(scraped) -> None:
    missing = []
    for title, expr in _exprs():
        for metric in sorted(_metric_names(expr)):
            if metric not in scraped:
                missing.append(f"{title}: {metric}")
                continue
            have = set().union(*(set(labels) for labels in scraped[metric]))
            for label in _selector_labels(expr).get(metric, set()) - ADDED_LABELS:
                if label not in have:
                    missing.append(f"{title}: label {label} of {metric}")
        grouped = _grouping_labels(expr) - ADDED_LABELS
        have = set().union(*(set(labels) for m in _metric_names(expr) for labels in scraped.get(m, [])))
        missing += [f"{title}: grouping label {label}" for label in sorted(grouped - have)]
    for title, expr, legend in _legend_labels(_dashboard()):
        have = set().union(*(set(labels) for m in _metric_names(expr) for labels in scraped.get(m, []))) | ADDED_LABELS
        missing += [f"{title}: legend label {label}" for label in sorted(legend - have)]
    assert not missing, "dashboard queries series or labels the sidecar does not expose:\n" + "\n".join(missing)


@pytest.mark.e2e
def test_new_series_carry_real_values(scraped) -> None:
    stages = {labels["stage"] for labels in scraped["mee_search_stage_seconds_count"]}
    assert {"encode", "total"} <= stages, stages
    ops = {(labels["op"], labels["outcome"]) for labels in scraped["mee_milvus_call_seconds_count"]}
    assert ("upsert", "ok") in ops and any(op in {"search", "query", "hybrid_search"} for op, _ in ops), ops
    codes = {(labels["rpc"], labels["code"]) for labels in scraped["mee_requests_total"]}
    assert any(code == "INVALID_ARGUMENT" for _, code in codes), codes
    assert "mee_milvus_up" in scraped and "mee_queue_depth_texts" in scraped
