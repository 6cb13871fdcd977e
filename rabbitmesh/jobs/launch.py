"""One JobSink run: the Job's containers started once with the event as a file, as Knative's
JobSink starts a Kubernetes Job.

What a run sees (Knative's contract): the event in the CloudEvents JSON format in a file named
by `K_EVENT_PATH` (under docker mounted read-only at `/etc/jobsink-event/event`, as Knative
mounts its Secret), `K_EXECUTION_MODE=batch`, and the container's own `env` (value, fieldRef
metadata.name/namespace, secretKeyRef). The event never becomes a command-line word or an
environment value: the command and its arguments come from the manifest alone, so a sender
chooses what a run reads, never what it runs. Runtimes and their guards are ContainerSource's
(rabbitmesh/sources/container.py): the operator's RABBITMESH_CONTAINER_RUNTIME, refused under
RABBITMESH_ALLOW_PROCESS_RUNTIME=false for the process runtime, `--` before the image,
variables passed by name to docker, Secret values redacted from every logged line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rabbitmesh.resources.sinks import JobSink
from rabbitmesh.resources.sources import Container
from rabbitmesh.sources.container import (
    PREEXEC,
    expand,
    inherited_env,
    this_rabbitmesh,
)
from rabbitmesh.sources.secrets import NotReady, Redactor, SecretLookup, secret_value

log = logging.getLogger("rabbitmesh.jobsink")

#: Where Knative mounts the event in the Job's container.
DOCKER_EVENT_DIR = "/etc/jobsink-event"
EVENT_FILE = "event"
#: Output lines of a run kept for its outcome (all of them go to rabbitmesh's log).
LOG_LINES = 20
#: Longest output line kept whole.
LINE_LIMIT = 64 * 1024
#: SIGTERM, then this long, then SIGKILL.
TERMINATION_GRACE = 10.0


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None  # None: never started, or killed past its deadline
    log: list[str]
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.error


def job_env(
    job: JobSink, container: Container, secrets: SecretLookup, found: set[str]
) -> dict[str, str]:
    """The container's environment (without K_EVENT_PATH, which depends on the runtime)."""
    env: dict[str, str] = {}
    for var in container.env:
        if var.field_path == "metadata.name":
            env[var.name] = job.name
        elif var.field_path == "metadata.namespace":
            env[var.name] = job.namespace
        elif var.secret is not None:
            ref = var.secret
            value = secret_value(secrets, job.namespace, ref.name, ref.key, optional=ref.optional)
            if value is not None:
                env[var.name] = value
                found.add(value)
        else:
            env[var.name] = expand(var.value or "", env)
    env["K_EXECUTION_MODE"] = "batch"
    return env


def deadline(job: JobSink) -> float | None:
    """The Job's activeDeadlineSeconds: a run still going then is stopped and failed."""
    spec = (job.spec.job or {}).get("spec")
    value = spec.get("activeDeadlineSeconds") if isinstance(spec, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def docker_name(job: JobSink, container: str, run: str) -> str:
    key = "\0".join((job.namespace, job.name, container, run))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    raw = f"rabbitmesh-job-{job.namespace}-{job.name}-{container}"
    return f"{re.sub(r'[^a-zA-Z0-9_.-]', '-', raw)[:160]}-{digest}"


@dataclass(frozen=True)
class Launch:
    container: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None
    docker_name: str | None
    redact: Redactor


def plan(
    job: JobSink,
    runtime: str,
    docker_args: str,
    secrets: SecretLookup,
    event_dir: Path,
    run: str,
) -> list[Launch]:
    """How to start each container of the Job for one run; NotReady when it cannot."""
    out = []
    for i, c in enumerate(job.containers()):
        found: set[str] = set()
        env = job_env(job, c, secrets, found)
        redact = Redactor(found)
        if runtime == "docker":
            if not c.image:
                raise NotReady(
                    "InvalidSpec",
                    f"spec.job.spec.template.spec.containers[{i}]: the docker runtime needs "
                    "an image",
                )
            env["K_EVENT_PATH"] = f"{DOCKER_EVENT_DIR}/{EVENT_FILE}"
            name = docker_name(job, c.name, run)
            argv = [
                "docker",
                "run",
                "--rm",
                f"--name={name}",
                f"--label=dev.rabbitmesh.jobsink={job.namespace}/{job.name}",
                f"--volume={event_dir}:{DOCKER_EVENT_DIR}:ro",
                *shlex.split(docker_args),
                *(f"--env={k}" for k in env),
            ]
            if c.working_dir:
                argv.append(f"--workdir={c.working_dir}")
            command = [expand(x, env) for x in c.command]
            if command:
                argv.append(f"--entrypoint={command[0]}")
            argv += ["--", c.image, *command[1:], *(expand(a, env) for a in c.args)]
            out.append(Launch(c.name, tuple(argv), env, None, name, redact))
            continue
        env["K_EVENT_PATH"] = str(event_dir / EVENT_FILE)
        command = this_rabbitmesh([expand(x, env) for x in c.command])
        if not command:
            raise NotReady(
                "InvalidSpec",
                f"spec.job.spec.template.spec.containers[{i}] ({c.name}): the process runtime "
                "runs command + args, and this container has no command; add `command:` or "
                "use the docker runtime",
            )
        argv = [*command, *(expand(a, env) for a in c.args)]
        out.append(Launch(c.name, tuple(argv), env, c.working_dir, None, redact))
    return out


class EventFile:
    """A private directory holding the event's JSON for one run; removed afterwards.

    The outer directory is mode 0700 (no other local user reads the event); the inner one,
    bind-mounted under docker, is readable so that a container's non-root user can read it.
    """

    def __init__(self, body: bytes) -> None:
        self.outer = Path(tempfile.mkdtemp(prefix="rabbitmesh-jobsink-"))
        self.dir = self.outer / "event"
        self.dir.mkdir(mode=0o755)
        path = self.dir / EVENT_FILE
        path.write_bytes(body)
        path.chmod(0o644)

    def remove(self) -> None:
        shutil.rmtree(self.outer, ignore_errors=True)


async def run_all(launches: list[Launch], what: str, limit: float | None) -> Outcome:
    """Start every container, wait for all; the run succeeds when every one exits 0."""
    lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
    results = await asyncio.gather(*(_run_one(launch, what, lines, limit) for launch in launches))
    errors = [e for _, e in results if e]
    codes = [c for c, _ in results]
    worst = next((c for c in codes if c != 0), 0)
    return Outcome(worst, list(lines), "; ".join(errors))


async def _run_one(
    launch: Launch, what: str, lines: collections.deque[str], limit: float | None
) -> tuple[int | None, str]:
    tag = f"jobsink={what} container={launch.container}"
    redact = launch.redact
    try:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv,
            env={**inherited_env(), **launch.env},
            cwd=launch.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=PREEXEC,
            limit=LINE_LIMIT,
        )
    except OSError as e:
        why = f"{launch.container}: cannot start: {redact(str(e))}"
        log.error("%s: %s", tag, why)
        return None, why
    log.info("%s: started (pid %d): %s", tag, proc.pid, shlex.join(redact(a) for a in launch.argv))
    assert proc.stdout is not None
    pump = asyncio.create_task(_pump(proc.stdout, tag, redact, lines))
    try:
        async with asyncio.timeout(limit):
            code = await proc.wait()
    except TimeoutError:
        await _terminate(proc, launch)
        return None, f"{launch.container}: still running after activeDeadlineSeconds ({limit:g}s)"
    except asyncio.CancelledError:  # rabbitmesh stops: the run ends with it
        await _terminate(proc, launch)
        raise
    finally:
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(pump, 2.0)
    log.info("%s: exited with status %d", tag, code)
    return code, ""


async def _pump(
    stream: asyncio.StreamReader, tag: str, redact: Redactor, lines: collections.deque[str]
) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:
            line = await stream.read(LINE_LIMIT)
        if not line:
            return
        text = redact(line.decode(errors="replace").rstrip("\r\n"))
        lines.append(text)
        log.info("%s: %s", tag, text)


async def _terminate(proc: asyncio.subprocess.Process, launch: Launch) -> None:
    if launch.docker_name:  # the docker CLI's death does not stop the container
        with contextlib.suppress(OSError):
            rm = await asyncio.create_subprocess_exec(
                "docker",
                "rm",
                "-f",
                launch.docker_name,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await rm.wait()
    for sig, wait in ((signal.SIGTERM, TERMINATION_GRACE), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
            return
        except TimeoutError:
            continue
