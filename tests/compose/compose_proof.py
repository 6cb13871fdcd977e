#!/usr/bin/env python3
"""The compose path, proven on a real Docker engine: build, start, send, see, kill, count.

    sudo python3 tests/compose/compose_proof.py            # both stacks (about 5 minutes)
    python3 tests/compose/compose_proof.py --stack single  # docker-compose.yml only

1. Tools: a Docker engine and a Compose client (`docker compose` or Debian's `docker-compose`).
   Missing ones are installed from Debian's packages (docker.io, docker-compose) and dockerd is
   started, unless --no-install.
2. Base images: deploy/standins/build.sh uses the official images where they are local or can
   be pulled, and builds Debian stand-ins where not (docs/operations.md, "Stand-in images").
3. `docker build -t rabbitmesh:local` from the real Dockerfile (PYTHON_IMAGE, PIP_INDEX_URL as
   build args); its size, user, HEALTHCHECK and the absence of compilers are checked.
4. docker-compose.yml: up, every healthcheck healthy, README's `run --rm send-event` answered
   202, the event in event-display's log, `docker stop rabbitmesh` (SIGTERM) graceful within
   the stop timeout, `down -v`.
5. docker-compose.ha.yml: up, all healthy, 3 RabbitMQ nodes in one cluster, quorum queues, JSON
   logs, README's event through HAProxy; then a load of events while one RabbitMQ node and one
   rabbitmesh replica are killed (SIGKILL); every event answered 202 must reach event-display.
   `down -v`.

Host ports are free ones the OS picks, published on 127.0.0.1 only, so the run never collides
with a RabbitMQ or a rabbitmesh already on the host. Standard library only, so it runs with
any Python 3.11. Exit status 0 = proven; each failed check says what it expected.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "rabbitmesh:local"
#: The compose files' stop_grace_period for the rabbitmesh services.
STOP_GRACE = 40.0
#: HA load: least seconds before, between and after the two kills.
STEP = 15.0


class ProofFailed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[compose-proof {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def result(key: str, value: object) -> None:
    """One line of the proof's output, as docs/operations.md quotes it."""
    print(f"RESULT {key}: {value}", flush=True)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise ProofFailed(what)


def sh(
    *cmd: str, env: dict[str, str] | None = None, timeout: float = 600, check_rc: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    if check_rc and proc.returncode != 0:
        raise ProofFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def wait_for(what: str, cond: Callable[[], object], timeout: float, every: float = 1.0) -> object:
    """Polls cond() until it returns something truthy; fails naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ProofFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tools ---------------------------------------------------------------------------------------


def engine_up() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def compose_client() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        if subprocess.run([*cmd, "version"], capture_output=True, timeout=60).returncode == 0:
            return cmd
    return None


def apt_install(*packages: str) -> None:
    log(f"apt-get install {' '.join(packages)}")
    sh("apt-get", "update", "-qq", timeout=600)
    sh(
        "apt-get",
        "install",
        "-y",
        "-qq",
        *packages,
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=1200,
    )


def ensure_tools(install: bool) -> list[str]:
    if not engine_up():
        check(install, "no Docker engine (docker info fails) and --no-install given")
        if shutil.which("dockerd") is None:
            apt_install("docker.io")
        log("starting dockerd (log: /var/log/dockerd.log)")
        with open("/var/log/dockerd.log", "ab") as out:
            subprocess.Popen(["dockerd"], stdout=out, stderr=out, start_new_session=True)
        wait_for("dockerd to answer", engine_up, 120, 2)
    cmd = compose_client()
    if cmd is None:
        check(install, "no Compose client and --no-install given")
        apt_install("docker-compose")
        cmd = compose_client()
        check(cmd is not None, "docker-compose installed but `docker-compose version` fails")
    assert cmd is not None
    version = sh(*cmd, "version", "--short", check_rc=False).stdout.strip()
    result("compose client", f"{' '.join(cmd)} {version}")
    result("docker engine", sh("docker", "version", "-f", "{{.Server.Version}}").stdout.strip())
    return cmd


# --- images --------------------------------------------------------------------------------------


def base_images() -> dict[str, str]:
    log("base images: deploy/standins/build.sh")
    out = sh("bash", "deploy/standins/build.sh", timeout=1800).stdout
    images = dict(line.split("=", 1) for line in out.split() if "=" in line)
    for name, image in images.items():
        result(name, image)
    return images


def build_image(images: dict[str, str]) -> None:
    log(f"docker build -t {IMAGE} (PYTHON_IMAGE={images['PYTHON_IMAGE']})")
    args = ["--build-arg", f"PYTHON_IMAGE={images['PYTHON_IMAGE']}"]
    if os.environ.get("PIP_INDEX_URL"):
        args += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    started = time.monotonic()
    sh("docker", "build", *args, "-t", IMAGE, ".", timeout=1800)
    result("image build time", f"{time.monotonic() - started:.0f}s")
    info = json.loads(sh("docker", "image", "inspect", IMAGE).stdout)[0]
    base = json.loads(sh("docker", "image", "inspect", images["PYTHON_IMAGE"]).stdout)[0]
    result(
        "image size",
        f"{info['Size'] / 1e6:.0f} MB ({(info['Size'] - base['Size']) / 1e6:.0f} MB on top of "
        f"the {base['Size'] / 1e6:.0f} MB base {images['PYTHON_IMAGE']})",
    )
    user = info["Config"]["User"]
    check(user.split(":")[0] not in ("", "root", "0"), f"image runs as root ({user!r})")
    check(bool(info["Config"].get("Healthcheck")), "image has no HEALTHCHECK")
    result("image user", user)
    tools = sh(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        IMAGE,
        "-c",
        "for t in gcc cc c++ make ld; do command -v $t; done; true",
    ).stdout.split()
    check(not tools, f"build tools in the final image: {tools}")
    result("build tools in the final image", "none (gcc, cc, c++, make, ld absent)")


# --- compose -------------------------------------------------------------------------------------


class Stack:
    def __init__(self, client: list[str], file: str, project: str, env: dict[str, str]):
        self.client, self.file, self.project, self.env = client, file, project, env

    def compose(self, *args: str, timeout: float = 600, check_rc: bool = True):
        cmd = [*self.client, "-p", self.project, "-f", self.file, *args]
        return sh(*cmd, env=self.env, timeout=timeout, check_rc=check_rc)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        check(bool(cid), f"no container for service {service}")
        return cid

    def services(self) -> list[str]:
        return self.compose("config", "--services").stdout.split()

    def state(self, service: str) -> str:
        """`healthy`/`unhealthy`/`starting` where the service has a healthcheck, else `running`."""
        cid = self.compose("ps", "-q", service).stdout.strip()
        if not cid:
            return "missing"
        fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        return sh("docker", "inspect", "-f", fmt, cid, check_rc=False).stdout.strip()

    def wait_healthy(self, services: list[str], timeout: float) -> None:
        def all_up() -> bool:
            states = {s: self.state(s) for s in services}
            bad = {s: st for s, st in states.items() if st not in ("healthy", "running")}
            if bad:
                log(f"waiting: {bad}")
            return not bad

        wait_for(f"{services} to be healthy", all_up, timeout, 3)

    def logs(self, service: str) -> str:
        """The container's output: stdout (event-display's events), then stderr (logging)."""
        out = sh("docker", "logs", self.container(service), check_rc=False)
        return out.stdout + out.stderr

    def up(self) -> float:
        started = time.monotonic()
        self.compose("up", "-d", timeout=900)
        return started

    def down(self) -> None:
        log(f"{self.file}: down -v")
        self.compose("down", "-v", "--remove-orphans", timeout=300, check_rc=False)
        left = sh(
            "docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"
        ).stdout.split()
        check(not left, f"containers left after down -v: {left}")


def stack_env(images: dict[str, str], *extra_ports: str) -> dict[str, str]:
    env = {**images, "PUBLISH_ADDR": "127.0.0.1"}
    for name in ("HTTP_PORT", "AMQP_PORT", "MANAGEMENT_PORT", *extra_ports):
        env[name] = str(free_port())
    return env


def ids_seen(display_log: str) -> set[str]:
    """Event ids event-display printed (its `  id: ...` context line)."""
    return set(re.findall(r"^\s*id: (\S+)\s*$", display_log, re.M))


def send_readme_event(stack: Stack, event_id: str) -> None:
    out = stack.compose("--profile", "tools", "run", "--rm", "send-event", timeout=300)
    status = re.search(r"^HTTP/\S+ (\d{3})", out.stdout, re.M)
    check(bool(status) and status.group(1) == "202", f"send-event answered:\n{out.stdout}")
    log(f"send-event: {status.group(0)}")
    seen = wait_for(
        f"event {event_id} in event-display's log",
        lambda: event_id in ids_seen(stack.logs("event-display")) and stack.logs("event-display"),
        60,
    )
    block = str(seen).split("☁️  cloudevents.Event")
    shown = next(b for b in block if f"id: {event_id}" in b).split("\n")
    # The event's lines end where the container's logging (stderr, timestamped) starts.
    shown = [ln for ln in shown if ln and not re.match(r"\d{4}-\d\d-\d\d |\{", ln)]
    text = "\n".join(["☁️  cloudevents.Event", *shown]).rstrip()
    result("event seen in event-display's log", "\n" + text)


def graceful_stop(stack: Stack, service: str) -> None:
    cid = stack.container(service)
    started = time.monotonic()
    sh("docker", "stop", "-t", str(int(STOP_GRACE)), cid, timeout=STOP_GRACE + 30)
    took = time.monotonic() - started
    code = sh("docker", "inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip()
    tail = stack.logs(service)
    check(code == "0", f"{service} exited {code} on SIGTERM (137 = killed at the timeout)")
    check(took < STOP_GRACE, f"docker stop took {took:.1f}s, over the {STOP_GRACE}s grace")
    check("shutting down" in tail, f"{service} logged no graceful shutdown:\n{tail[-2000:]}")
    result(f"docker stop {service} (SIGTERM)", f"{took:.1f}s, exit code {code}")


def prove_single(client: list[str], images: dict[str, str]) -> None:
    log("=== docker-compose.yml ===")
    stack = Stack(client, "docker-compose.yml", f"rmproof{os.getpid()}", stack_env(images))
    try:
        started = stack.up()
        services = [s for s in stack.services() if s != "send-event"]
        stack.wait_healthy(services, 300)
        result("single: time from `up -d` to all healthy", f"{time.monotonic() - started:.0f}s")
        # Config from the environment (RABBITMESH_*) and from the mounted /config: the broker
        # the event goes to exists only because /config/broker.yaml was read.
        send_readme_event(stack, "compose-1")
        port = stack.env["HTTP_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            check(r.status == 200, f"/readyz on the published port: {r.status}")
        graceful_stop(stack, "rabbitmesh")
    finally:
        stack.down()


# --- HA ----------------------------------------------------------------------------------------


def post_event(url: str, event_id: str, attempts: int = 40) -> tuple[bool, int]:
    """POSTs one CloudEvent as a client would: retried until 202 (or out of attempts).

    Returns (accepted, retries). Only a 202 counts as accepted: rabbitmesh answers it after
    RabbitMQ confirmed the message, so from then on the event must not be lost.
    """
    body = json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": "com.hj.hi",
            "source": "compose-proof",
            "data": {"n": event_id},
        }
    ).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(
            url, body, {"Content-Type": "application/cloudevents+json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                if r.status == 202:
                    return True, attempt
        except (urllib.error.URLError, OSError, TimeoutError):
            pass
        time.sleep(0.5)
    return False, attempts


def rabbitmq_running_nodes(stack: Stack, service: str) -> list[str]:
    out = stack.compose(
        "exec",
        "-T",
        service,
        "rabbitmqctl",
        "-q",
        "cluster_status",
        "--formatter",
        "json",
        check_rc=False,
    ).stdout
    try:
        return sorted(json.loads(out).get("running_nodes", []))
    except ValueError:
        return []


def prove_ha(client: list[str], images: dict[str, str], events: int) -> None:
    log("=== docker-compose.ha.yml ===")
    env = stack_env(images, "STATS_PORT")
    env["RABBITMESH_ADMIN_TOKEN"] = os.urandom(16).hex()
    stack = Stack(client, "docker-compose.ha.yml", f"rmproofha{os.getpid()}", env)
    try:
        started = stack.up()
        services = [s for s in stack.services() if s != "send-event"]
        stack.wait_healthy(services, 600)
        result("ha: time from `up -d` to all healthy", f"{time.monotonic() - started:.0f}s")
        restarts = {
            s: sh("docker", "inspect", "-f", "{{.RestartCount}}", stack.container(s)).stdout.strip()
            for s in ("rabbitmesh-1", "rabbitmesh-2")
        }
        # Not a failure: `restart: unless-stopped` is part of the layout. Reported because a
        # replica that exits while the cluster forms is worth knowing (docs/operations.md).
        result("ha: restarts of the replicas before healthy", restarts)
        for service, count in restarts.items():
            if count != "0":
                # Why it exited: its earlier run's error lines are still in its log.
                errors = [
                    ln
                    for ln in stack.logs(service).splitlines()
                    if '"level":"error"' in ln or '"level":"critical"' in ln
                ]
                result(f"ha: {service} errors before its restart", errors[:3])
        nodes = wait_for(
            "3 running nodes in rabbitmq1's cluster_status",
            lambda: (n := rabbitmq_running_nodes(stack, "rabbitmq1")) and len(n) == 3 and n,
            120,
            3,
        )
        result("ha: RabbitMQ cluster running nodes", nodes)
        send_readme_event(stack, "compose-ha-1")
        queues = stack.compose(
            "exec", "-T", "rabbitmq1", "rabbitmqctl", "-q", "list_queues", "name", "type"
        ).stdout
        check("quorum" in queues, f"no quorum queue in the cluster:\n{queues}")
        json_lines = [ln for ln in stack.logs("rabbitmesh-1").splitlines() if ln.strip()]
        parsed = [json.loads(ln) for ln in json_lines]  # ValueError = not JSON: fails
        check(len(parsed) >= 3, f"rabbitmesh-1 logged {len(parsed)} lines")
        result("ha: rabbitmesh-1 log lines, all JSON", f"{len(parsed)}, e.g. {json_lines[-1]}")

        url = f"http://127.0.0.1:{env['HTTP_PORT']}/default/br1"
        accepted: list[str] = []
        refused: list[str] = []
        retries = [0]
        lock = threading.Lock()
        stop = threading.Event()
        counter = iter(range(10**9))

        def client() -> None:
            # Paced (about 10 events/s per client) so the load spans both kills on a busy
            # machine instead of finishing before the first one.
            while not stop.is_set():
                with lock:
                    event_id = f"ha-load-{next(counter)}"
                ok, tries = post_event(url, event_id)
                with lock:
                    (accepted if ok else refused).append(event_id)
                    retries[0] += tries
                time.sleep(0.1)

        killed: dict[str, int] = {}

        def killer() -> None:
            # Each step waits for `events` more accepted events and at least STEP seconds:
            # before the first kill, between the two, and after the second. So both kills land
            # in the middle of the load, with time for HAProxy to mark the node down (about 4 s)
            # and the quorum queues to elect new leaders while events keep coming.
            def step(name: str) -> None:
                mark, until = len(accepted) + events, time.monotonic() + STEP
                wait_for(
                    f"{mark} accepted events ({name})",
                    lambda: len(accepted) >= mark and time.monotonic() >= until,
                    600,
                    0.1,
                )

            try:
                for service in ("rabbitmq2", "rabbitmesh-2"):
                    step(f"before killing {service}")
                    log(f"docker kill {service} (SIGKILL) at {len(accepted)} accepted")
                    sh("docker", "kill", stack.container(service))
                    killed[service] = len(accepted)
                step("after the kills")
            finally:
                stop.set()

        load_started = time.monotonic()
        kill_thread = threading.Thread(target=killer, daemon=True)
        kill_thread.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(8):
                pool.submit(client)
        load_took = time.monotonic() - load_started
        kill_thread.join(60)
        check(set(killed) == {"rabbitmq2", "rabbitmesh-2"}, f"not both killed: {killed}")
        result(
            "ha: load",
            f"{len(accepted) + len(refused)} events in {load_took:.0f}s by 8 clients; "
            f"rabbitmq2 killed (SIGKILL) after {killed['rabbitmq2']} accepted, rabbitmesh-2 "
            f"after {killed['rabbitmesh-2']}; {retries[0]} client retries",
        )

        def all_delivered() -> bool:
            missing = set(accepted) - ids_seen(stack.logs("event-display"))
            if missing:
                log(f"waiting for {len(missing)} accepted events to reach event-display")
            return not missing

        try:
            wait_for("every accepted event in event-display's log", all_delivered, 240, 5)
        finally:
            display = stack.logs("event-display")
            seen = ids_seen(display)
            delivered = set(accepted) & seen
            every = re.findall(r"^\s*id: (ha-load-\S+)\s*$", display, re.M)
            result(
                "ha: accepted (202) / delivered / lost / refused after retries",
                f"{len(accepted)} / {len(delivered)} / {len(set(accepted) - seen)} / "
                f"{len(refused)}",
            )
            # At-least-once: a replica killed between the POST to the subscriber and the ack
            # leaves that message to be delivered again by the other replica.
            result(
                "ha: deliveries beyond the first (at-least-once)",
                len(every) - len(seen & set(every)),
            )
        check(not refused, f"{len(refused)} events never accepted: {refused[:10]}")
    finally:
        stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--stack", choices=["single", "ha", "both"], default="both")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install")
    parser.add_argument(
        "--events", type=int, default=150, help="HA load: events before, between, after kills"
    )
    args = parser.parse_args()
    try:
        client = ensure_tools(install=not args.no_install)
        images = base_images()
        build_image(images)
        if args.stack in ("single", "both"):
            prove_single(client, images)
        if args.stack in ("ha", "both"):
            prove_ha(client, images, args.events)
    except ProofFailed as exc:
        log(f"FAILED: {exc}")
        return 1
    log("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
