#!/bin/sh
# The parts of the official image's entrypoint the compose files rely on: the default user
# and the Erlang cookie from the environment, then rabbitmq-server as the rabbitmq user.
set -eu
if [ "$(id -u)" = 0 ]; then
    conf=/etc/rabbitmq/conf.d/05-environment.conf
    : > "$conf"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
        echo "default_user = $RABBITMQ_DEFAULT_USER" >> "$conf"
    fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
        echo "default_pass = $RABBITMQ_DEFAULT_PASS" >> "$conf"
    fi
    if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
        printf '%s' "$RABBITMQ_ERLANG_COOKIE" > /var/lib/rabbitmq/.erlang.cookie
        chmod 600 /var/lib/rabbitmq/.erlang.cookie
    fi
    # The CLI tools (healthcheck, `docker exec ... rabbitmqctl`) run as root: same cookie.
    if [ -f /var/lib/rabbitmq/.erlang.cookie ]; then
        cp /var/lib/rabbitmq/.erlang.cookie /root/.erlang.cookie
        chmod 600 /root/.erlang.cookie
    fi
    # /etc/rabbitmq/conf.d may hold read-only mounts (the HA file's 20-cluster.conf): only
    # what this script wrote and the data directory change owner. The default password is in
    # 05-environment.conf: readable by rabbitmq only.
    chown rabbitmq:rabbitmq "$conf" && chmod 600 "$conf"
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
    if [ "$1" = rabbitmq-server ]; then
        # Debian's /usr/sbin/rabbitmq-server sends the console to a file; the script it wraps
        # logs to stdout, as a container should.
        shift
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
            /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
    fi
fi
exec "$@"
