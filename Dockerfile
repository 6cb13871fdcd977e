# rabbitmesh container image: `docker build -t rabbitmesh .`
#
#   docker run --rm -p 8080:8080 -v "$PWD/config:/config:ro" \
#     -e RABBITMESH_AMQP_URL=amqp://user:pass@rabbitmq-host:5672/ rabbitmesh
#
# Every setting is a RABBITMESH_* environment variable (docs/configuration.md). Manifests are
# read from /config. The same image runs the helper services of docs/contract.md §7 by overriding the
# command, e.g. `command: ["event-display", "--port", "8080"]`.
#
# Build arguments (no edit of this file needed where Docker Hub or PyPI cannot be reached):
#   PYTHON_IMAGE   the base of both stages; anything with Python 3.11 as `python` on PATH and
#                  the venv module (the official python:3.11-slim, or the Debian stand-in that
#                  deploy/standins/build.sh makes, see docs/operations.md)
#   PIP_INDEX_URL  the package index the dependencies come from (pip reads it from the env)
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a virtualenv at /opt/venv with the package and its dependencies ------------------
# A venv rather than `pip install --prefix`: it works the same whether the base has Python in
# /usr/local (official image) or /usr (Debian, whose system pip refuses installs, PEP 668).
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_INDEX_URL=${PIP_INDEX_URL}
WORKDIR /src
RUN python -m venv /opt/venv
# Only what the package build needs (pyproject.toml names README.md as the long description).
COPY pyproject.toml README.md ./
COPY rabbitmesh ./rabbitmesh
# Every dependency ships a wheel, so no compiler is needed; pip itself leaves the venv after
# use, so the runtime image has no installer either.
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall -y -q pip setuptools \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# --- runtime: the same base, the venv, a non-root user ----------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RABBITMESH_CONFIG_DIR=/config \
    RABBITMESH_HTTP_HOST=0.0.0.0 \
    RABBITMESH_HTTP_PORT=8080
COPY --from=build /opt/venv /opt/venv
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
