#!/usr/bin/env bash
# The two commands of README.md:
#   ./dev.sh run    RabbitMQ (installed/started if missing) + rabbitmesh with ./config
#   ./dev.sh test   mypy on the package, then the whole test suite against that real RabbitMQ
#                   (installs the Compose client the compose-file tests need; the Docker proof:
#                   ./dev.sh test tests/compose -m compose; the console in Chromium:
#                   ./dev.sh test tests/browser -m browser). With pytest arguments (one file, -k)
#                   only pytest runs, in one process: mypy and the parallel run are part of
#                   the whole run, as CI makes it.
# Works on a fresh Debian/Ubuntu machine with Python >= 3.11; uses a virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

ensure_rabbitmq() {
  if [ -n "${RABBITMESH_SKIP_RABBITMQ_SETUP:-}" ]; then return; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "dev.sh: installing rabbitmq-server (apt-get)" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "dev.sh: starting RabbitMQ" >&2
    rabbitmq-server -detached
  fi
  # Waits for the node to boot; fails after the timeout with rabbitmqctl's own message.
  rabbitmqctl -q await_startup --timeout 120 >/dev/null
}

# tests/unit/test_compose.py runs `docker compose config` on the compose files: the client
# only (no Docker engine needed). Debian's docker-compose (v1) when neither client is there.
ensure_compose_client() {
  if docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1; then
    return
  fi
  echo "dev.sh: installing docker-compose (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
}

# The console's browser tests (`-m browser`): Playwright for Python (the `browser` extra) and
# Debian's Chromium, which Playwright drives through its executable path (nothing downloaded).
ensure_browser() {
  if ! "$VENV/bin/python" -c 'import playwright' >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q -e '.[test,browser]'
  fi
  if ! command -v chromium >/dev/null 2>&1 && [ -z "${RABBITMESH_TEST_CHROMIUM:-}" ]; then
    echo "dev.sh: installing chromium (apt-get)" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
}

ensure_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # Reinstall only when the declared dependencies changed.
  stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
}

case "${1:-}" in
  run)
    shift
    # RABBITMESH_AMQP_URL names the RabbitMQ to use (Docker, another host): then no local one
    # is installed or started.
    if [ -n "${RABBITMESH_AMQP_URL:-}" ]; then
      echo "dev.sh: using the RabbitMQ at RABBITMESH_AMQP_URL (no local one started)" >&2
    else
      ensure_rabbitmq
    fi
    ensure_python
    exec "$VENV/bin/rabbitmesh" run "$@"
    ;;
  test)
    shift
    ensure_rabbitmq
    ensure_compose_client
    ensure_python
    if [ $# -eq 0 ]; then
      # The package's types ([tool.mypy] in pyproject.toml); incremental, so seconds after
      # the first run. A type error fails the run before any test starts.
      "$VENV/bin/python" -m mypy
      # The whole suite in two parts. Tests that share the node (each in its own topology
      # prefix) run in RABBITMESH_TEST_PROCESSES processes, a file's tests in one of them; the
      # disruptive ones (they stop, restart or alarm the whole node: they would pull it from
      # under the others) and the fault scenarios (`serial`: they make load and measure what
      # senders see) then run alone. Both parts always run; either failing
      # fails the command.
      default_marks="not slow and not compose and not browser"
      status=0
      "$VENV/bin/python" -m pytest -n "${RABBITMESH_TEST_PROCESSES:-3}" --dist loadfile \
        -m "$default_marks and not disruptive and not serial" || status=$?
      "$VENV/bin/python" -m pytest -m "$default_marks and (disruptive or serial)" || status=$?
      exit "$status"
    fi
    case " $* " in *browser*) ensure_browser ;; esac
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh run [rabbitmesh run flags] | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
