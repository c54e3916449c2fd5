# Shared by scripts/bench.sh and scripts/schemathesis.sh: both run the real service in the
# background against the local RabbitMQ and MariaDB, with a client of their own, and stop it at
# the end. Sourced (not run) after `set -euo pipefail` and `cd` to the repository root; the
# sourcing script sets SERVICE_BIN, SERVICE_LOG and SERVICE_URL before it calls these.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/messages-broker/target}"

MANAGEMENT_URL="${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
MANAGEMENT_URL="${MANAGEMENT_URL%/}"
RABBIT_USER="${RABBITMQ_USER:-guest}"
RABBIT_PASSWORD="${RABBITMQ_PASSWORD:-guest}"
SERVICE_PID=""
TOKEN=""

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf '==> ERROR: %s\n' "$*" >&2
    exit 1
}

# A management API call with an optional JSON body; prints the HTTP status.
management() {
    local method="$1" path="$2" body="${3:-}"
    local args=(-s -o /dev/null -w '%{http_code}' -u "${RABBIT_USER}:${RABBIT_PASSWORD}" -X "${method}")
    [[ -n "${body}" ]] && args+=(-H 'content-type: application/json' -d "${body}")
    curl "${args[@]}" "${MANAGEMENT_URL}${path}" || true
}

# SQL as the service's database user (scripts/setup.sh creates it).
db() {
    mariadb -h127.0.0.1 -umessages_broker_user -pmessages_broker_password -e "$1"
}

print_service_log() {
    if [[ -s "${SERVICE_LOG}" ]]; then
        log "service log (last 40 lines):"
        tail -n 40 "${SERVICE_LOG}" >&2
    fi
}

# SIGTERM, then wait for the clean stop (the service's own deadline is 20 s).
stop_service() {
    [[ -n "${SERVICE_PID}" ]] || return 0
    local pid="${SERVICE_PID}" rc=0
    SERVICE_PID=""
    kill -TERM "${pid}" 2>/dev/null || return 0
    for _ in $(seq 1 300); do
        kill -0 "${pid}" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "${pid}" 2>/dev/null; then
        log "service ${pid} still running 30 s after SIGTERM; killing it"
        kill -KILL "${pid}" 2>/dev/null || true
    fi
    wait "${pid}" 2>/dev/null || rc=$?
    if [[ "${rc}" -ne 0 ]]; then
        log "service exited with code ${rc} on SIGTERM"
        print_service_log
    fi
}

# `cleanup` (the sourcing script's) runs on every exit; INT and TERM exit with their usual codes.
trap_cleanup() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Writes a config layer with one client `$2` holding scope `$3` to file `$1`, and sets TOKEN to a
# fresh random token; only its SHA-256 goes to the service.
write_client() {
    local file="$1" name="$2" scope="$3" hash
    TOKEN="${name}-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    hash="$(printf %s "${TOKEN}" | sha256sum | cut -d' ' -f1)"
    cat >"${file}" <<TOML
[[auth.clients]]
name = "${name}"
token_sha256 = "${hash}"
scopes = ["${scope}"]
TOML
}

# Waits (60 s at most) until the function `$1` succeeds, polling every 0.2 s; dies when the
# service exits first or the time is up. `$1` may set READY_DETAIL to what it last saw, for the
# message.
wait_until_ready() {
    local check="$1" deadline=$((SECONDS + 60))
    READY_DETAIL=""
    while ((SECONDS < deadline)); do
        if ! kill -0 "${SERVICE_PID}" 2>/dev/null; then
            local rc=0
            wait "${SERVICE_PID}" || rc=$?
            SERVICE_PID=""
            print_service_log
            die "the service exited during start (code ${rc})"
        fi
        "${check}" && return 0
        sleep 0.2
    done
    curl -s "${SERVICE_URL}/api/ready" >&2 || true
    echo >&2
    print_service_log
    die "the service was not ready within 60 s (${READY_DETAIL})"
}

# The HTTP status of GET `$1` on the service, with the extra curl arguments that follow.
http_status() {
    local path="$1"
    shift
    curl -s -o /dev/null -w '%{http_code}' "$@" "${SERVICE_URL}${path}" || true
}
