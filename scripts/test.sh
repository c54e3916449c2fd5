#!/usr/bin/env bash
# The one test command: services up, format, lints, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# One shared target dir across clones (CI runs in a fresh clone): builds are the slow part.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/messages-broker/target}"

echo "==> setup"
scripts/setup.sh

echo "==> promtool check rules / test rules (compose/prometheus)"
promtool check rules compose/prometheus/alerts.yml
promtool test rules compose/prometheus/alerts.test.yml

echo "==> deployment files: Kubernetes manifests, PrometheusRule drift, docker-compose config (scripts/check-deploy.sh)"
scripts/check-deploy.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --all-targets --features fault-tests --locked -- -D warnings

echo "==> cargo test"
cargo test --all-targets --features fault-tests --locked -- --test-threads="${TEST_THREADS:-4}"
echo "==> schemathesis against /api/openapi.json (scripts/schemathesis.sh)" && scripts/schemathesis.sh

echo "==> topology check of the shipped topology.toml"
cargo run --quiet --locked -- topology check topology.toml
