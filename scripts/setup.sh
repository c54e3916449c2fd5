#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine for developing and testing messages-broker:
#   * RabbitMQ server with the management plugin (API on 127.0.0.1:15672)
#   * MariaDB (or an existing MySQL/MariaDB on 127.0.0.1:3306) with the
#     application database, user and grants for per-test databases
#   * promtool, for the alert rules' checks and unit tests (Debian package
#     prometheus, installed only when promtool is missing; SETUP_PROMTOOL=0 skips it)
#   * the deployment checks' tools (scripts/check-deploy.sh): docker-compose (Debian
#     package; `config` needs no Docker engine) and kubernetes-validate (PyPI, ships
#     the Kubernetes schemas); kubectl is used when present (its kustomize renders
#     the manifests), else the raw manifests are validated
#
# Idempotent: on a machine where everything is installed and running it only
# verifies. Installs missing packages with apt-get, starts stopped services
# (systemctl when systemd is PID 1, otherwise the daemons directly).
#
# Environment (all optional):
#   DB_ROOT_USER, DB_ROOT_PASSWORD   admin account (default root, empty password)
#   DB_DATABASE, DB_USERNAME, DB_PASSWORD
#   DB_TEST_DB_PATTERN               grant pattern for per-test databases
#   RABBITMQ_MANAGEMENT_URL          default http://127.0.0.1:15672
#   RABBITMQ_USER, RABBITMQ_PASSWORD default guest / guest
#   SETUP_PROMTOOL=0                 do not install promtool (scripts/test.sh then fails
#                                    at its promtool step)
#   SETUP_WAIT_SECONDS               how long to wait for each service (default 60)
set -euo pipefail

PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"
export PATH

# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------
DB_HOST=127.0.0.1
DB_PORT=3306
DB_ROOT_USER="${DB_ROOT_USER:-root}"
DB_ROOT_PASSWORD="${DB_ROOT_PASSWORD:-}"
DB_DATABASE="${DB_DATABASE:-messages_broker_db}"
DB_USERNAME="${DB_USERNAME:-messages_broker_user}"
DB_PASSWORD="${DB_PASSWORD:-messages_broker_password}"
# Per-test databases (messages_broker_test_<something>). Backslashes make "_"
# literal in a database-level GRANT; "%" is the wildcard.
DEFAULT_TEST_DB_PATTERN='messages\_broker\_test\_%'
DB_TEST_DB_PATTERN="${DB_TEST_DB_PATTERN:-${DEFAULT_TEST_DB_PATTERN}}"

RABBITMQ_MANAGEMENT_URL="${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}"
RABBITMQ_USER="${RABBITMQ_USER:-guest}"
RABBITMQ_PASSWORD="${RABBITMQ_PASSWORD:-guest}"

WAIT_SECONDS="${SETUP_WAIT_SECONDS:-60}"

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
log() { printf '==> %s\n' "$*"; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() {
    printf '==> ERROR: %s\n' "$*" >&2
    exit 1
}

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "not running as root and sudo is not available"
    fi
fi

# Run a command as root (directly, or through sudo when we are not root).
as_root() { ${SUDO[@]+"${SUDO[@]}"} "$@"; }

have() { command -v "$1" >/dev/null 2>&1; }

systemd_is_pid1() { [[ "$(cat /proc/1/comm 2>/dev/null || true)" == systemd ]]; }

APT_UPDATED=0
apt_install() {
    have apt-get || die "apt-get not found; install $* by hand"
    if [[ "${APT_UPDATED}" -eq 0 ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@"
}

# wait_for SECONDS DESCRIPTION COMMAND... : retry COMMAND once a second.
wait_for() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 1
    done
    log "${what}: ready after $((SECONDS - deadline + seconds)) s"
}

tcp_port_open() {
    local host="$1" port="$2"
    timeout 3 bash -c "exec 3<>/dev/tcp/${host}/${port}" 2>/dev/null
}

# SQL literal / identifier quoting.
sql_str() {
    local s="${1//\\/\\\\}"
    s="${s//\'/\'\'}"
    printf "'%s'" "${s}"
}
# A double-quoted value for a MySQL/MariaDB option file.
cnf_value() {
    local s="${1//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "${s}"
}
# shellcheck disable=SC2016 # literal backticks
sql_ident() { printf '`%s`' "${1//\`/\`\`}"; }
# A database name used literally in a GRANT: escape the LIKE wildcards.
grant_db_literal() {
    local s="${1//\\/\\\\}"
    s="${s//_/\\_}"
    s="${s//%/\\%}"
    sql_ident "${s}"
}

TMP_DIR="$(mktemp -d)"
trap 'rm -rf "${TMP_DIR}"' EXIT

# ---------------------------------------------------------------------------
# base tools
# ---------------------------------------------------------------------------
ensure_base_tools() {
    local missing=()
    have curl || missing+=(curl)
    if ((${#missing[@]})); then
        apt_install "${missing[@]}" ca-certificates
    fi
}

# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------
rabbit_ping() { as_root timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1; }
rabbit_app_running() { as_root timeout 30 rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }

management_api_ok() {
    curl -fsS -o /dev/null --max-time 5 -u "${RABBITMQ_USER}:${RABBITMQ_PASSWORD}" \
        "${RABBITMQ_MANAGEMENT_URL}/api/overview"
}

setup_rabbitmq() {
    if have rabbitmqctl; then
        log "RabbitMQ: rabbitmqctl found"
    else
        log "RabbitMQ: rabbitmqctl not found, installing rabbitmq-server"
        apt_install rabbitmq-server
        have rabbitmqctl || die "rabbitmq-server installed but rabbitmqctl is still missing"
    fi

    if rabbit_ping && rabbit_app_running; then
        log "RabbitMQ: node is running"
    else
        if rabbit_ping; then
            log "RabbitMQ: node is up but the app is not running yet, waiting"
        elif systemd_is_pid1; then
            log "RabbitMQ: starting with systemctl start rabbitmq-server"
            as_root systemctl start rabbitmq-server
        else
            log "RabbitMQ: starting with rabbitmq-server -detached"
            as_root rabbitmq-server -detached
        fi
        wait_for "${WAIT_SECONDS}" "RabbitMQ node" rabbit_app_running ||
            die "RabbitMQ did not come up within ${WAIT_SECONDS} s (see /var/log/rabbitmq/)"
    fi

    if as_root timeout 60 rabbitmq-plugins is_enabled rabbitmq_management >/dev/null 2>&1; then
        log "RabbitMQ: management plugin already enabled"
    else
        log "RabbitMQ: enabling rabbitmq_management"
        as_root timeout 120 rabbitmq-plugins enable rabbitmq_management
    fi

    if management_api_ok; then
        log "RabbitMQ: management API answers at ${RABBITMQ_MANAGEMENT_URL}"
    else
        log "RabbitMQ: waiting for the management API at ${RABBITMQ_MANAGEMENT_URL}"
        wait_for "${WAIT_SECONDS}" "RabbitMQ management API" management_api_ok ||
            die "management API ${RABBITMQ_MANAGEMENT_URL}/api/overview did not answer within ${WAIT_SECONDS} s"
    fi

    RABBITMQ_VERSION="$(as_root timeout 30 rabbitmqctl -q version 2>/dev/null | tail -n 1 || true)"
    if [[ -z "${RABBITMQ_VERSION}" ]]; then
        RABBITMQ_VERSION="$(curl -fsS --max-time 5 -u "${RABBITMQ_USER}:${RABBITMQ_PASSWORD}" \
            "${RABBITMQ_MANAGEMENT_URL}/api/overview" |
            sed -n 's/.*"rabbitmq_version":"\([^"]*\)".*/\1/p' || true)"
    fi
}

# ---------------------------------------------------------------------------
# MariaDB / MySQL
# ---------------------------------------------------------------------------
find_server_binary() {
    local b
    for b in mariadbd mysqld; do
        if have "${b}"; then
            command -v "${b}"
            return 0
        fi
    done
    return 1
}

DB_CLIENT=""
DB_ADMIN=""
pick_db_clients() {
    if have mariadb; then
        DB_CLIENT=mariadb
    elif have mysql; then
        DB_CLIENT=mysql
    else
        DB_CLIENT=""
    fi
    if have mariadb-admin; then
        DB_ADMIN=mariadb-admin
    elif have mysqladmin; then
        DB_ADMIN=mysqladmin
    else
        DB_ADMIN=""
    fi
}

# Client options file for the admin account (keeps the password off the
# command line). Must be passed as the first option.
ROOT_CNF="${TMP_DIR}/root.cnf"
write_root_cnf() {
    (
        umask 077
        printf '[client]\nhost=%s\nport=%s\nuser=%s\n' "${DB_HOST}" "${DB_PORT}" "${DB_ROOT_USER}"
        if [[ -n "${DB_ROOT_PASSWORD}" ]]; then
            printf 'password=%s\n' "$(cnf_value "${DB_ROOT_PASSWORD}")"
        fi
    ) >"${ROOT_CNF}"
}

# Is a server answering on DB_HOST:DB_PORT? "mysqladmin ping" exits 0 when
# the server answers, even with "Access denied"; but a server with no account
# matching the client host (fresh MariaDB: root@localhost only, and
# skip-name-resolve) refuses with error 1130 and the tool exits 1. Any error
# that came from the server still means it is up.
db_ping() {
    local err="${TMP_DIR}/ping.err"
    if "${DB_ADMIN}" --defaults-extra-file="${ROOT_CNF}" --connect-timeout=3 ping \
        >/dev/null 2>"${err}"; then
        return 0
    fi
    grep -Eq "Access denied|is not allowed to connect|\b(1045|1130)\b" "${err}"
}

# How to reach the server as admin: over TCP as DB_ROOT_USER, or (fresh
# Debian MariaDB, root@localhost uses unix_socket auth) through the local
# socket as the OS root user.
ROOT_VIA=""
db_root() {
    if [[ "${ROOT_VIA}" == socket ]]; then
        as_root "${DB_CLIENT}" --protocol=socket -uroot "$@"
    else
        "${DB_CLIENT}" --defaults-extra-file="${ROOT_CNF}" --protocol=tcp "$@"
    fi
}

pick_root_access() {
    if "${DB_CLIENT}" --defaults-extra-file="${ROOT_CNF}" --protocol=tcp \
        -e 'SELECT 1' >/dev/null 2>"${TMP_DIR}/root_tcp.err"; then
        ROOT_VIA=tcp
        log "DB: connected as ${DB_ROOT_USER}@${DB_HOST}:${DB_PORT}"
        return 0
    fi
    if [[ -z "${DB_ROOT_PASSWORD}" && "${DB_ROOT_USER}" == root ]] &&
        as_root "${DB_CLIENT}" --protocol=socket -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        ROOT_VIA=socket
        log "DB: root over TCP refused ($(head -n 1 "${TMP_DIR}/root_tcp.err")); using the local socket as root"
        return 0
    fi
    cat "${TMP_DIR}/root_tcp.err" >&2
    die "cannot log in to ${DB_HOST}:${DB_PORT} as ${DB_ROOT_USER} (set DB_ROOT_USER / DB_ROOT_PASSWORD)"
}

start_db_server() {
    local bin="$1"
    if systemd_is_pid1; then
        local unit
        for unit in mariadb mysql; do
            if systemctl cat "${unit}.service" >/dev/null 2>&1; then
                log "DB: starting with systemctl start ${unit}"
                as_root systemctl start "${unit}"
                return 0
            fi
        done
    fi
    # Debian's config puts socket and pid file in /run/mysqld, which is
    # normally created by the init script / tmpfiles.d.
    if id mysql >/dev/null 2>&1; then
        as_root install -d -m 0755 -o mysql -g mysql /run/mysqld
    fi
    log "DB: starting with start-stop-daemon --exec ${bin}"
    as_root start-stop-daemon --start --oknodo --background --exec "${bin}"
}

setup_db() {
    local server_bin=""
    server_bin="$(find_server_binary || true)"

    if [[ -z "${server_bin}" ]] && ! tcp_port_open "${DB_HOST}" "${DB_PORT}"; then
        log "DB: no mariadbd/mysqld and nothing on ${DB_HOST}:${DB_PORT}, installing mariadb-server"
        apt_install mariadb-server mariadb-client
        server_bin="$(find_server_binary || true)"
        [[ -n "${server_bin}" ]] || die "mariadb-server installed but mariadbd is missing"
    fi

    pick_db_clients
    if [[ -z "${DB_CLIENT}" || -z "${DB_ADMIN}" ]]; then
        log "DB: client tools missing, installing mariadb-client"
        apt_install mariadb-client
        pick_db_clients
        [[ -n "${DB_CLIENT}" && -n "${DB_ADMIN}" ]] || die "no mariadb/mysql client after install"
    fi
    log "DB: client ${DB_CLIENT}, admin tool ${DB_ADMIN}"
    write_root_cnf

    if db_ping >/dev/null 2>&1; then
        log "DB: server answers on ${DB_HOST}:${DB_PORT}"
    else
        [[ -n "${server_bin}" ]] ||
            die "no server answers on ${DB_HOST}:${DB_PORT} and no mariadbd/mysqld to start"
        start_db_server "${server_bin}"
        wait_for "${WAIT_SECONDS}" "DB server" db_ping ||
            die "DB server did not answer on ${DB_HOST}:${DB_PORT} within ${WAIT_SECONDS} s (see /var/log/mysql/)"
    fi

    pick_root_access

    local db user pass test_db
    db="$(sql_ident "${DB_DATABASE}")"
    user="$(sql_str "${DB_USERNAME}")"
    pass="$(sql_str "${DB_PASSWORD}")"
    test_db="$(sql_ident "${DB_TEST_DB_PATTERN}")"

    log "DB: ensuring database ${DB_DATABASE}, user ${DB_USERNAME} and grants"
    # ALL PRIVILEGES includes CREATE and DROP, which at database level let the
    # user create and drop databases whose names match the test pattern.
    db_root <<SQL
CREATE DATABASE IF NOT EXISTS ${db} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS ${user}@'%' IDENTIFIED BY ${pass};
CREATE USER IF NOT EXISTS ${user}@'localhost' IDENTIFIED BY ${pass};
ALTER USER ${user}@'%' IDENTIFIED BY ${pass};
ALTER USER ${user}@'localhost' IDENTIFIED BY ${pass};
GRANT ALL PRIVILEGES ON $(grant_db_literal "${DB_DATABASE}").* TO ${user}@'%';
GRANT ALL PRIVILEGES ON $(grant_db_literal "${DB_DATABASE}").* TO ${user}@'localhost';
GRANT ALL PRIVILEGES ON ${test_db}.* TO ${user}@'%';
GRANT ALL PRIVILEGES ON ${test_db}.* TO ${user}@'localhost';
FLUSH PRIVILEGES;
SQL

    DB_VERSION="$(db_root -N -B -e 'SELECT VERSION()')"

    # Verify as the application user, over TCP like the service connects.
    local app_cnf="${TMP_DIR}/app.cnf"
    (
        umask 077
        printf '[client]\nhost=%s\nport=%s\nuser=%s\npassword=%s\n' \
            "${DB_HOST}" "${DB_PORT}" "${DB_USERNAME}" "$(cnf_value "${DB_PASSWORD}")" >"${app_cnf}"
    )
    "${DB_CLIENT}" --defaults-extra-file="${app_cnf}" --protocol=tcp "${DB_DATABASE}" \
        -N -B -e 'SELECT 1' >/dev/null ||
        die "user ${DB_USERNAME} cannot use database ${DB_DATABASE}"
    log "DB: ${DB_USERNAME} can use ${DB_DATABASE}"

    if [[ "${DB_TEST_DB_PATTERN}" == "${DEFAULT_TEST_DB_PATTERN}" ]]; then
        local probe="messages_broker_test_setup_$$"
        "${DB_CLIENT}" --defaults-extra-file="${app_cnf}" --protocol=tcp -e \
            "CREATE DATABASE $(sql_ident "${probe}"); DROP DATABASE $(sql_ident "${probe}");" ||
            die "user ${DB_USERNAME} cannot create/drop test databases (${probe})"
        log "DB: ${DB_USERNAME} can create and drop messages_broker_test_* databases"
    fi
}

# ---------------------------------------------------------------------------
# promtool (alert rules: promtool check rules / promtool test rules)
# ---------------------------------------------------------------------------
install_promtool() {
    if have promtool; then
        log "promtool: found ($(promtool --version 2>&1 | head -n 1))"
        return 0
    fi
    log "promtool: not found, installing Debian package prometheus (ships promtool)"
    apt_install prometheus
    have promtool || die "prometheus installed but promtool is still missing"
    log "promtool: installed ($(promtool --version 2>&1 | head -n 1))"
    # The package also starts a Prometheus server; only its promtool is wanted here.
    if systemd_is_pid1; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/prometheus ]]; then
        as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
    log "promtool: the package's prometheus server is stopped and disabled (only promtool is used)"
}

# ---------------------------------------------------------------------------
# deployment checks (scripts/check-deploy.sh)
# ---------------------------------------------------------------------------
KUBERNETES_VALIDATE_VERSION=1.37.0
install_deploy_tools() {
    if have docker-compose; then
        log "docker-compose: found ($(docker-compose version --short 2>/dev/null || echo '?'))"
    else
        log "docker-compose: not found, installing Debian package docker-compose"
        apt_install docker-compose
        have docker-compose || die "docker-compose installed but still missing"
    fi
    if python3 -c "import sys, kubernetes_validate.version as v; sys.exit(v.__version__ != '${KUBERNETES_VALIDATE_VERSION}')" 2>/dev/null; then
        log "kubernetes-validate: found (${KUBERNETES_VALIDATE_VERSION})"
    else
        log "kubernetes-validate: installing ${KUBERNETES_VALIDATE_VERSION} with pip"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
            "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" ||
            die "pip could not install kubernetes-validate (scripts/check-deploy.sh needs it)"
    fi
    # No registry reachable from here has a kubectl recent enough for the kustomizations (Debian's
    # kubernetes-client 1.20 embeds kustomize v2): use the one present, or let check-deploy.sh fall
    # back to validating the raw files.
    if have kubectl && kubectl version --client -o json 2>/dev/null | grep -q '"kustomizeVersion": *"v[4-9]'; then
        log "kubectl: found, with kustomize ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'))"
    else
        warn "kubectl with kustomize v4+ not found: scripts/check-deploy.sh validates the raw manifests of compose/kubernetes/base and does not render the overlays"
    fi
}

# The console's browser test (tests/console.rs -> scripts/console_browser.py): Debian's
# chromium, driven by Python playwright with executable_path (no browser download), and axe-core
# as bundled by axe-playwright-python.
PLAYWRIGHT_VERSION="1.65.3"
AXE_PLAYWRIGHT_VERSION="0.1.8"
install_browser_tools() {
    have chromium || apt_install chromium
    if ! python3 -c 'import playwright, axe_playwright_python' 2>/dev/null; then
        log "playwright ${PLAYWRIGHT_VERSION} and axe-playwright-python ${AXE_PLAYWRIGHT_VERSION}: installing with pip"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
            "playwright==${PLAYWRIGHT_VERSION}" "axe-playwright-python==${AXE_PLAYWRIGHT_VERSION}" ||
            die "pip could not install playwright and axe-playwright-python (the console's browser test needs them)"
    fi
    log "browser test: $(chromium --version 2>/dev/null | head -1), playwright $(python3 -c 'import importlib.metadata as m; print(m.version("playwright"))')"
}

# ---------------------------------------------------------------------------
main() {
    RABBITMQ_VERSION=""
    DB_VERSION=""
    ensure_base_tools
    setup_rabbitmq
    setup_db
    if [[ "${SETUP_PROMTOOL:-1}" == 0 ]]; then
        log "promtool: skipped (SETUP_PROMTOOL=0)"
    else
        install_promtool
    fi
    install_deploy_tools
    install_browser_tools
    { python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'schemathesis==3.39.16' 'hypothesis<6.140' && log "schemathesis: $(python3 -m schemathesis.cli --version) (for scripts/schemathesis.sh; hypothesis pinned: 6.170.10+ breaks hypothesis-jsonschema 0.23)"; } || die "pip could not install schemathesis (scripts/schemathesis.sh needs it)"

    log "summary:"
    log "  RabbitMQ ${RABBITMQ_VERSION:-unknown version}: node running, management API OK (${RABBITMQ_MANAGEMENT_URL})"
    log "  DB ${DB_VERSION}: OK (${DB_HOST}:${DB_PORT}, database ${DB_DATABASE}, user ${DB_USERNAME})"
    log "setup done"
}

main "$@"
