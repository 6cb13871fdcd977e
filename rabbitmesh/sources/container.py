"""ContainerSource: each container of `spec.template` as a supervised process.

Environment, as Knative's ContainerSource (through its SinkBinding) sets it: `NAME` and
`NAMESPACE` of the source, then the container's own `env` (`value`, `valueFrom.fieldRef` of
`metadata.name`/`metadata.namespace` — the source plays the pod —, `valueFrom.secretKeyRef`),
then `K_SINK` and `K_CE_OVERRIDES`. `$(VAR)` in env values, `command` and `args` expands as
Kubernetes expands it (`$$(VAR)` stays literal).

Runtimes: RABBITMESH_CONTAINER_RUNTIME, the operator's choice. A source whose annotation
`rabbitmesh.dev/runtime` asks for another one does not run (not Ready, `RuntimeNotAllowed`),
nor does any with RABBITMESH_ALLOW_PROCESS_RUNTIME=false and the process runtime:
- `process` (default): runs `command` + `args` with rabbitmesh's environment (minus every
  `RABBITMESH_*` variable: the admin token stays out of children) plus the container's. A
  container with no command whose image is Knative's heartbeats sample runs the built-in
  `rabbitmesh heartbeats` instead; any other image needs a command. A command `rabbitmesh`
  runs this rabbitmesh's own Python when `rabbitmesh` is not on PATH.
- `docker`: `docker run --rm --name=rabbitmesh-{ns}-{name}-{container}-{hash} ... -- IMAGE
  ARGS`, with the environment passed by name (`--env=K_SINK`), so no value shows in `ps`, and
  RABBITMESH_DOCKER_ARGS (default `--network host`, so `K_SINK` URLs on localhost work). The
  hash of (namespace, name, container) keeps names apart that would read the same; `--` and
  the image reference's validation keep the image from being read as an option.

Each process runs in its own process group, dies with rabbitmesh (Linux: parent-death signal)
and is restarted when it exits, after a capped exponential backoff (0.5 s doubling up to 30 s,
back to 0.5 s once it ran 10 s). Its stdout and stderr lines go to rabbitmesh's log as
`source=ContainerSource ns/name container=c: line`. No value read from a Secret is ever
logged: in the argv logged at start, in error messages and in the process's own output lines,
every occurrence of one is replaced by `<redacted>`. Stopping (source deleted or changed,
rabbitmesh stopping) sends SIGTERM to the group, then SIGKILL after 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rabbitmesh.resources.sources import RUNTIME_ANNOTATION, Container, ContainerSource
from rabbitmesh.sources.manager import Plan, Problem, Runtime
from rabbitmesh.sources.secrets import NotReady, Redactor, SecretLookup, secret_value
from rabbitmesh.sources.sinkbinding import binding_env

log = logging.getLogger("rabbitmesh.sources.container")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
#: A process that ran this long counts as healthy: its next restart waits BACKOFF_INITIAL.
HEALTHY_AFTER = 10.0
#: SIGTERM, then this long, then SIGKILL (Kubernetes' default grace is 30 s; processes here
#: are small).
TERMINATION_GRACE = 10.0
#: Longest log line kept whole.
LINE_LIMIT = 1024 * 1024

#: Images of Knative's samples that `rabbitmesh` has built in, for the process runtime.
BUILTIN_IMAGES = {"heartbeats": "heartbeats"}

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, unknown ones stay,
    `$$` is a literal `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def builtin_command(image: str | None) -> list[str] | None:
    """`rabbitmesh <tool>` for a Knative sample image (…/cmd/heartbeats[:tag|@digest])."""
    if not image:
        return None
    path = image.split("@", 1)[0]
    last = path.rsplit("/", 1)[-1].split(":", 1)[0]
    if "knative" not in path or last not in BUILTIN_IMAGES:
        return None
    return [sys.executable, "-m", "rabbitmesh", BUILTIN_IMAGES[last]]


def this_rabbitmesh(command: list[str]) -> list[str]:
    """`rabbitmesh ...` runs this very rabbitmesh (same Python), even off PATH (a venv)."""
    if command and command[0] == "rabbitmesh" and shutil.which("rabbitmesh") is None:
        return [sys.executable, "-m", "rabbitmesh", *command[1:]]
    return command


def container_env(
    source: ContainerSource,
    container: Container,
    sink: str,
    secrets: SecretLookup,
    secret_values: set[str] | None = None,
) -> dict[str, str]:
    """The container's environment (what rabbitmesh adds, not what it inherits). The values
    read from Secrets are added to `secret_values`: they must never reach the log."""
    binding = binding_env(
        sink,
        source.spec.ce_overrides.dump() if source.spec.ce_overrides else None,
        source.name,
        source.namespace,
    )
    env = {"NAME": binding["NAME"], "NAMESPACE": binding["NAMESPACE"]}
    for var in container.env:
        if var.field_path == "metadata.name":
            env[var.name] = source.name
        elif var.field_path == "metadata.namespace":
            env[var.name] = source.namespace
        elif var.secret is not None:
            ref = var.secret
            value = secret_value(
                secrets, source.namespace, ref.name, ref.key, optional=ref.optional
            )
            if value is not None:
                env[var.name] = value
                if secret_values is not None:
                    secret_values.add(value)
        else:
            env[var.name] = expand(var.value or "", env)
    for name in ("K_SINK", "K_CE_OVERRIDES"):  # last, as Knative's binding appends them
        env.pop(name, None)
        env[name] = binding[name]
    return env


def inherited_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RABBITMESH_")}


def docker_name(source: ContainerSource, container: Container) -> str:
    """`rabbitmesh-{ns}-{name}-{container}-{hash}`: the readable part can be the same for two
    sources (`team-a`/`sync` and `team`/`a-sync`), the hash of (namespace, name, container)
    cannot, so one source's start never removes another's container."""
    key = "\0".join((source.namespace, source.name, container.name))
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    raw = f"rabbitmesh-{source.namespace}-{source.name}-{container.name}"
    return f"{re.sub(r'[^a-zA-Z0-9_.-]', '-', raw)[:180]}-{digest}"


def docker_argv(
    source: ContainerSource, container: Container, env: dict[str, str], docker_args: str
) -> list[str]:
    """`docker run` for one container: Kubernetes' command overrides the entrypoint, args
    the image's CMD; variables are passed by name (their values come with the process).
    Every option from the manifest is written `--option=value`, and `--` ends the options
    before the image, so no manifest value can be read as another option."""
    assert container.image, "checked by the plan"
    argv = [
        "docker",
        "run",
        "--rm",
        f"--name={docker_name(source, container)}",
        f"--label=dev.rabbitmesh.source={source.namespace}/{source.name}",
        *shlex.split(docker_args),  # the operator's, not the manifest's
    ]
    argv += [f"--env={name}" for name in env]
    if container.working_dir:
        argv.append(f"--workdir={container.working_dir}")
    command = [expand(c, env) for c in container.command]
    if command:
        argv.append(f"--entrypoint={command[0]}")
    argv += ["--", container.image]
    argv += command[1:]
    argv += [expand(a, env) for a in container.args]
    return argv


@dataclass(frozen=True)
class Launch:
    """How to start one container: argv, the full environment, working directory."""

    container: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # what rabbitmesh adds (the fingerprint's part)
    cwd: str | None
    docker_name: str | None = None
    #: Hides the Secret values this container got (as such or inside an expansion) in
    #: everything logged about it: its argv, its status messages, its output lines.
    redact: Redactor = Redactor()

    def environ(self) -> dict[str, str]:
        return {**inherited_env(), **dict(self.env)}


def launches(
    source: ContainerSource, sink: str, runtime: str, docker_args: str, secrets: SecretLookup
) -> list[Launch]:
    out = []
    for i, c in enumerate(source.containers()):
        found: set[str] = set()
        env = container_env(source, c, sink, secrets, found)
        redact = Redactor(found)
        if runtime == "docker":
            if not c.image:
                raise NotReady(
                    "InvalidSpec",
                    f"spec.template.spec.containers[{i}]: the docker runtime needs an image",
                )
            name = docker_name(source, c)
            argv = docker_argv(source, c, env, docker_args)
            out.append(Launch(c.name, tuple(argv), tuple(env.items()), None, name, redact))
            continue
        command = this_rabbitmesh([expand(x, env) for x in c.command]) or builtin_command(c.image)
        if not command:
            raise NotReady(
                "InvalidSpec",
                f"spec.template.spec.containers[{i}] ({c.name}): the process runtime runs "
                f"command + args, and this container has no command (image {c.image!r}). "
                "Add `command:` (e.g. [rabbitmesh, heartbeats]) or use the docker runtime",
            )
        argv = [*command, *(expand(a, env) for a in c.args)]
        out.append(Launch(c.name, tuple(argv), tuple(env.items()), c.working_dir, None, redact))
    return out


class RunsContainers(Protocol):
    """What picks a runtime: a ContainerSource or a JobSink (its annotation)."""

    @property
    def runtime(self) -> str | None: ...


def runtime_for(source: RunsContainers, runtime: str, allow_process: bool) -> str:
    """The runtime the operator chose (RABBITMESH_CONTAINER_RUNTIME), never the manifest's:
    whoever may write a manifest must not pick how it runs on this host. NotReady
    (`RuntimeNotAllowed`) when the annotation asks for another runtime, or when the process
    runtime is turned off (RABBITMESH_ALLOW_PROCESS_RUNTIME=false)."""
    asked = source.runtime
    if asked is not None and asked != runtime:
        raise NotReady(
            "RuntimeNotAllowed",
            f"annotation {RUNTIME_ANNOTATION} asks for the {asked} runtime, but this "
            f"rabbitmesh runs containers with the {runtime} runtime "
            "(RABBITMESH_CONTAINER_RUNTIME); remove the annotation or set it to "
            f"{runtime!r}",
        )
    if runtime == "process" and not allow_process:
        raise NotReady(
            "RuntimeNotAllowed",
            "the process runtime is turned off on this rabbitmesh "
            "(RABBITMESH_ALLOW_PROCESS_RUNTIME=false): containers run only with "
            "RABBITMESH_CONTAINER_RUNTIME=docker",
        )
    return runtime


def plan(
    source: ContainerSource,
    sink: str,
    runtime: str,
    docker_args: str,
    secrets: SecretLookup,
    allow_process: bool = True,
) -> Plan:
    runtime = runtime_for(source, runtime, allow_process)
    todo = launches(source, sink, runtime, docker_args, secrets)
    what = f"ContainerSource {source.namespace}/{source.name}"
    return Plan(
        key=source.key,
        what=what,
        fingerprint=(runtime, todo),
        work=lambda rt: run(todo, rt),
    )


async def run(todo: list[Launch], rt: Runtime) -> None:
    problems: dict[str, Problem] = {}

    def report(container: str, problem: Problem) -> None:
        problems[container] = problem
        rt.report(next((p for p in problems.values() if p is not None), None))

    async with asyncio.TaskGroup() as group:
        for launch in todo:
            group.create_task(
                Supervisor(launch, rt.what, functools.partial(report, launch.container)).run()
            )


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a child gets SIGKILL when rabbitmesh dies, even by SIGKILL, so no orphan
    keeps posting events while the next leader starts its own copy."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return set_signal


#: Set in every child (ContainerSource processes, JobSink runs): dies with rabbitmesh.
_PREEXEC = _parent_death_signal()
PREEXEC = _PREEXEC


class Supervisor:
    """Keeps one container's process running; restarts it with backoff when it exits."""

    def __init__(self, launch: Launch, what: str, report: Callable[[Problem], None]) -> None:
        self.launch = launch
        self.what = what
        self.report = report
        self.tag = f"source={what} container={launch.container}"

    async def run(self) -> None:
        delay = BACKOFF_INITIAL
        loop = asyncio.get_running_loop()
        while True:
            if self.launch.docker_name:
                await self._docker_rm()
            started = loop.time()
            try:
                code = await self._run_once()
            except OSError as e:  # not found, not executable, bad cwd
                redact = self.launch.redact
                log.error(
                    "%s: cannot start %r: %s", self.tag, redact(self.launch.argv[0]), redact(str(e))
                )
                self.report(
                    ("ContainerFailed", f"{self.launch.container}: cannot start: {redact(str(e))}")
                )
            else:
                if loop.time() - started >= HEALTHY_AFTER:
                    delay = BACKOFF_INITIAL
                log.warning("%s: exited with status %s; restarting in %.1fs", self.tag, code, delay)
                self.report(
                    (
                        "BackOff",
                        f"{self.launch.container} exited with status {code}; "
                        f"restarting in {delay:g}s",
                    )
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _run_once(self) -> int:
        proc = await asyncio.create_subprocess_exec(
            *self.launch.argv,
            env=self.launch.environ(),
            cwd=self.launch.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: stopping reaches its children
            preexec_fn=_PREEXEC,
            limit=LINE_LIMIT,
        )
        # Each word is redacted before quoting: quoting could split a value in pieces.
        argv = shlex.join(self.launch.redact(a) for a in self.launch.argv)
        log.info("%s: started (pid %d): %s", self.tag, proc.pid, argv)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(self._pump(proc.stdout)),
            asyncio.create_task(self._pump(proc.stderr)),
        ]
        try:
            try:
                async with asyncio.timeout(HEALTHY_AFTER):
                    await proc.wait()
            except TimeoutError:
                self.report(None)  # up and running
            return await proc.wait()
        finally:
            if proc.returncode is None:
                await self._terminate(proc)
            for p in pumps:  # the pipes close with the process; keep its last lines
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(p, 2.0)

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than LINE_LIMIT: log it in pieces
                line = await stream.read(LINE_LIMIT)
            if not line:
                return
            text = line.decode(errors="replace").rstrip("\r\n")
            log.info("%s: %s", self.tag, self.launch.redact(text))

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        for sig, wait in ((signal.SIGTERM, TERMINATION_GRACE), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), wait)
                log.info("%s: stopped", self.tag)
                return
            except TimeoutError:
                continue

    async def _docker_rm(self) -> None:
        """A container left by a rabbitmesh that died would clash with the name."""
        assert self.launch.docker_name is not None
        with contextlib.suppress(OSError):
            proc = await asyncio.create_subprocess_exec(
                "docker",
                "rm",
                "-f",
                self.launch.docker_name,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()
