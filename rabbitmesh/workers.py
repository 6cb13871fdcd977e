"""`rabbitmesh run` on every core: a supervisor and N worker processes on one port.

Python runs one thread of Python at a time, so one process uses one core. `rabbitmesh run`
therefore starts RABBITMESH_WORKERS processes (default: one per core the process may run
on), each a complete replica (ingress, control plane, dispatchers, sources) as
docs/architecture.md describes replicas: they read the same resource store, consume every
queue as competing consumers, and run each source on one of them (a lease in RabbitMQ).

- One port: every worker listens on it with SO_REUSEPORT; the kernel spreads connections
  over the workers that listen. The supervisor binds the port first (without listening), so
  a port already taken is reported once, port 0 picks one port for all, and the port stays
  reserved while a worker restarts. Workers other than the first start listening only once
  they are ready, so no connection reaches a worker that would answer 503 "starting up".
- One /metrics: prometheus-client's multiprocess mode; each worker writes its counters to
  files in a directory of this run (made empty at start, removed at the end) and any worker's
  /metrics sums them all.
- Read-after-write across workers: an admin API write answers once the record is reconciled
  on every ready worker (`Siblings`, a small shared-memory table), so a GET or an event
  that lands on another worker right after sees what the write made.
- Shutdown: SIGTERM/SIGINT go to every worker, each shuts down gracefully (HTTP in-flight
  requests, in-flight deliveries, then AMQP); the supervisor exits when all have. A worker
  that dies after it was ready is started again; one that fails before it was ever ready
  stops the whole run with its exit status (a bad setting would fail on every attempt).
  If the supervisor itself is killed, the kernel kills the workers (PR_SET_PDEATHSIG), as a
  single process would have died: unacked messages return to their queues.
- Workers are forked from the supervisor once it imported everything (no event loop, no
  thread exists yet then), so N workers start as fast as one. What is imported then is
  frozen first (`gc.freeze`): the pages the workers share with the supervisor stay shared
  instead of being copied into each worker by its first full garbage collection.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import mmap
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("rabbitmesh.workers")

#: Environment a worker process gets from its supervisor (not settings: users never set them).
ENV_INDEX = "_RABBITMESH_WORKER_INDEX"
ENV_COUNT = "_RABBITMESH_WORKER_COUNT"
ENV_DIR = "_RABBITMESH_WORKER_DIR"
ENV_EARLY = "_RABBITMESH_WORKER_LISTEN_EARLY"
#: prometheus-client reads it when it is first imported: the workers get it in their
#: environment from the start.
ENV_METRICS = "PROMETHEUS_MULTIPROC_DIR"

#: Per worker: its pid, its state, and the store offset it last reconciled.
_SLOT = struct.Struct("<qqq")
#: EARLY: starting, and already listening (the first worker, on the run's first start).
STARTING, READY, STOPPING, EARLY = 0, 1, 2, 3
#: A worker restarted sooner than this after the previous start waits, so a worker that
#: crashes at once does not spin.
RESTART_BACKOFF = 1.0


def default_workers() -> int:
    """One worker per core this process may run on (cgroup/affinity limits count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker process knows of its supervisor (None when running alone)."""

    index: int
    count: int
    directory: Path
    #: Listen before ready (for /healthz and a 503 /readyz while RabbitMQ is away): the
    #: first worker on the run's first start; every other start listens once ready.
    early: bool = False

    @classmethod
    def from_env(cls) -> WorkerInfo | None:
        index = os.environ.get(ENV_INDEX)
        if index is None:
            return None
        return cls(
            int(index),
            int(os.environ[ENV_COUNT]),
            Path(os.environ[ENV_DIR]),
            os.environ.get(ENV_EARLY) == "1",
        )

    @property
    def metrics_dir(self) -> Path:
        return self.directory / "metrics"


class Siblings:
    """The workers' shared table: pid, ready, reconciled offset (a file, mmapped by each)."""

    def __init__(self, path: Path, count: int, index: int | None = None) -> None:
        self.count = count
        self.index = index
        #: Made by the first worker once it applied the config dir at start (see
        #: `config_writer_pending`).
        self._config_applied = path.with_name(path.name + ".config-applied")
        size = _SLOT.size * count
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def read(self, i: int) -> tuple[int, int, int]:
        """(pid, state, offset) of worker `i`."""
        pid, state, offset = _SLOT.unpack_from(self._map, i * _SLOT.size)
        return pid, state, offset

    def write(self, i: int, pid: int, state: int, offset: int) -> None:
        _SLOT.pack_into(self._map, i * _SLOT.size, pid, state, offset)

    def mark(self, *, state: int | None = None, offset: int | None = None) -> None:
        """Update this worker's own slot."""
        assert self.index is not None
        _, was_state, was_offset = self.read(self.index)
        self.write(
            self.index,
            os.getpid(),
            was_state if state is None else state,
            was_offset if offset is None else offset,
        )

    def starting_early(self) -> list[int]:
        """Other workers that listen but are not ready yet."""
        return [i for i in range(self.count) if i != self.index and self.read(i)[1] == EARLY]

    def behind(self, offset: int) -> list[int]:
        """Other ready workers that have not reconciled the record at `offset` yet."""
        out = []
        for i in range(self.count):
            if i == self.index:
                continue
            _, state, done = self.read(i)
            if state == READY and done < offset:
                out.append(i)
        return out

    # --- the config dir at start: written by one worker, not by each -----------------------

    def mark_config_applied(self) -> None:
        """The first worker applied the config dir to the resource store."""
        self._config_applied.touch()

    def config_writer_pending(self) -> bool:
        """Whether this worker should wait before applying the config dir itself: it is not
        the first, and the first is still starting without having applied it. Every worker
        applying 5,000 Triggers at once wrote each twice (the second copy only "unchanged"),
        and every worker read both copies (issue 13). The first worker's death during
        start-up stops the run (Supervisor), so nobody waits for a dead one."""
        if self.index in (None, 0) or self._config_applied.exists():
            return False
        return self.read(0)[1] in (STARTING, EARLY)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()


def _die_with_parent() -> None:
    """In the worker, before exec: SIGKILL when the supervisor dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) host:port with SO_REUSEPORT; raise OSError when it is taken.

    First a plain bind: SO_REUSEPORT alone would let this run join a port another program
    of the same user listens on with SO_REUSEPORT (another `rabbitmesh run`, say) and
    split its traffic, where a single process would have said "address in use"."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no user
        probe.bind(addr)
        addr = (addr[0], probe.getsockname()[1], *addr[2:])  # port 0: the one it got
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


class Supervisor:
    """Forks `count` workers, each running `work(port)` (a `rabbitmesh run` of one process).

    Forked, not started afresh: everything is imported once, here, so a worker is serving
    within the time it takes to connect (importing takes seconds on a busy machine)."""

    def __init__(
        self,
        count: int,
        port: int,
        work: Callable[[int], int],
        started: Callable[[], object] = lambda: None,
    ) -> None:
        self.count = count
        self.port = port
        self.work = work
        #: Called once every worker was forked the first time (the supervisor drops what
        #: only the first start needed: the parsed config dir).
        self.started = started
        self.directory = Path(tempfile.mkdtemp(prefix="rabbitmesh-workers-"))
        (self.directory / "metrics").mkdir()
        self.siblings = Siblings(self.directory / "siblings", count)
        self.pids: list[int | None] = [None] * count
        self.started_at = [0.0] * count
        self.stopping = False

    def environment(self) -> dict[str, str]:
        """What every worker finds in its environment (set before anything imports
        prometheus-client, which reads ENV_METRICS once)."""
        return {
            ENV_COUNT: str(self.count),
            ENV_DIR: str(self.directory),
            ENV_METRICS: str(self.directory / "metrics"),
        }

    def start(self, index: int) -> None:
        first = self.started_at[index] == 0.0
        self.siblings.write(index, 0, STARTING, -1)
        self.started_at[index] = time.monotonic()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if sys.platform == "linux":
                    _die_with_parent()
                if os.getppid() != parent:  # the supervisor died before prctl
                    os._exit(1)
                os.environ.update(self.environment())
                os.environ[ENV_INDEX] = str(index)
                os.environ[ENV_EARLY] = "1" if first and index == 0 else "0"
                code = self.work(self.port)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.pids[index] = pid

    def signal_all(self, sig: int) -> None:
        for pid in self.pids:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def run(self) -> int:
        """Start every worker and supervise them until all have exited; the exit status."""

        def on_signal(sig: int, _frame: object) -> None:
            self.stopping = True
            self.signal_all(sig)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        for i in range(self.count):
            self.start(i)
        self.started()
        status = 0
        try:
            while True:
                try:
                    pid, code = os.wait()
                except ChildProcessError:
                    break
                index = next((i for i, p in enumerate(self.pids) if p == pid), None)
                if index is None:
                    continue
                self.pids[index] = None
                rc = os.waitstatus_to_exitcode(code)
                _, state, _ = self.siblings.read(index)
                # Nobody waits for a dead worker's reconciles.
                started = state in (READY, STOPPING)
                self.siblings.write(index, pid, STOPPING if started else STARTING, -1)
                if self.stopping:
                    if rc not in (0, -signal.SIGTERM, -signal.SIGINT):
                        status = status or (rc if rc > 0 else 1)
                    continue
                if not started:
                    # Failed during start-up: every attempt would; stop the run with its status.
                    log.error("worker %d exited during start-up (status %s); stopping", index, rc)
                    status = rc if rc > 0 else 1
                    self.stopping = True
                    self.signal_all(signal.SIGTERM)
                    continue
                log.error(
                    "worker %d (pid %d) exited (status %s); starting it again", index, pid, rc
                )
                wait = self.started_at[index] + RESTART_BACKOFF - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # not synchronisation: a crash-loop brake
                if not self.stopping:
                    self.start(index)
        finally:
            self.siblings.close()
            shutil.rmtree(self.directory, ignore_errors=True)
        return status


def supervise(
    count: int,
    host: str,
    port: int,
    work: Callable[[int], int],
    preload: Callable[[], object] = lambda: None,
    started: Callable[[], object] = lambda: None,
) -> int:
    """Reserve the port, run `count` workers on it (each `work(port)`), return the exit
    status. `preload` imports what the workers run, once, before they are forked (after
    the workers' environment is set: prometheus-client reads it on import); `started` runs
    in the supervisor once they all were forked."""
    from rabbitmesh.listen import cannot_listen

    try:
        reserved = reserve_port(host, port)
    except OSError as e:
        raise cannot_listen(
            e,
            host,
            port,
            "set RABBITMESH_HTTP_PORT or --http-port for another port, "
            "RABBITMESH_HTTP_HOST or --http-host for another address",
        ) from None
    with reserved:
        bound = reserved.getsockname()[1]
        log.info("starting %d workers on port %d", count, bound)
        supervisor = Supervisor(count, bound, work, started)
        os.environ.update(supervisor.environment())
        preload()
        # What is imported now is every worker's too, on pages they share with this process
        # until one of them writes to a page. The collector writes to every object it
        # examines (its gc header), so each worker's first full collection used to copy
        # most of them: frozen, the collector leaves them alone in every worker (as
        # server.tune_gc does with what a worker made at start-up).
        gc.collect()
        gc.freeze()
        return supervisor.run()
