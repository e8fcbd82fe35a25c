#!/usr/bin/env bash
# Checks the deployment files without a container engine or a cluster (scripts/test.sh runs it):
#  - the Dockerfile with hadolint (scripts/install-hadolint.sh), its Rust release against the
#    workspace's rust-version, and the configuration the image carries with `evalstream validate`;
#  - the Helm chart deploy/helm/evalstream with `helm lint --strict` and `helm template`, for the
#    default values and for each values file that turns optional parts on (ci/*-values.yaml,
#    values-managed-kafka.yaml); each rendering goes through validate-manifests
#    (deploy/helm/validate: strict decoding into the Kubernetes, Prometheus Operator and KEDA API
#    types, and checks across the objects), and the configuration it mounts, with its scripts and
#    environment, through `evalstream validate`;
#  - that the chart's copy of the alert rules is deploy/prometheus/evalstream.rules.yaml, byte for
#    byte (helm reads no file outside the chart), and the rendered PrometheusRule holds them;
#  - that validate-manifests rejects a rendering with an unknown field and one whose rules differ,
#    so a check that stopped biting would show.
# Needs helm and validate-manifests (scripts/install-helm.sh) and hadolint; EVALSTREAM names the
# evalstream binary to validate with (default: the workspace's debug build, built if need be).
set -euo pipefail
cd "$(dirname "$0")/.."
hadolint=target/hadolint/venv/bin/hadolint
helm=target/helm/helm
validate=target/helm/validate-manifests
chart=deploy/helm/evalstream
rules=deploy/prometheus/evalstream.rules.yaml
if [ -n "${EVALSTREAM:-}" ]; then
  evalstream=$(realpath "$EVALSTREAM")
else
  cargo build -q --locked -p evalstream
  evalstream=$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')/debug/evalstream
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "-- Dockerfile"
"$hadolint" Dockerfile
rust_image=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
rust_min=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if [ "$(printf '%s\n%s\n' "$rust_min" "$rust_image" | sort -V | head -1)" != "$rust_min" ]; then
  echo "check-deploy: the Dockerfile builds with Rust $rust_image, older than rust-version $rust_min" >&2
  exit 1
fi
"$evalstream" validate deploy/docker/evalstream.yaml

echo "-- the chart's alert rules"
if ! cmp -s "$rules" "$chart/files/evalstream.rules.yaml"; then
  echo "check-deploy: $chart/files/evalstream.rules.yaml differs from $rules; copy it: cp $rules $chart/files/" >&2
  exit 1
fi

# Rendered for the oldest Kubernetes the chart supports (its kubeVersion): helm's own default
# is older than any the chart runs on.
kube=$(sed -n 's/^kubeVersion: ">=\([0-9.]*\).*/\1/p' "$chart/Chart.yaml")
# name, expected kinds, values files...
render() {
  local name=$1 expect=$2
  shift 2
  local args=()
  for values in "$@"; do args+=(-f "$values"); done
  echo "-- chart: $name"
  "$helm" lint --strict --quiet --kube-version "$kube" "$chart" "${args[@]}"
  "$helm" template evalstream "$chart" --namespace evalstream --kube-version "$kube" "${args[@]}" >"$work/$name.yaml"
  "$validate" -rules "$rules" -expect "$expect" -extract "$work/$name" <"$work/$name.yaml"
  # The configuration as the worker reads it: from its working directory, with its environment.
  # Only the environment the Deployment gives (env -i): values with no spaces, Secrets as placeholders.
  # shellcheck disable=SC2046
  (cd "$work/$name" && env -i $(cat env) "$evalstream" validate config/evalstream.yaml) \
    || { echo "check-deploy: the configuration rendered with $name is refused" >&2; exit 1; }
}
render defaults Deployment,Service,ConfigMap,ServiceAccount,PodDisruptionBudget
render everything Deployment,Service,ConfigMap,Secret,PodDisruptionBudget,ServiceMonitor,PrometheusRule,ScaledObject \
  "$chart/ci/everything-values.yaml"
render managed-kafka Deployment,Service,ConfigMap,ScaledObject,TriggerAuthentication "$chart/values-managed-kafka.yaml"
render otlp-only Deployment,Service,ConfigMap "$chart/ci/otlp-only-values.yaml"

echo "-- validate-manifests rejects what it should"
sed 's/^  selector:$/  replicass: 3\n  selector:/' "$work/defaults.yaml" >"$work/unknown-field.yaml"
if "$validate" <"$work/unknown-field.yaml" 2>"$work/rejected.txt" || ! grep -q 'unknown field "spec.replicass"' "$work/rejected.txt"; then
  echo "check-deploy: validate-manifests took a Deployment with an unknown field:" >&2
  cat "$work/rejected.txt" >&2
  exit 1
fi
sed 's/> 100000$/> 100001/' "$work/everything.yaml" >"$work/other-rules.yaml"
if "$validate" -rules "$rules" <"$work/other-rules.yaml" 2>"$work/rejected.txt" || ! grep -q 'does not hold the rules' "$work/rejected.txt"; then
  echo "check-deploy: validate-manifests took a PrometheusRule that differs from $rules:" >&2
  cat "$work/rejected.txt" >&2
  exit 1
fi
echo "deploy checks passed"
