#!/usr/bin/env bash
# Higress on a kind cluster with the AI gateway in front of two mock vLLM servers, checked end to end.
#
#   bash e2e/kind/run.sh                  # create the cluster, deploy, check, tear down
#   bash e2e/kind/run.sh --check-prereqs  # only say whether this machine can run it
#   KEEP_CLUSTER=1 bash e2e/kind/run.sh   # leave the cluster and registry up afterwards
#
# Needs docker (with a running engine), kind, helm and kubectl; where one is missing it says which and
# exits 0 (skipped). Steps: build the plugin and its OCI image layout (./dev oci); build the mock vLLM
# image; create the kind cluster; start a registry container on the kind network and copy the OCI layout
# into it with oras (run from its image); install Higress with its Helm chart; apply manifests.yaml
# (mock Deployments + Services qwen2-1-5b-lb / gemma-2-2b-lb on 8080, Ingresses, the WasmPlugin pulling
# oci://<registry>/ai-gateway:1.0.0); port-forward the gateway, its Envoy admin and qwen's mock; run
# e2e/kind/check.py (routing, models list, alias split, streaming, fallback, metrics).
# Env: CLUSTER (aigw-e2e), HIGRESS_CHART_VERSION (default: the chart's latest), ORAS_IMAGE, REGISTRY_IMAGE.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-aigw-e2e}"
REGISTRY="${CLUSTER}-registry"
MOCK_IMAGE="aigw-e2e/mock-vllm:dev"
ORAS_IMAGE="${ORAS_IMAGE:-ghcr.io/oras-project/oras:v1.2.2}"
REGISTRY_IMAGE="${REGISTRY_IMAGE:-registry:2}"
TAG="1.0.0"
GW_PORT=18080 ADMIN_PORT=19080 MOCK_PORT=18181

log() { printf '\n== %s\n' "$*" >&2; }

case "${1:-}" in
  ""|--check-prereqs) ;;
  *) echo "usage: bash e2e/kind/run.sh [--check-prereqs]" >&2; exit 2 ;;
esac

missing_prereqs() {
  local tool
  for tool in docker kind helm kubectl; do
    command -v "$tool" >/dev/null 2>&1 || echo "$tool"
  done
  # the docker client alone is not enough: the engine must answer
  local limit=()
  command -v timeout >/dev/null 2>&1 && limit=(timeout 60)
  if command -v docker >/dev/null 2>&1 && ! "${limit[@]+"${limit[@]}"}" docker info >/dev/null 2>&1; then
    echo "a running Docker engine ('docker info' failed)"
  fi
}

missing="$(missing_prereqs | paste -sd, - | sed 's/,/, /g')"
if [[ -n "$missing" ]]; then
  echo "kind e2e: skipping, missing: $missing (needs docker with a running engine, kind, helm, kubectl)"
  exit 0
fi
if [[ "${1:-}" == "--check-prereqs" ]]; then
  echo "kind e2e: all prerequisites present (docker engine, kind, helm, kubectl)"
  exit 0
fi

PIDS=()
CTX=""
cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$pid" 2>/dev/null || true; done
  [[ -n "$CTX" ]] && rm -rf "$CTX"
  if [[ "${KEEP_CLUSTER:-}" == 1 ]]; then
    echo "kept: kind cluster $CLUSTER, registry container $REGISTRY" >&2
    return
  fi
  log "tearing down"
  kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  docker rm -f "$REGISTRY" >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "building the plugin and its OCI image layout"
"$REPO/dev" oci "$TAG"
PY="$REPO/.venv/bin/python"

log "building $MOCK_IMAGE"
CTX="$(mktemp -d)"
mkdir -p "$CTX/e2e/kind"
cp "$REPO/e2e/__init__.py" "$CTX/e2e/"
cp -r "$REPO/e2e/mock_vllm" "$CTX/e2e/"
rm -rf "$CTX/e2e/mock_vllm/__pycache__"
cp "$REPO/e2e/kind/__init__.py" "$REPO/e2e/kind/mock_pod.py" "$REPO/e2e/kind/Dockerfile" "$CTX/e2e/kind/"
docker build -q -t "$MOCK_IMAGE" -f "$CTX/e2e/kind/Dockerfile" "$CTX"

log "creating kind cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --wait 180s
kind load docker-image "$MOCK_IMAGE" --name "$CLUSTER"

log "pushing the plugin image to a registry on the kind network"
docker rm -f "$REGISTRY" >/dev/null 2>&1 || true
docker run -d --name "$REGISTRY" --network kind "$REGISTRY_IMAGE" >/dev/null
docker run --rm --network kind -v "$REPO/dist/oci:/oci:ro" "$ORAS_IMAGE" \
  cp --to-plain-http --from-oci-layout "/oci/ai-gateway:$TAG" "$REGISTRY:5000/ai-gateway:$TAG"
# Pods reach the registry by its address on the kind network (Higress falls back to plain HTTP).
REGISTRY_IP="$(docker inspect -f '{{(index .NetworkSettings.Networks "kind").IPAddress}}' "$REGISTRY")"
PLUGIN_URL="oci://$REGISTRY_IP:5000/ai-gateway:$TAG"

log "installing Higress"
helm repo add higress.io https://higress.io/helm-charts --force-update >/dev/null
helm install higress higress.io/higress -n higress-system --create-namespace \
  --set global.local=true --set global.o11y.enabled=false \
  ${HIGRESS_CHART_VERSION:+--version "$HIGRESS_CHART_VERSION"} --wait --timeout 15m

log "deploying the mocks, Ingresses and the WasmPlugin ($PLUGIN_URL)"
sed "s|__PLUGIN_URL__|$PLUGIN_URL|" "$REPO/e2e/kind/manifests.yaml" | kubectl apply -f -
kubectl -n aigw-e2e rollout status deploy/qwen2-1-5b deploy/gemma-2-2b --timeout=300s

log "port-forwarding the gateway (:$GW_PORT), its admin (:$ADMIN_PORT) and qwen's mock (:$MOCK_PORT)"
kubectl -n higress-system port-forward svc/higress-gateway "$GW_PORT:80" >/dev/null 2>&1 & PIDS+=("$!")
kubectl -n higress-system port-forward deploy/higress-gateway "$ADMIN_PORT:15000" >/dev/null 2>&1 & PIDS+=("$!")
kubectl -n aigw-e2e port-forward svc/qwen2-1-5b-lb "$MOCK_PORT:8080" >/dev/null 2>&1 & PIDS+=("$!")
sleep 3

log "checking routing, aliases, fallback and metrics through Higress"
cd "$REPO"
PYTHONPATH="$REPO/plugin:$REPO/build:$REPO" "$PY" -m e2e.kind.check --url "http://127.0.0.1:$GW_PORT" \
  --admin "http://127.0.0.1:$ADMIN_PORT" --qwen-control "http://127.0.0.1:$MOCK_PORT" --wait 300
