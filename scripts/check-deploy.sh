#!/usr/bin/env bash
# Offline checks of the deployment files (run by scripts/test.sh; needs no cluster, no Docker engine):
#   1. the generated files of compose/kubernetes/base are up to date (scripts/gen-kubernetes.sh --check:
#      prometheusrule.yaml from compose/prometheus/alerts.yml, the topology.toml copy);
#   2. compose/kubernetes/base and every overlay render with `kubectl kustomize`, and every rendered
#      object is valid against the Kubernetes schemas (kubernetes-validate from PyPI, strict), the
#      PrometheusRule and PodMonitor against their own schemas (+ promtool), and the objects agree
#      with each other (scripts/validate-manifests.py --rendered); secret.example.yaml too.
#      Without a kubectl whose kustomize is v4 or newer, the raw files of the base are validated
#      instead and the overlays are skipped, with a line saying so;
#   3. `docker-compose -f compose/docker-compose.yml config -q` (Debian's docker-compose package), and
#      `promtool check config` of the compose Prometheus' scrape configuration.
# scripts/setup.sh installs kubernetes-validate and docker-compose. Exit 1 at the first failed step.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL="${KUBECTL:-kubectl}"
K8S_DIR=compose/kubernetes
COMPOSE_FILE=compose/docker-compose.yml

step() { printf -- '--> %s\n' "$*"; }
die() {
    printf -- '--> FAILED: %s\n' "$*" >&2
    exit 1
}

python3 -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null ||
    die "python3 cannot import kubernetes_validate (run scripts/setup.sh: pip install kubernetes-validate)"
command -v docker-compose >/dev/null 2>&1 ||
    die "docker-compose not found (run scripts/setup.sh: apt-get install docker-compose)"

out="$(mktemp -d)"
trap 'rm -rf "${out}"' EXIT

step "generated files up to date (scripts/gen-kubernetes.sh --check)"
scripts/gen-kubernetes.sh --check || die "generated Kubernetes files are stale"

# secret.example.yaml documents the operator's Secret; it must never be applied by kustomize.
if grep -Eq '^[[:space:]]*-[[:space:]]*secret\.example\.yaml' "${K8S_DIR}/base/kustomization.yaml"; then
    die "${K8S_DIR}/base/kustomization.yaml lists secret.example.yaml"
fi

# kubectl's kustomize must know `replicas`, `patches` and directory resources: v4 or newer
# (kubectl 1.24+ prints its version; Debian's kubernetes-client 1.20 has kustomize v2).
kustomize_version=""
found="not found"
if command -v "${KUBECTL}" >/dev/null 2>&1; then
    kustomize_version="$("${KUBECTL}" version --client -o json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get("kustomizeVersion", ""))' 2>/dev/null || true)"
    found="kustomize ${kustomize_version:-older than v4 (no version printed)}"
fi
if [[ "${kustomize_version}" =~ ^v([0-9]+)\. ]] && ((BASH_REMATCH[1] >= 4)); then
    for dir in "${K8S_DIR}/base" "${K8S_DIR}"/overlays/*/; do
        dir="${dir%/}"
        name="$(basename "${dir}")"
        step "kubectl kustomize ${dir} (kustomize ${kustomize_version}) + validate-manifests"
        "${KUBECTL}" kustomize "${dir}" >"${out}/${name}.yaml" 2>"${out}/${name}.err" || {
            cat "${out}/${name}.err" >&2
            die "kubectl kustomize ${dir}"
        }
        python3 scripts/validate-manifests.py --rendered "${out}/${name}.yaml" \
            "${K8S_DIR}/base/secret.example.yaml" || die "manifests of ${dir}"
    done
else
    step "no kubectl with kustomize v4+ (${KUBECTL}: ${found}): validating the raw files of ${K8S_DIR}/base; overlays NOT rendered"
    raw=()
    for f in "${K8S_DIR}"/base/*.yaml; do
        [[ "$(basename "${f}")" == kustomization.yaml ]] || raw+=("${f}")
    done
    python3 scripts/validate-manifests.py "${raw[@]}" || die "raw manifests of ${K8S_DIR}/base"
fi

step "docker-compose -f ${COMPOSE_FILE} config -q ($(docker-compose version --short 2>/dev/null || echo '?'))"
docker-compose -f "${COMPOSE_FILE}" config -q || die "${COMPOSE_FILE}"

if command -v promtool >/dev/null 2>&1; then
    step "promtool check config compose/prometheus/prometheus.yml (the compose Prometheus)"
    promtool check config compose/prometheus/prometheus.yml >"${out}/promtool.log" 2>&1 || {
        cat "${out}/promtool.log" >&2
        die "compose/prometheus/prometheus.yml"
    }
else
    step "promtool not installed: compose/prometheus/prometheus.yml not checked"
fi

step "deployment files OK"
