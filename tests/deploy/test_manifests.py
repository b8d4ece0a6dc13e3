"""Deployment files: compose, Dockerfiles and Kubernetes manifests parse and keep their promises.

No Docker engine or cluster is needed: YAML is parsed and checked structurally; where the tools exist
(`docker-compose`/`docker compose`, `kubectl`) the files are also validated / rendered by them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "k8s"
GRPC_PORT = 50051


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------- compose


def test_compose_pins_every_image_and_runs_milvus_2_6() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        image = svc.get("image", "")
        assert image and ":" in image.rsplit("/", 1)[-1], f"{name}: image must carry a tag"
        assert not image.endswith(":latest"), name
    assert {"etcd", "minio", "standalone", "sidecar", "migrate"} <= set(services)
    assert re.fullmatch(r"milvusdb/milvus:v2\.6\.\d+", services["standalone"]["image"])
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")


def test_compose_sidecar_waits_for_milvus_and_schema_and_probes_grpc_health() -> None:
    sidecar = _compose()["services"]["sidecar"]
    deps = sidecar["depends_on"]
    assert deps["standalone"]["condition"] == "service_healthy"
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert sidecar["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "milvus_embed_ext.healthcheck"]
    env = sidecar["environment"]
    assert env["MEE_MILVUS_URI"] == "http://standalone:19530"
    assert env["MEE_LISTEN"].endswith(f":{GRPC_PORT}")
    assert sidecar["build"]["dockerfile"] == "docker/Dockerfile.cpu"


def test_gpu_override_reserves_a_gpu_and_switches_image() -> None:
    gpu = yaml.safe_load((DOCKER / "docker-compose.gpu.yml").read_text(encoding="utf-8"))["services"]["sidecar"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["MEE_DEVICE"] == "cuda"


def _compose_tool() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(_compose_tool() is None, reason="needs docker-compose or the docker compose plugin")
def test_validate_script_accepts_the_files_and_rejects_a_broken_one(tmp_path: Path) -> None:
    run = subprocess.run(["bash", str(DOCKER / "validate.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin:/usr/local/bin", "MEE_VALIDATE_NO_INSTALL": "1"}, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok    docker-compose.yml") == 2
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((DOCKER / "docker-compose.yml").read_text().replace("service_healthy", "service_ready"))
    tool = _compose_tool()
    assert tool is not None
    bad = subprocess.run([*tool, "-f", str(broken), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


# ------------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_are_multistage_nonroot_with_grpc_healthcheck(name: str) -> None:
    text = (DOCKER / name).read_text(encoding="utf-8")
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", text, flags=re.M)
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    assert "COPY --from=build" in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the runtime must not run as root"
    assert re.search(r"^ENV\s.*HF_HOME=/models", text, flags=re.M | re.S)
    assert re.search(r'^VOLUME\s+\[.*"/models"', text, flags=re.M)
    health = re.search(r"^HEALTHCHECK\s.*?CMD\s+(\[.*?\])", text, flags=re.M | re.S)
    assert health and "milvus_embed_ext.healthcheck" in health.group(1)
    assert f"EXPOSE {GRPC_PORT}" in text


def test_cpu_image_installs_the_cpu_torch_wheel() -> None:
    text = (DOCKER / "Dockerfile.cpu").read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in text
    assert "constraints.txt" in text


def test_dockerfile_copies_exist() -> None:
    """Every path a Dockerfile COPYs from the context exists in the repository (README.md is the lead's)."""
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        for line in (DOCKER / name).read_text(encoding="utf-8").splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for src in line.split()[1:-1]:
                    if src != "README.md":
                        assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"


# ------------------------------------------------------------------------------------- Kubernetes


def _k8s_docs() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in _load_all(path):
            docs[f"{path.relative_to(K8S)}:{doc.get('kind')}:{doc.get('metadata', {}).get('name')}"] = doc
    return docs


def _base_deployment() -> dict[str, Any]:
    return _load_all(K8S / "base" / "deployment.yaml")[0]


def test_every_manifest_parses_and_has_kind_and_name() -> None:
    docs = _k8s_docs()
    assert len(docs) >= 10
    for key, doc in docs.items():
        if doc.get("kind") == "Kustomization":
            continue
        meta = doc.get("metadata", {})
        assert doc.get("apiVersion") and doc.get("kind"), key
        assert meta.get("name") or meta.get("generateName"), key


def test_kustomization_lists_existing_files() -> None:
    for kfile in K8S.rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text(encoding="utf-8"))
        for res in k.get("resources", []):
            assert (kfile.parent / res).exists(), f"{kfile}: {res}"
        for patch in k.get("patches", []):
            assert (kfile.parent / patch["path"]).is_file(), f"{kfile}: {patch}"


def test_probes_are_native_grpc_on_the_serving_port() -> None:
    container = _base_deployment()["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == GRPC_PORT
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert set(container[probe]) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"grpc"}, probe
        assert container[probe]["grpc"]["port"] == GRPC_PORT
    # readiness: the whole sidecar (model + Milvus); liveness: the process and model only.
    assert container["readinessProbe"]["grpc"]["service"] == ""
    assert container["livenessProbe"]["grpc"]["service"] == "milvus_embed_ext.v1.Embedder"


def test_liveness_service_name_matches_the_proto() -> None:
    from milvus_embed_ext.wire._generated import embedder_pb2

    container = _base_deployment()["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["grpc"]["service"] == \
        embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name


def test_pods_run_unprivileged() -> None:
    spec = _base_deployment()["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    sc = spec["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/models", "/tmp"} <= mounts, "a read-only root needs writable model cache and tmp"


def test_services_select_the_pods_and_the_headless_one_is_headless() -> None:
    labels = _base_deployment()["spec"]["template"]["metadata"]["labels"]
    assert _base_deployment()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for name in ("service.yaml", "service-headless.yaml"):
        svc = _load_all(K8S / "base" / name)[0]
        assert svc["spec"]["selector"].items() <= labels.items(), name
        grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == GRPC_PORT and grpc_port["targetPort"] == "grpc"
    headless = _load_all(K8S / "base" / "service-headless.yaml")[0]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"].get("publishNotReadyAddresses", False) is False


def test_gpu_overlay_requests_whole_gpus() -> None:
    patch = _load_all(K8S / "overlays" / "gpu" / "deployment-gpu.yaml")[0]
    res = patch["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    cm = _load_all(K8S / "overlays" / "gpu" / "configmap-gpu.yaml")[0]
    assert cm["data"]["MEE_DEVICE"] == "cuda"


def test_configmap_keys_are_real_settings() -> None:
    from milvus_embed_ext.config import setting_docs

    envs = {env for _n, env, _d, _doc in setting_docs()}
    for path in (K8S / "base" / "configmap.yaml", K8S / "overlays" / "gpu" / "configmap-gpu.yaml"):
        for key in _load_all(path)[0]["data"]:
            assert key in envs, f"{path.name}: {key} is not a setting (see docs/configuration.md)"
    compose_env = _compose()["services"]["sidecar"]["environment"]
    for key in compose_env:
        assert key in envs, f"docker-compose.yml: {key} is not a setting"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize built in)")
def test_kustomize_renders_base_and_gpu_overlay() -> None:
    def render(path: Path) -> list[dict[str, Any]]:
        out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]

    base = render(K8S / "base")
    kinds = {d["kind"] for d in base}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert all(d["metadata"].get("namespace") == "milvus-embed" for d in base if d["kind"] != "Namespace")
    gpu = render(K8S / "overlays" / "gpu")
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in gpu}
    dep = next(d for d in gpu if d["kind"] == "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith("-cuda")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["grpc"]["port"] == GRPC_PORT  # the patch kept the probes
    cm = next(d for d in gpu if d["kind"] == "ConfigMap")
    assert cm["data"]["MEE_DEVICE"] == "cuda" and cm["data"]["MEE_MILVUS_URI"].startswith("http")


# ------------------------------------------------------------------------------- sharded backfills
BACKFILL = K8S / "backfill"


def _backfill_params() -> dict[str, str]:
    k = yaml.safe_load((BACKFILL / "kustomization.yaml").read_text(encoding="utf-8"))
    gen = next(g for g in k["configMapGenerator"] if g["name"] == "backfill-params")
    return dict(lit.split("=", 1) for lit in gen["literals"])


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion; an unknown variable fails the test (Kubernetes would pass it literally)."""
    def sub(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is not defined for the container"
        return env[m.group(1)]

    return [re.sub(r"\$\((\w+)\)", sub, a) for a in args]


def _job_container(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    job = _load_all(BACKFILL / name)[0]
    return job, job["spec"]["template"]["spec"]["containers"][0]


def _parse_cli(args: list[str]) -> Any:
    from milvus_embed_ext.cli import build_parser

    return build_parser().parse_args(args)


def test_backfill_workers_are_an_indexed_job_of_migrate_work() -> None:
    params = _backfill_params()
    job, container = _job_container("workers-job.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(params["WORKERS"])
    assert spec["backoffLimit"] >= spec["completions"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert int(params["SHARDS"]) >= 8 * int(params["WORKERS"]), "far more shards than workers"
    env = {e["name"]: "0" for e in container["env"]} | params
    index = next(e for e in container["env"] if e["name"] == "WORKER_INDEX")
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    args = _parse_cli(_expand(container["args"], env | {"REVISION": "0003_reencode"}))
    assert (args.command, args.migrate_command, args.revision) == ("migrate", "work", "0003_reencode")
    assert args.workers == int(params["WORKERS"]) and args.shards == int(params["SHARDS"])
    assert args.lease_ttl == float(params["LEASE_TTL_S"])
    refs = {r.get("configMapRef", {}).get("name") for r in container["envFrom"]}
    assert {"milvus-embed-config", "backfill-params"} <= refs


def test_backfill_finish_step_upgrades_to_the_same_revision_with_the_same_shards() -> None:
    params = _backfill_params()
    job, container = _job_container("finish-job.yaml")
    assert job["spec"].get("completionMode") != "Indexed" and job["spec"]["completions"] == 1
    args = _parse_cli(_expand(container["args"], params | {"REVISION": "0003_reencode"}))
    assert (args.migrate_command, args.target, args.shards) == ("upgrade", "0003_reencode", int(params["SHARDS"]))
    assert args.lock_wait >= 600, "the finish step waits while a worker opens the shard plan"


def test_backfill_gpu_overlay_requests_whole_gpus_for_every_job() -> None:
    from milvus_embed_ext.config import setting_docs

    envs = {env for _n, env, _d, _doc in setting_docs()}
    overlay = K8S / "overlays" / "backfill-gpu"
    k = yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))
    patched = set()
    for patch in k["patches"]:
        doc = _load_all(overlay / patch["path"])[0]
        container = doc["spec"]["template"]["spec"]["containers"][0]
        res = container["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
        mee = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("MEE_")}
        assert mee["MEE_DEVICE"] == "cuda" and set(mee) <= envs, f"{patch['path']}: not settings: {set(mee) - envs}"
        patched.add(doc["metadata"]["name"])
    assert patched == {_job_container(n)[0]["metadata"]["name"] for n in ("workers-job.yaml", "finish-job.yaml")}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize built in)")
def test_kustomize_renders_the_backfill_and_its_gpu_overlay() -> None:
    for path in (BACKFILL, K8S / "overlays" / "backfill-gpu"):
        out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
        assert set(jobs) == {"milvus-embed-backfill", "milvus-embed-backfill-finish"}
        cm = next(d for d in docs if d["kind"] == "ConfigMap")
        for job in jobs.values():
            assert job["metadata"]["namespace"] == "milvus-embed"
            refs = [r["configMapRef"]["name"] for r in job["spec"]["template"]["spec"]["containers"][0]["envFrom"]
                    if "configMapRef" in r]
            assert cm["metadata"]["name"] in refs  # the generated name (with its hash) is wired in
        if "gpu" in path.name:
            c = jobs["milvus-embed-backfill"]["spec"]["template"]["spec"]["containers"][0]
            assert c["image"].endswith("-cuda") and c["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert {"WORKER_INDEX", "MEE_DEVICE"} <= {e["name"] for e in c["env"]}
