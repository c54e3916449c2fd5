#!/usr/bin/env bash
# Benchmarks of messages-broker against the local broker, each number printed next to a reference
# measured in the same run. Measurements, not tests: exits 0 when a goal is missed (the printout
# says MISSED) and non-zero only when the benchmark cannot run.
#
#   scripts/bench.sh                 every section
#   scripts/bench.sh publish         only the named sections
#
# Sections (one function `section_<name>` each; add new ones to SECTIONS):
#   publish   (a) AMQP confirmed publishes, window 256 (the broker's ceiling), (a32) the same
#             with window 32 ((b)'s concurrency), (b) POST /api/messages/publish at 32
#             connections, (c) POST /api/messages/publish/batch, (d) RabbitMQ's management API
#             publish at 32 connections, (r) POST /api/messages/request at 32 connections (the
#             bench's drain consumer is the responder), (b-1k) and (b-schema) POST publish of a
#             1 KiB event without and with its event schema checked (ratio goal >= 0.90),
#             (b-paced) (b) at a fixed 5,000 requests/s (CPU per message depends on the load:
#             builds compare best at the same rate), (h) the HTTP floor: (b)'s requests answered
#             by a bare hyper server (`bench http-floor`, own process, port BENCH_PORT+1) with a
#             fixed 201, what one HTTP exchange costs a server here; goals: (b)/(a32) and (c)/(a)
#             >= 0.90, service CPU <= 30 us per (b) message and <= 10 us per (c) message, MariaDB
#             <= 5 us per audited message, (b)'s p99 <= 10 ms, peak RSS <= 48 MiB;
#             BENCH_ROUNDS interleaved rounds (more, up to BENCH_MAX_ROUNDS, while a goal ratio
#             spreads by more than 20 % of its median), medians and ranges of
#             msg/s, p50/p99, errors, CPU per message of each process, the service's peak RSS
#             and the ratios. The audit table of the bench database is emptied first: a table
#             grown by earlier runs past the InnoDB buffer pool slows every insert.
#   stats     CPU of one stats poll (workers::stats::poll_once, examples/stats_bench.rs) with 200
#             extra queues on the vhost, averaged over 50 polls; goal < 50 ms. The broker's CPU
#             per poll (it renders the management API's JSON) is printed next to it.
#   groups    latency of the failure-group reads (examples/groups_bench.rs): empties
#             failed_messages of the bench database, fills it with 100,000 rows in 200 groups
#             (INSERT ... SELECT), then times 200 sequential requests each of GET
#             /api/messages/failed/groups (plain, status=failed, queue=...) and of a page of one
#             group's rows (fingerprint + status); p50, p95, max; goal p95 < 100 ms.
#   schemas   CPU of one event schema check (examples/schema_bench.rs): the 1 KiB event of
#             (b-schema) against order.created 2.0, 100,000 times on one thread, in us per event.
#   audit     mariadbd CPU per audit row (examples/audit_bench.rs): 100,000 ~330-byte events fed
#             to the audit writer (workers::audit) at 10,000 rows/s, next to the seed's table
#             layout through the same writer and the seed's statement; BENCH_ROUNDS rounds,
#             median and range; goal <= 5 us. Its own databases (messages_broker_test_bench_audit*).
#   ingest    dead-letter ingestion (examples/ingest_bench.rs, own database and queue): per round,
#             20,000 dead letters pre-filled in a DLQ, (e) the ingester role draining them into
#             failed_messages rows, then (f) upsert_batch of the same rows in chunks of the
#             prefetch, each on an emptied table; BENCH_ROUNDS rounds, median and range of
#             (e)/(f) (goal >= 0.80), CPU us per row of the bench process and of the database
#             server, and of the broker in (e). The service's JSON log subscriber is on at its default level (info), as
#             deployed: its line per dead letter is counted, and filtered out of the printout.
#
# Environment (all optional):
#   BENCH_DURATION    measured seconds per scenario (default 10; each also has a 1 s warm-up)
#   BENCH_ROUNDS      rounds of every publish scenario, of audit and of ingest (default 3)
#   BENCH_MAX_ROUNDS  at most this many publish rounds while the goal ratios spread (default 6)
#   BENCH_SCENARIOS   publish scenarios to run, comma-separated (default: all of them, see above;
#                     e.g. a32,b,b-1k,b-schema)
#   BENCH_PORT        HTTP port of the service under test (default 18011)
#   BENCH_ROLES       roles of the service under test (default: all, as deployed by default)
#   BENCH_THREADS     worker threads of the load generator (default 2)
#   BENCH_DB          database of the service under test (default messages_broker_test_bench; another
#                     name, within messages_broker_test_%, when branches with other migrations share it)
#   AUDIT_BENCH_PORT  MySQL port of the audit section (default 3306; e.g. a private mariadbd, whose
#                     CPU no other benchmark mixes in), AUDIT_BENCH_DB_PID its pid
#   RABBITMQ_MANAGEMENT_URL, RABBITMQ_USER, RABBITMQ_PASSWORD   default http://127.0.0.1:15672, guest, guest
#   CARGO_TARGET_DIR  default ~/.cache/messages-broker/target (shared with scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

SECTIONS=(publish stats groups schemas audit ingest)

BENCH_DURATION="${BENCH_DURATION:-10}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_MAX_ROUNDS="${BENCH_MAX_ROUNDS:-6}"
BENCH_PORT="${BENCH_PORT:-18011}"
BENCH_ROLES="${BENCH_ROLES:-}"
BENCH_THREADS="${BENCH_THREADS:-2}"
BENCH_SCENARIOS="${BENCH_SCENARIOS:-}"
BENCH_DB="${BENCH_DB:-messages_broker_test_bench}"
BENCH_TOPOLOGY=scripts/bench/topology.toml
BENCH_EXCHANGE=bench_exchange
BENCH_QUEUE=bench_queue

SERVICE_BIN="${CARGO_TARGET_DIR}/release/messages-broker"
BENCH_BIN="${CARGO_TARGET_DIR}/release/examples/bench"
SERVICE_URL="http://127.0.0.1:${BENCH_PORT}"

WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/messages-broker-bench.XXXXXX")"
SERVICE_LOG="${WORK_DIR}/service.log"
CONFIG_FILE="${WORK_DIR}/bench-client.toml"

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

# Removes the bench queue and exchange (the service does not delete what it declared).
delete_bench_topology() {
    management DELETE "/api/queues/%2F/${BENCH_QUEUE}" >/dev/null
    management DELETE "/api/exchanges/%2F/${BENCH_EXCHANGE}" >/dev/null
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cleanup() {
    local rc=$?
    stop_service
    delete_bench_topology
    rm -rf "${WORK_DIR}"
    exit "${rc}"
}
trap_cleanup

# ---------------------------------------------------------------------------
# preparation (shared by every section)
# ---------------------------------------------------------------------------

prepare() {
    log "setup (scripts/setup.sh)"
    if ! scripts/setup.sh >"${WORK_DIR}/setup.log" 2>&1; then
        cat "${WORK_DIR}/setup.log" >&2
        die "scripts/setup.sh failed"
    fi

    log "build (release): messages-broker and examples/bench"
    cargo build --release --quiet --bin messages-broker --example bench

    "${SERVICE_BIN}" topology check "${BENCH_TOPOLOGY}" >/dev/null ||
        die "${BENCH_TOPOLOGY} is not a valid topology"

    log "database ${BENCH_DB}"
    db "CREATE DATABASE IF NOT EXISTS ${BENCH_DB}" ||
        die "cannot create ${BENCH_DB} (run scripts/setup.sh: it grants messages_broker_test_% databases)"

    # One client for every section: publish (publish), read (groups); admin holds both.
    write_client "${CONFIG_FILE}" bench admin
}

# Ready: /api/ready answers 200.
service_ready() {
    local status
    status="$(http_status /api/ready)"
    READY_DETAIL="last /api/ready status: ${status:-none}"
    [[ "${status}" == 200 ]]
}

# Starts the service in the background on BENCH_PORT and waits (60 s at most) for /api/ready.
start_service() {
    port_in_use "${BENCH_PORT}" && die "port ${BENCH_PORT} is in use; set BENCH_PORT"
    # A fresh queue every run: a leftover with other arguments would keep /api/ready at 503.
    delete_bench_topology

    local roles=()
    [[ -n "${BENCH_ROLES}" ]] && roles=(--roles "${BENCH_ROLES}")
    log "start the service on ${SERVICE_URL} (topology ${BENCH_TOPOLOGY}, database ${BENCH_DB})"
    APP_ENV=local APP_HOST=127.0.0.1 APP_PORT="${BENCH_PORT}" RUST_LOG=warn LOG_FORMAT=json \
        TOPOLOGY_FILE="${BENCH_TOPOLOGY}" DB_DATABASE="${BENCH_DB}" \
        "${SERVICE_BIN}" --config "${CONFIG_FILE}" serve "${roles[@]}" >"${SERVICE_LOG}" 2>&1 &
    SERVICE_PID=$!
    wait_until_ready service_ready
}

# Pids of the broker and the database server, for the CPU figures (empty when not found).
broker_pid() {
    pgrep -o -x beam.smp 2>/dev/null || true
}

db_pid() {
    pgrep -o -x mariadbd 2>/dev/null || pgrep -o -x mysqld 2>/dev/null || true
}

print_context() {
    local rabbit_version commit
    rabbit_version="$(curl -s -u "${RABBIT_USER}:${RABBIT_PASSWORD}" "${MANAGEMENT_URL}/api/overview" |
        sed -n 's/.*"rabbitmq_version":"\([^"]*\)".*/\1/p')"
    commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then
        commit="${commit}+changes"
    fi
    # Everything shares the machine: a busy one (builds, tests) lowers every figure, unevenly.
    echo "messages-broker bench: commit ${commit}, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)," \
        "RabbitMQ ${rabbit_version:-?}, ${BENCH_DURATION} s per scenario"
}

# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------

section_publish() {
    echo
    echo "## publish"
    db "TRUNCATE TABLE ${BENCH_DB}.message_logs" || die "cannot empty ${BENCH_DB}.message_logs"
    local broker db extra=()
    broker="$(broker_pid)"
    db="$(db_pid)"
    [[ -n "${broker}" ]] && extra+=(--broker-pid "${broker}")
    [[ -n "${db}" ]] && extra+=(--db-pid "${db}")
    [[ -n "${BENCH_SCENARIOS}" ]] && extra+=(--scenarios "${BENCH_SCENARIOS}")
    # (h): the HTTP floor in a process of its own, so that its CPU is counted apart.
    local floor_port=$((BENCH_PORT + 1)) floor_pid
    port_in_use "${floor_port}" && die "port ${floor_port} (the HTTP floor's) is in use; set BENCH_PORT"
    "${BENCH_BIN}" http-floor --port "${floor_port}" &
    floor_pid=$!
    extra+=(--floor-url "http://127.0.0.1:${floor_port}" --floor-pid "${floor_pid}")
    BENCH_TOKEN="${TOKEN}" BENCH_MANAGEMENT_PASSWORD="${RABBIT_PASSWORD}" \
        "${BENCH_BIN}" --threads "${BENCH_THREADS}" publish \
        --url "${SERVICE_URL}" \
        --amqp "amqp://${RABBIT_USER}:${RABBIT_PASSWORD}@127.0.0.1:5672/%2f" \
        --management "${MANAGEMENT_URL}" \
        --management-user "${RABBIT_USER}" \
        --exchange "${BENCH_EXCHANGE}" \
        --routing-key bench.tick \
        --queue "${BENCH_QUEUE}" \
        --duration "${BENCH_DURATION}" \
        --rounds "${BENCH_ROUNDS}" \
        --max-rounds "${BENCH_MAX_ROUNDS}" \
        --pid "${SERVICE_PID}" \
        "${extra[@]}" || {
        kill "${floor_pid}" 2>/dev/null
        return 1
    }
    kill "${floor_pid}" 2>/dev/null || true
    wait "${floor_pid}" 2>/dev/null || true
}

section_stats() {
    echo
    echo "## stats"
    cargo build --release --quiet --example stats_bench
    local broker extra=()
    broker="$(broker_pid)"
    [[ -n "${broker}" ]] && extra+=(--broker-pid "${broker}")
    RABBITMQ_USER="${RABBIT_USER}" RABBITMQ_PASSWORD="${RABBIT_PASSWORD}" \
        "${CARGO_TARGET_DIR}/release/examples/stats_bench" \
        --management "${MANAGEMENT_URL}" --queues 200 --polls 50 "${extra[@]}"
}

section_groups() {
    echo
    echo "## groups"
    cargo build --release --quiet --example groups_bench
    BENCH_TOKEN="${TOKEN}" "${CARGO_TARGET_DIR}/release/examples/groups_bench" \
        --url "${SERVICE_URL}" --database "${BENCH_DB}" --rows 100000 --groups 200 --requests 200
}

section_schemas() {
    echo
    echo "## schemas"
    cargo build --release --quiet --example schema_bench
    "${CARGO_TARGET_DIR}/release/examples/schema_bench" --topology "${BENCH_TOPOLOGY}" --iterations 100000
}

section_audit() {
    echo
    echo "## audit"
    cargo build --release --quiet --example audit_bench
    local db="${AUDIT_BENCH_DB_PID:-$(db_pid)}" extra=()
    [[ -n "${db}" ]] && extra+=(--db-pid "${db}")
    "${CARGO_TARGET_DIR}/release/examples/audit_bench" --port "${AUDIT_BENCH_PORT:-3306}" \
        --rows 100000 --rate 10000 --rounds "${BENCH_ROUNDS}" "${extra[@]}"
}

section_ingest() {
    echo
    echo "## ingest"
    cargo build --release --quiet --example ingest_bench
    local db broker extra=()
    db="$(db_pid)"
    broker="$(broker_pid)"
    [[ -n "${db}" ]] && extra+=(--db-pid "${db}")
    [[ -n "${broker}" ]] && extra+=(--broker-pid "${broker}")
    # RUST_LOG unset: the service's default filter. Its JSON lines go through the pipe, as to a
    # log collector, and only the bench's own lines are shown.
    env -u RUST_LOG "${CARGO_TARGET_DIR}/release/examples/ingest_bench" \
        --messages 20000 --rounds "${BENCH_ROUNDS}" "${extra[@]}" | grep -v '^{'
}

main() {
    local sections=("$@")
    ((${#sections[@]})) || sections=("${SECTIONS[@]}")
    local section
    for section in "${sections[@]}"; do
        declare -F "section_${section//-/_}" >/dev/null ||
            die "unknown section '${section}' (known: ${SECTIONS[*]})"
    done

    prepare
    start_service
    print_context
    for section in "${sections[@]}"; do
        "section_${section//-/_}"
    done
    echo
    log "stop the service"
    stop_service
    if [[ -s "${SERVICE_LOG}" ]]; then
        log "the service logged $(wc -l <"${SERVICE_LOG}") line(s) at warn or above; last ones:"
        tail -n 10 "${SERVICE_LOG}" >&2
    fi
}

main "$@"
