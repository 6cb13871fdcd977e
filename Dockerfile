# rabbitmesh container image: `docker build -t rabbitmesh .`
#
#   docker run --rm -p 8080:8080 -v "$PWD/config:/config:ro" \
#     -e RABBITMESH_AMQP_URL=amqp://user:pass@rabbitmq-host:5672/ rabbitmesh
#
# Every setting is a RABBITMESH_* environment variable (docs/configuration.md). Manifests are
# read from /config. The same image runs the helper services of docs/contract.md §7 by overriding the
# command, e.g. `command: ["event-display", "--port", "8080"]`.

# --- build: install the package and its dependencies into /install ----------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the package build needs (pyproject.toml names README.md as the long description).
COPY pyproject.toml README.md ./
COPY rabbitmesh ./rabbitmesh
RUN pip install --no-cache-dir --prefix=/install .

# --- runtime: the slim base, the installed package, a non-root user ---------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RABBITMESH_CONFIG_DIR=/config \
    RABBITMESH_HTTP_HOST=0.0.0.0 \
    RABBITMESH_HTTP_PORT=8080
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 rabbitmesh \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin rabbitmesh \
    && mkdir -p /config \
    && rabbitmesh --version
USER 10001:10001
EXPOSE 8080
# Healthy = ready: connected to RabbitMQ and every manifest reconciled (GET /readyz is 200).
# The slim image has no curl; urlopen raises (exit 1) on a 503 or a refused connection.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RABBITMESH_HTTP_PORT', '8080') + '/readyz', timeout=2)"]
# SIGTERM (docker stop) is a graceful shutdown: stop taking HTTP, finish in-flight deliveries,
# then close AMQP. Give it RABBITMESH_SHUTDOWN_TIMEOUT (30s) plus a margin: stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["rabbitmesh"]
CMD ["run"]
