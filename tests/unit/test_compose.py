"""The container image, the compose files and the Grafana dashboard, checked without Docker.

These tests need no Docker engine: they read the files the way Docker would and check what
would otherwise only fail at `docker compose up`: services, dependencies, mounts, ports,
settings names, the health check, the HA layout and the dashboard's metrics. `docker compose
config` (or Debian's `docker-compose config`, which `./dev.sh test` installs) checks each file
too. The real engine run is tests/compose (marker `compose`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp import web

from rabbitmesh import metrics
from rabbitmesh.resources.loader import load_path
from rabbitmesh.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_HA = ROOT / "docker-compose.ha.yml"
COMPOSE_FILES = [COMPOSE, COMPOSE_HA]
DOCKERFILE = ROOT / "Dockerfile"
HAPROXY = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
CLUSTER_CONF = ROOT / "deploy" / "rabbitmq" / "cluster.conf"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
SETTINGS_ENV = {f"RABBITMESH_{name.upper()}" for name in Settings.model_fields}
#: RABBITMESH_* names that are not `rabbitmesh run` settings: the CLI's server address, and
#: the knobs of dev.sh and the test suite.
OTHER_ENV = {"RABBITMESH_SERVER", "RABBITMESH_SKIP_RABBITMQ_SETUP", "RABBITMESH_TEST_AMQP_URL"}
#: The environment `docker compose config` needs for the HA file's required variable.
COMPOSE_ENV = {"RABBITMESH_ADMIN_TOKEN": "test-token"}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def services(path: Path) -> dict[str, dict[str, Any]]:
    return load(path)["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR:-default}` / `${VAR:?error}` / `${VAR}`, with `env` as the shell."""
    env = {**COMPOSE_ENV, **(env or {})}

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"${{{name}}} has no value and no default in {value!r}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


def is_rabbitmesh_run(service: dict[str, Any]) -> bool:
    """A service that runs `rabbitmesh run` (the image's default command)."""
    return service.get("build") is not None and service.get("command") in (None, ["run"])


def image_of(service: dict[str, Any]) -> str:
    """The image a service runs by default (`${RABBITMQ_IMAGE:-rabbitmq:...}` interpolated)."""
    return interpolate(str(service.get("image", "")))


def build_context(service: dict[str, Any]) -> str:
    build = service["build"]
    return build if isinstance(build, str) else build["context"]


def rabbitmq_services(svcs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in svcs.items() if image_of(s).startswith("rabbitmq:")}


def healthcheck_command() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK")]
    return json.loads(line.split(" CMD ", 1)[1])


# --- compose files --------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_service_has_an_image_or_a_build(path):
    for name, svc in services(path).items():
        assert svc.get("image") or svc.get("build"), name
        if svc.get("build"):
            assert (path.parent / build_context(svc) / "Dockerfile").is_file(), name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_mounted_host_paths_exist_and_named_volumes_are_declared(path):
    declared = set((load(path).get("volumes") or {}).keys())
    mounts = 0
    for name, svc in services(path).items():
        for vol in svc.get("volumes") or []:
            source, target, *mode = vol.split(":")
            assert target.startswith("/"), (name, vol)
            assert mode in ([], ["ro"], ["rw"]), (name, vol)
            if source.startswith((".", "/")):
                assert (path.parent / source).exists(), f"{name}: {source} does not exist"
                mounts += 1
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    assert mounts >= 1


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_rabbitmesh_variable_is_a_real_setting(path):
    named = 0
    for name, svc in services(path).items():
        for var in env_of(svc):
            if var.startswith("RABBITMESH_"):
                assert var in SETTINGS_ENV, f"{name}: {var} is not a setting"
                named += 1
        if is_rabbitmesh_run(svc):
            # The values must pass the settings' own validation, as `rabbitmesh run` does.
            env = {
                k.removeprefix("RABBITMESH_").lower(): interpolate(v)
                for k, v in env_of(svc).items()
                if k.startswith("RABBITMESH_")
            }
            Settings(**env)
    assert named >= 4
    for var in re.findall(r"\b(RABBITMESH_\w+)=", DOCKERFILE.read_text()):
        assert var in SETTINGS_ENV, f"Dockerfile: {var} is not a setting"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_ports_are_sane(path):
    host_ports: list[int] = []
    for name, svc in services(path).items():
        for mapping in svc.get("ports") or []:
            assert isinstance(mapping, str), f"{name}: quote port mappings ({mapping!r})"
            # ADDRESS:HOST:CONTAINER, address and host port overridable (PUBLISH_ADDR, *_PORT).
            addr, host, container = interpolate(mapping).rsplit(":", 2)
            assert addr == "0.0.0.0", (name, mapping)
            host, container = int(host), int(container)
            assert 1024 <= host <= 65535 and 1 <= container <= 65535, (name, mapping)
            host_ports.append(host)
            if is_rabbitmesh_run(svc):
                assert container == int(env_of(svc).get("RABBITMESH_HTTP_PORT", "8080"))
        for port in svc.get("expose") or []:
            assert 1 <= int(port) <= 65535, (name, port)
    assert len(host_ports) == len(set(host_ports)), f"host port published twice: {host_ports}"


def test_every_compose_variable_has_a_default_and_is_documented():
    """The variables that move images and ports (PUBLISH_ADDR, HTTP_PORT, ...) are optional
    and listed in docs/operations.md, where a user whose port 5672 is taken looks."""
    ops = (ROOT / "docs" / "operations.md").read_text()
    names = set()
    for path in COMPOSE_FILES:
        for name, op in re.findall(r"\$\{(\w+)(:-|:\?)?", path.read_text()):
            if name.startswith("RABBITMESH_") or name in (
                "RABBITMQ_PASSWORD",
                "RABBITMQ_ERLANG_COOKIE",
            ):
                continue  # settings and secrets, documented with the settings and security
            assert op == ":-", f"{path.name}: ${{{name}}} has no default"
            names.add(name)
    assert {"PUBLISH_ADDR", "HTTP_PORT", "AMQP_PORT", "PYTHON_IMAGE", "RABBITMQ_IMAGE"} <= names
    for name in names:
        assert f"`{name}`" in ops, f"docs/operations.md does not list {name}"


def test_rabbitmesh_waits_for_a_healthy_rabbitmq():
    svcs = services(COMPOSE)
    image = image_of(svcs["rabbitmq"])
    assert image.startswith("rabbitmq:") and "management" in image
    assert "rabbitmq-diagnostics" in svcs["rabbitmq"]["healthcheck"]["test"]
    ports = {interpolate(p) for p in svcs["rabbitmq"]["ports"]}
    assert {"0.0.0.0:5672:5672", "0.0.0.0:15672:15672"} <= ports
    # ... and each is movable, for a host whose own RabbitMQ holds 5672 already.
    moved = {interpolate(p, {"AMQP_PORT": "25672"}) for p in svcs["rabbitmq"]["ports"]}
    assert "0.0.0.0:25672:5672" in moved
    mesh = svcs["rabbitmesh"]
    assert mesh["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert "./deploy/compose/config:/config:ro" in mesh["volumes"]
    env = env_of(mesh)
    amqp = urlsplit(interpolate(env["RABBITMESH_AMQP_URL"]))
    assert (amqp.scheme, amqp.hostname, amqp.port) == ("amqp", "rabbitmq", 5672)
    user = svcs["rabbitmq"]["environment"]
    assert amqp.username == user["RABBITMQ_DEFAULT_USER"]
    assert amqp.password == interpolate(user["RABBITMQ_DEFAULT_PASS"])
    assert env["RABBITMESH_CONFIG_DIR"] == "/config"
    assert [interpolate(p) for p in mesh["ports"]] == ["0.0.0.0:8080:8080"]
    assert [
        interpolate(p, {"PUBLISH_ADDR": "127.0.0.1", "HTTP_PORT": "18080"}) for p in mesh["ports"]
    ] == ["127.0.0.1:18080:8080"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_event_display_and_send_event_helpers(path):
    svcs = services(path)
    display = svcs["event-display"]
    assert display["command"] == ["event-display", "--port", "8080"]
    assert display["image"] == next(s["image"] for s in svcs.values() if is_rabbitmesh_run(s))
    # The image's HEALTHCHECK is for `rabbitmesh run` (/readyz); the helper serves /healthz.
    assert display["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
    assert "/healthz" in display["healthcheck"]["test"][3]
    send = svcs["send-event"]
    assert send["profiles"] == ["tools"]
    url = next(a for a in send["command"] if a.startswith("http://"))
    host = urlsplit(url).hostname
    assert host in svcs, f"send-event posts to {host}, which is no service"
    assert host in send["depends_on"]
    body = json.loads(send["command"][send["command"].index("-d") + 1])
    assert {"specversion", "id", "type", "source"} <= set(body)
    namespace, broker = urlsplit(url).path.strip("/").split("/")
    resources = load_path(ROOT / "deploy" / "compose" / "config")
    brokers = {(r.namespace, r.name) for r in resources if r.KIND == "Broker"}
    assert (namespace, broker) in brokers


def test_compose_manifests_load_and_address_services_by_name():
    resources = load_path(ROOT / "deploy" / "compose" / "config")
    kinds = sorted(r.KIND for r in resources)
    assert "Broker" in kinds and "Trigger" in kinds
    names = set(services(COMPOSE)) & set(services(COMPOSE_HA))
    for r in resources:
        if r.KIND == "Trigger":
            url = r.spec.subscriber.uri
            host = urlsplit(url).hostname
            assert host not in ("127.0.0.1", "localhost"), f"{r.name}: {url} is the container"
            assert host in names, f"{r.name}: {host} is no service of both compose files"


# --- HA ----------------------------------------------------------------------------------------


def test_ha_has_three_clustered_rabbitmq_nodes():
    svcs = services(COMPOSE_HA)
    nodes = rabbitmq_services(svcs)
    assert len(nodes) == 3
    cookies = {env_of(s)["RABBITMQ_ERLANG_COOKIE"] for s in nodes.values()}
    assert len(cookies) == 1, "the nodes must share one Erlang cookie"
    conf = CLUSTER_CONF.read_text()
    assert "cluster_formation.peer_discovery_backend = classic_config" in conf
    node_line = r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$"
    listed = re.findall(node_line, conf, re.M)
    assert sorted(listed) == sorted(s["hostname"] for s in nodes.values())
    for name, svc in nodes.items():
        assert "rabbitmq-diagnostics" in svc["healthcheck"]["test"], name
        assert any(
            v.startswith("./deploy/rabbitmq/cluster.conf:/etc/rabbitmq/conf.d/")
            for v in svc["volumes"]
        ), name


def test_ha_has_two_quorum_replicas_behind_a_load_balancer_checking_readyz():
    svcs = services(COMPOSE_HA)
    replicas = {n: s for n, s in svcs.items() if is_rabbitmesh_run(s)}
    assert len(replicas) == 2
    nodes = rabbitmq_services(svcs)
    lb = svcs["lb"]
    assert image_of(lb).startswith("haproxy:")
    assert "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in lb["volumes"]
    cfg = HAPROXY.read_text()
    assert re.search(r"option httpchk GET /readyz\b", cfg)
    for name, svc in replicas.items():
        env = env_of(svc)
        assert env["RABBITMESH_QUEUE_TYPE"] == "quorum", name
        for node in nodes:
            assert svc["depends_on"][node]["condition"] == "service_healthy", (name, node)
        # The replica is a server of the HTTP backend, addressed by its service name.
        assert re.search(rf"^\s*server {re.escape(name)} {re.escape(name)}:8080\b", cfg, re.M)
        assert not svc.get("ports"), f"{name}: clients must come in through the load balancer"
        amqp = urlsplit(interpolate(env["RABBITMESH_AMQP_URL"]))
        assert (amqp.hostname, amqp.port) == ("lb", 5672), "AMQP must survive one node down"
        assert urlsplit(env["RABBITMESH_PUBLIC_URL"]).hostname == "lb"
    # The AMQP frontend is TCP and balances every node.
    amqp_backend = cfg.split("backend rabbitmq\n", 1)[1]
    assert "mode tcp" in amqp_backend
    for node, svc in nodes.items():
        assert re.search(rf"server {node} {svc['hostname']}:5672\b", amqp_backend), node
    assert "bind :5672" in cfg and "bind :8080" in cfg


def test_ha_requires_an_admin_token():
    for svc in services(COMPOSE_HA).values():
        if is_rabbitmesh_run(svc):
            with pytest.raises(AssertionError):
                interpolate(env_of(svc)["RABBITMESH_ADMIN_TOKEN"], {"RABBITMESH_ADMIN_TOKEN": ""})


# --- docker compose itself ---------------------------------------------------------------------


def compose_client() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return cmd
    return None


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_docker_compose_config_accepts_the_file(path):
    cmd = compose_client()
    if cmd is None:
        pytest.fail(
            "no Docker Compose client here (`docker compose version` and `docker-compose "
            "version` both fail): `./dev.sh test` installs Debian's docker-compose"
        )
    result = subprocess.run(
        [*cmd, "-f", str(path), "--profile", "tools", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **COMPOSE_ENV},
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    instructions = [ln for ln in text.replace("\\\n", " ").splitlines() if ln and ln[0] != "#"]
    # Both stages start from one base, python:3.11-slim unless PYTHON_IMAGE says otherwise
    # (the stand-in where Docker Hub cannot be reached), and pip reads PIP_INDEX_URL.
    froms = [ln for ln in instructions if ln.startswith("FROM ")]
    assert len(froms) == 2 and all(ln.split()[1] == "${PYTHON_IMAGE}" for ln in froms)
    assert instructions[0] == "ARG PYTHON_IMAGE=python:3.11-slim"
    assert "ARG PIP_INDEX_URL=https://pypi.org/simple" in instructions
    assert "COPY --from=build /opt/venv /opt/venv" in instructions
    users = [ln.split()[1] for ln in instructions if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "EXPOSE 8080" in instructions
    assert 'ENTRYPOINT ["rabbitmesh"]' in instructions
    assert 'CMD ["run"]' in instructions
    assert re.search(r"RABBITMESH_CONFIG_DIR=/config\b", text)
    assert "--no-cache-dir" in text
    ignored = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    assert {".venv", ".git", ".pytest_cache"} <= ignored
    assert not {"rabbitmesh", "pyproject.toml", "README.md"} & ignored  # the build needs them
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for part in shlex.split(src):
            assert (ROOT / part).exists(), part


def test_healthcheck_probes_readyz():
    cmd = healthcheck_command()
    assert cmd[:2] == ["python", "-c"]
    assert "/readyz" in cmd[2]


class FakeHealth:
    """An HTTP server answering one path with a status the test sets, recording requests."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.status = 200
        self.seen: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.seen.append(request.path)
        return web.Response(status=self.status)

    async def __aenter__(self) -> FakeHealth:
        app = web.Application()
        app.router.add_get(self.path, self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def exit_code(code: str, env: dict[str, str] | None = None) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_image_healthcheck_passes_on_200_and_fails_on_503():
    """Runs the Dockerfile's HEALTHCHECK Python against a server answering like /readyz."""
    code = healthcheck_command()[2]
    async with FakeHealth("/readyz") as server:
        env = {"RABBITMESH_HTTP_PORT": str(server.port)}
        assert await exit_code(code, env) == 0
        server.status = 503
        assert await exit_code(code, env) != 0
    assert server.seen == ["/readyz", "/readyz"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
async def test_helper_healthcheck_passes_on_204_and_fails_when_down(path):
    code = services(path)["event-display"]["healthcheck"]["test"][3]
    assert ":8080/healthz" in code
    async with FakeHealth("/healthz") as server:
        server.status = 204  # what the helpers answer (docs/helper-services.md)
        assert await exit_code(code.replace(":8080/", f":{server.port}/")) == 0
        server.status = 500
        assert await exit_code(code.replace(":8080/", f":{server.port}/")) != 0
    assert server.seen == ["/healthz", "/healthz"]


# --- Grafana dashboard --------------------------------------------------------------------------


def exposed_metric_names() -> set[str]:
    """Every series name rabbitmesh/metrics.py exposes (counters get `_total`, ...)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in metrics.REGISTRY.collect():
        for suffix in suffixes.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_grafana_dashboard_is_importable_and_uses_real_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = exposed_metric_names()
    used: set[str] = set()
    for p in panels(dash):
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            found = re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", t["expr"])
            assert found, f"{p['title']}: no metric selector in {t['expr']!r}"
            for name in found:
                assert name in known, f"{p['title']}: {name} is not in rabbitmesh/metrics.py"
            used.update(found)
    wanted = {
        "event_count_total",
        "ingress_request_size_bytes_bucket",
        "event_dispatch_latencies_bucket",
        "event_retries_total",
        "event_dead_lettered_total",
        "event_dropped_total",
        "messages_parked_total",
    }
    assert wanted <= used, f"no panel for {wanted - used}"
    for variable in variables.values():
        for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", json.dumps(variable)):
            assert name in known


# --- docs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["operations.md", "troubleshooting.md", "comparison.md"])
def test_ops_docs_name_only_real_settings(doc):
    text = (ROOT / "docs" / doc).read_text()
    for var in set(re.findall(r"\bRABBITMESH_[A-Z_]+[A-Z]\b", text)):
        assert var in SETTINGS_ENV | OTHER_ENV, f"docs/{doc}: {var} is not a setting"


def test_readme_lists_the_new_docs_and_keeps_its_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert "./dev.sh run" in first_block and "./dev.sh test" in first_block
    for doc in ("operations.md", "troubleshooting.md", "comparison.md"):
        assert f"docs/{doc}" in text
    assert "docker compose up" in text
