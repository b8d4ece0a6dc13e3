#!/usr/bin/env bash
# Validate the deployment files offline (no Docker engine, no cluster): the compose files (base alone and
# base + GPU override) and, when kubectl is installed, the Kubernetes kustomizations under deploy/k8s.
#
#   bash docker/validate.sh
#
# Uses `docker compose` (v2 plugin) when present, else `docker-compose` (v1, e.g. Debian's 1.29.2 package).
# When neither is installed and we are root on a Debian/Ubuntu machine, installs `docker-compose` with apt
# (set MEE_VALIDATE_NO_INSTALL=1 to forbid that). Exit 0 when every file set validates.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

find_compose() {
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose"
  fi
}

compose="$(find_compose)"
if [ -z "$compose" ]; then
  if [ "${MEE_VALIDATE_NO_INSTALL:-0}" != "1" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "validate.sh: no compose tool found; installing Debian's docker-compose (apt-get)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
    compose="$(find_compose)"
  fi
fi
if [ -z "$compose" ]; then
  echo "validate.sh: neither 'docker compose' nor 'docker-compose' is installed;" \
       "install one (e.g. apt-get install docker-compose) and rerun" >&2
  exit 2
fi

# Interpolation must not depend on the caller's shell: validate with the defaults written in the files.
unset MEE_MODEL MEE_API_KEYS MEE_BIND MILVUS_BIND MINIO_ACCESS_KEY MINIO_SECRET_KEY MEE_DTYPE || true

status=0
check() {
  local label="$1"; shift
  local args=()
  for f in "$@"; do args+=(-f "$f"); done
  if out="$($compose "${args[@]}" config -q 2>&1)"; then
    echo "ok    $label ($compose)"
  else
    echo "FAIL  $label" >&2
    echo "$out" >&2
    status=1
  fi
}

check "docker-compose.yml" docker-compose.yml
check "docker-compose.yml + docker-compose.gpu.yml" docker-compose.yml docker-compose.gpu.yml

# Kubernetes manifests: render both kustomizations (offline; catches bad patches and references).
# Schema validation needs a cluster (kubectl apply --dry-run=server) and is not done here.
k8s="$here/../deploy/k8s"
if [ -d "$k8s" ]; then
  if command -v kubectl >/dev/null 2>&1; then
    for dir in base overlays/gpu; do
      if out="$(kubectl kustomize "$k8s/$dir" 2>&1 >/dev/null)"; then
        echo "ok    deploy/k8s/$dir (kubectl kustomize)"
      else
        echo "FAIL  deploy/k8s/$dir" >&2
        echo "$out" >&2
        status=1
      fi
    done
  else
    echo "skip  deploy/k8s (kubectl not installed; tests/deploy checks the manifests' structure)"
  fi
fi
exit $status
