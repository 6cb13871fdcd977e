#!/usr/bin/env bash
# A RabbitMQ node of your own on this machine, for tests or benchmarks that must not share
# (or must not disturb) the default node, e.g. while a whole suite runs against it:
#
#   eval "$(scripts/private-rabbitmq.sh 3)" && ./dev.sh test tests/integration/test_replay.py
#   rabbitmqctl -n h3@localhost stop          # when done
#
# Starts node hN@localhost (if it is not running) with AMQP on 127.0.0.1:(5700+N), Erlang
# distribution on 25700+N and its data under /tmp/rmq-hN, then prints the `export` that points
# the suite (RABBITMESH_TEST_AMQP_URL, RABBITMESH_TEST_RABBITMQ_NODE), `rabbitmesh run`
# (RABBITMESH_AMQP_URL) and dev.sh (no setup of the default node) at it. The node gets a config
# file of its own: /etc/rabbitmq/rabbitmq.conf may pin `listeners.tcp.local` to 5672, and a
# node started with that file could not listen on its own port. When the node does not come
# up, it prints `false` (so `eval ... && cmd` does not run cmd on the default node) and exits 1.
set -uo pipefail
if [ $# -ne 1 ] || ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 1 ] || [ "$1" -gt 99 ]; then
  echo "usage: eval \"\$($0 N)\"   (N = 1..99: node hN@localhost on port 5700+N)" >&2
  exit 2
fi
N=$1
NODE="h$N@localhost"
PORT=$((5700 + N))
DIST=$((25700 + N))
BASE=/tmp/rmq-h$N
mkdir -p "$BASE"
printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$PORT" > "$BASE/rabbitmq.conf"
# rabbitmq-server drops to the rabbitmq user when started as root.
chown -R rabbitmq:rabbitmq "$BASE" 2>/dev/null || true
if ! rabbitmqctl -q -n "$NODE" status >/dev/null 2>&1; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # a suite's queues need many descriptors
  RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_PORT=$PORT RABBITMQ_DIST_PORT=$DIST \
  RABBITMQ_CONFIG_FILE="$BASE/rabbitmq" \
  RABBITMQ_MNESIA_BASE="$BASE/mnesia" RABBITMQ_LOG_BASE="$BASE/log" \
  RABBITMQ_ENABLED_PLUGINS_FILE="$BASE/enabled_plugins" \
    rabbitmq-server -detached >/dev/null 2>&1
  for _ in $(seq 120); do  # await_startup gives up at once while the node is not up yet
    rabbitmqctl -q -n "$NODE" await_startup --timeout 120 >/dev/null 2>&1 && break
    sleep 1
  done
fi
if ! rabbitmqctl -q -n "$NODE" status >/dev/null 2>&1; then
  echo "scripts/private-rabbitmq.sh: node $NODE did not start (see $BASE/log)" >&2
  echo "false"
  exit 1
fi
URL="amqp://guest:guest@127.0.0.1:$PORT/"
echo "export RABBITMESH_TEST_AMQP_URL=$URL RABBITMESH_TEST_RABBITMQ_NODE=$NODE" \
  "RABBITMESH_AMQP_URL=$URL RABBITMESH_SKIP_RABBITMQ_SETUP=1"
