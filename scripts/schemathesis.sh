#!/usr/bin/env bash
# Property-based API testing with schemathesis (issue 6, hostile input): generates requests from
# the service's own OpenAPI document (/api/openapi.json), valid and invalid ones, sends them with
# an admin token, and fails when an answer is a server error (5xx) or is not what the document
# says (status code, content type, headers, body schema), or when an operation that declares
# security answers without a token.
#
# The service under test runs on its own: a free port, its own RabbitMQ vhost (created here and
# deleted at the end, so even a generated purge can only touch this run's queues), its own
# database (messages_broker_test_schemathesis, recreated), its own topology and admin client.
#
#   scripts/schemathesis.sh              build (debug) if needed, run, clean up
#
# Environment (all optional):
#   SCHEMATHESIS_MAX_EXAMPLES   examples per operation and phase (default 50)
#   SCHEMATHESIS_SEED           hypothesis seed (default 6; set another one to explore)
#   SCHEMATHESIS_TIME_LIMIT     seconds for the schemathesis run (default 600)
#   SCHEMATHESIS_PORT           HTTP port of the service (default: a free one)
#   SCHEMATHESIS_PROFILE        debug (default, shared with cargo test) or release
#   SCHEMATHESIS_CASSETTE       file to record every request and answer in (VCR YAML), to see
#                               exactly what a failure sent (the report's curl line is sanitized)
#   RABBITMQ_MANAGEMENT_URL, RABBITMQ_USER, RABBITMQ_PASSWORD   default http://127.0.0.1:15672, guest, guest
#   CARGO_TARGET_DIR            default ~/.cache/messages-broker/target
#
# Needs schemathesis 3.39 with hypothesis < 6.140 (scripts/setup.sh installs both with pip).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
SEED="${SCHEMATHESIS_SEED:-6}"
TIME_LIMIT="${SCHEMATHESIS_TIME_LIMIT:-600}"
PROFILE="${SCHEMATHESIS_PROFILE:-debug}"
DB=messages_broker_test_schemathesis
VHOST=messages_broker_schemathesis

SERVICE_BIN="${CARGO_TARGET_DIR}/${PROFILE}/messages-broker"
WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/messages-broker-schemathesis.XXXXXX")"
SERVICE_LOG="${WORK_DIR}/service.log"
CONFIG_FILE="${WORK_DIR}/client.toml"
TOPOLOGY_FILE_PATH="${WORK_DIR}/topology.toml"
HOOKS_MODULE=mb_schemathesis_hooks

cleanup() {
    local rc=$?
    stop_service
    # Deleting the vhost deletes every queue and exchange the run declared or generated.
    management DELETE "/api/vhosts/${VHOST}" >/dev/null
    db "DROP DATABASE IF EXISTS ${DB}" >/dev/null 2>&1 || true
    rm -rf "${WORK_DIR}"
    exit "${rc}"
}
trap_cleanup

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

prepare() {
    python3 -m schemathesis.cli --version >/dev/null 2>&1 ||
        die "schemathesis is not installed (run scripts/setup.sh, or: python3 -m pip install 'schemathesis==3.39.16' 'hypothesis<6.140')"
    log "$(python3 -m schemathesis.cli --version)"

    # Always built, so the run never tests a stale binary. The features are scripts/test.sh's,
    # so after its cargo test this is a no-op (fault-tests only gates test files).
    log "build (${PROFILE}): messages-broker"
    local flags=(--quiet --locked --bin messages-broker --features fault-tests)
    [[ "${PROFILE}" == release ]] && flags+=(--release)
    cargo build "${flags[@]}"

    # The platform's shape in small: a topic exchange, a fanout, dead letters. No rate limit, so
    # generated publishes are never throttled into 429s that hide other answers.
    cat >"${TOPOLOGY_FILE_PATH}" <<'EOF'
[queue_defaults]
max_length = 1000
overflow = "reject-publish"
dead_letter_exchange = "st_dead_letters"

[dead_letter_queues]
message_ttl = 60000

[[exchanges]]
name = "st_orders_exchange"
type = "topic"

[[exchanges]]
name = "st_events"
type = "fanout"

[[exchanges]]
name = "st_dead_letters"
type = "direct"
internal = true

[[queues]]
name = "st_orders_queue"

[[bindings]]
exchange = "st_orders_exchange"
queue = "st_orders_queue"
routing_key = "orders.#"

[[bindings]]
exchange = "st_events"
queue = "st_orders_queue"
EOF
    "${SERVICE_BIN}" topology check "${TOPOLOGY_FILE_PATH}" >/dev/null || die "the run's topology is not valid"

    log "RabbitMQ vhost ${VHOST}, database ${DB} (both fresh)"
    management DELETE "/api/vhosts/${VHOST}" >/dev/null
    local status
    status="$(management PUT "/api/vhosts/${VHOST}" '{"description":"scripts/schemathesis.sh"}')"
    [[ "${status}" == 201 || "${status}" == 204 ]] || die "cannot create vhost ${VHOST} (management API answered ${status})"
    status="$(management PUT "/api/permissions/${VHOST}/${RABBIT_USER}" '{"configure":".*","write":".*","read":".*"}')"
    [[ "${status}" == 201 || "${status}" == 204 ]] || die "cannot grant ${RABBIT_USER} on ${VHOST} (${status})"
    db "DROP DATABASE IF EXISTS ${DB}; CREATE DATABASE ${DB} CHARACTER SET utf8mb4" ||
        die "cannot create ${DB} (run scripts/setup.sh: it grants messages_broker_test_% databases)"

    # Generated header values keep to what HTTP allows (RFC 9110 field-value: no control
    # character but tab, no whitespace at either end). With a control character, hyper refuses the request itself with a
    # bare 400 before the service sees it: that would test hyper, not the service (and
    # tests/hostile.rs sends such bytes on purpose, checking the exact answers).
    cat >"${WORK_DIR}/${HOOKS_MODULE}.py" <<'EOF'
import re

import schemathesis

_CONTROL = re.compile("[\\x00-\\x08\\x0a-\\x1f\\x7f]")


@schemathesis.hook
def map_headers(context, headers):
    if not headers:
        return headers
    return {
        # Whitespace at either end is no part of a field value either (and requests refuses it).
        name: _CONTROL.sub("", value).strip(" \t") if isinstance(value, str) else value
        for name, value in headers.items()
    }
EOF

    # An admin client: every operation is reachable.
    write_client "${CONFIG_FILE}" schemathesis admin
    cat >>"${CONFIG_FILE}" <<EOF

[stats]
interval = "1s"
EOF
}

# Ready: /api/ready answers 200, and so do the queue routes, which answer 503 until the stats
# role's first poll.
service_ready() {
    local status queues
    status="$(http_status /api/ready)"
    queues="$(http_status /api/queues -H "Authorization: Bearer ${TOKEN}")"
    READY_DETAIL="/api/ready ${status:-none}, /api/queues ${queues:-none}"
    [[ "${status}" == 200 && "${queues}" == 200 ]]
}

start_service() {
    PORT="${SCHEMATHESIS_PORT:-$(free_port)}"
    SERVICE_URL="http://127.0.0.1:${PORT}"
    log "start the service on ${SERVICE_URL}"
    APP_ENV=local APP_HOST=127.0.0.1 APP_PORT="${PORT}" RUST_LOG=warn LOG_FORMAT=json \
        TOPOLOGY_FILE="${TOPOLOGY_FILE_PATH}" DB_DATABASE="${DB}" RABBITMQ_VHOST="${VHOST}" \
        "${SERVICE_BIN}" --config "${CONFIG_FILE}" serve >"${SERVICE_LOG}" 2>&1 &
    SERVICE_PID=$!
    wait_until_ready service_ready
}

run_schemathesis() {
    log "schemathesis: ${MAX_EXAMPLES} examples per operation, seed ${SEED}, at most ${TIME_LIMIT} s"
    local started=${SECONDS} rc=0 extra=()
    [[ -n "${SCHEMATHESIS_CASSETTE:-}" ]] &&
        extra+=(--cassette-path "${SCHEMATHESIS_CASSETTE}" --cassette-preserve-exact-body-bytes)
    # --checks all: not_a_server_error, status_code_conformance, content_type_conformance,
    #   response_headers_conformance, response_schema_conformance, ignored_auth (an operation
    #   declaring security must refuse a request without it)...
    # --exclude-checks negative_data_rejection: ...but not this one. Schemathesis 3 counts as
    #   "negative" a string query parameter generated as another JSON type (the integer 0), which
    #   goes on the wire as `?exchange=0`: a valid string, rightly answered 200. Every failure it
    #   reported was of that kind (seed 2, 300 examples: GET /api/messages/failed?exchange=0,
    #   POST /api/messages/failed/retry?exchange=0). Invalid requests are still generated and
    #   still held to not_a_server_error and the documented statuses.
    # --data-generation-method all: schema-valid requests and deliberately invalid ones.
    # --experimental=openapi-3.1: utoipa writes OpenAPI 3.1, which schemathesis 3 reads as such
    #   only with this flag.
    # NUL bytes in generated strings are kept (schemathesis' default, --generation-allow-x00).
    SCHEMATHESIS_HOOKS="${HOOKS_MODULE}" PYTHONPATH="${WORK_DIR}${PYTHONPATH:+:${PYTHONPATH}}" \
        timeout --signal=INT --kill-after=30 "${TIME_LIMIT}" \
        python3 -m schemathesis.cli run "${SERVICE_URL}/api/openapi.json" \
        --experimental=openapi-3.1 \
        --header "Authorization: Bearer ${TOKEN}" \
        --checks all \
        --exclude-checks negative_data_rejection \
        --data-generation-method all \
        --hypothesis-max-examples "${MAX_EXAMPLES}" \
        --hypothesis-seed "${SEED}" \
        --hypothesis-database none \
        --hypothesis-suppress-health-check all \
        --request-timeout 15000 \
        --sanitize-output true \
        --code-sample-style curl \
        --no-color "${extra[@]}" || rc=$?
    log "schemathesis finished in $((SECONDS - started)) s with exit code ${rc}"
    if [[ "${rc}" == 124 || "${rc}" == 130 ]]; then
        log "schemathesis hit the ${TIME_LIMIT} s limit"
    fi

    # A panic or an error of the service's own is in its log (warn and above) too. lapin logs
    # the broker's refusal of a purge of a missing queue (a 404 of the API) at error level on
    # its throwaway channel: those lines are not the service's errors.
    local errors
    errors="$(grep -E '"level":"ERROR"|panicked' "${SERVICE_LOG}" | grep -v '"target":"lapin::channel"' || true)"
    if [[ -n "${errors}" ]]; then
        log "the service logged errors during the run:"
        tail -n 20 <<<"${errors}" >&2
        rc=1
    fi
    if ! kill -0 "${SERVICE_PID}" 2>/dev/null; then
        log "the service died during the run"
        print_service_log
        rc=1
    fi
    return "${rc}"
}

main() {
    prepare
    start_service
    run_schemathesis
}

main "$@"
