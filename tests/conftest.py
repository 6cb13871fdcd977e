"""Shared fixtures: a real RabbitMQ (checked once), isolation by topology prefix, sinks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest

from tests.support.mesh import AMQP_URL, unique_prefix
from tests.support.rabbit import delete_everything_sync
from tests.support.sink import Responder, Sink


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """Fail clearly (not skip) when the RabbitMQ the suite needs is not there."""

    async def probe() -> None:
        conn = await aio_pika.connect(AMQP_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as e:
        pytest.fail(
            f"RabbitMQ is not reachable at {AMQP_URL} ({e}). Start it with "
            "`rabbitmq-server -detached`, or run the suite through `.ci/run`, which does."
        )
    return AMQP_URL


def _restore_node(when: str) -> None:
    """Undo a stop_app or resource alarm a disruptive test left behind: one of this session
    interrupted mid-way, or of an earlier run that was killed (tests/support/disruption.py)."""
    from tests.support.disruption import restore_interrupted

    try:
        ran = restore_interrupted()
    except Exception as e:  # never mask the suite's verdict; say what could not be done
        print(f"\nrabbitmesh tests: could not check for an interrupted disruption ({e})")
        return
    for undo in ran:
        print(f"\nrabbitmesh tests ({when}): RabbitMQ left disrupted; ran rabbitmqctl {undo}")


_FAULTS_DIR = Path(__file__).parent / "faults"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fault scenarios drive load themselves and measure what a sender sees under it:
    `serial`, so the default run (dev.sh test) runs them alone, after the parallel part."""
    for item in items:
        if _FAULTS_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.serial)


def pytest_sessionstart(session: pytest.Session) -> None:
    _restore_node("session start")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Put the node back if a disruptive test could not, then remove what this session's
    tests declared (only its own prefixes: another session may be testing against the same
    RabbitMQ right now)."""
    _restore_node("session end")
    from tests.support.mesh import CREATED_PREFIXES

    if not CREATED_PREFIXES:
        return
    try:
        delete_everything_sync(tuple(p + "." for p in CREATED_PREFIXES))
    except Exception:  # cleanup must never change the suite's verdict
        pass


#: Prefixes of tests that have finished, not yet cleaned up.
_FINISHED_PREFIXES: list[str] = []
#: Clean up after this many tests: two rabbitmqctl calls per batch rather than per test, yet
#: never hundreds of tests' queues and streams at once. Every stream holds open files in the
#: node; a RabbitMQ started with the common default of 1,024 descriptors ran out of them
#: (`emfile`, its tables lost) a third of the way into a run that kept everything to the end.
CLEANUP_BATCH = 12


@pytest.fixture
def prefix(rabbitmq: str) -> Iterator[str]:
    """A topology prefix of this test's own. What it declared is deleted a few tests later,
    in batches (see CLEANUP_BATCH), and whatever is left when the session ends."""
    from tests.support.mesh import CREATED_PREFIXES

    name = unique_prefix()
    yield name
    # Every mesh and process of the test is stopped by now (their fixtures depend on this one).
    _FINISHED_PREFIXES.append(name)
    if len(_FINISHED_PREFIXES) < CLEANUP_BATCH:
        return
    batch = list(_FINISHED_PREFIXES)
    _FINISHED_PREFIXES.clear()
    try:
        delete_everything_sync(tuple(p + "." for p in batch))
    except Exception as e:  # cleanup must never change a test's verdict; the session end retries
        print(f"\nrabbitmesh tests: could not delete finished tests' queues yet ({e})")
        return
    for p in batch:
        with contextlib.suppress(ValueError):
            CREATED_PREFIXES.remove(p)


@pytest.fixture
async def make_sink() -> AsyncIterator[Callable[..., Awaitable[Sink]]]:
    sinks: list[Sink] = []

    async def make(responder: Responder | None = None, port: int = 0) -> Sink:
        s = await Sink(responder).start(port)
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        await s.stop()


@pytest.fixture
async def start_mesh(tmp_path, prefix):
    """Start an in-process rabbitmesh with the given manifests; stopped after the test."""
    from tests.support.mesh import InProcessMesh, write_manifests

    meshes: list[InProcessMesh] = []

    async def start(manifests: str, **settings: object) -> InProcessMesh:
        config = tmp_path / f"config{len(meshes)}"
        write_manifests(config, manifests)
        mesh = await InProcessMesh(config, prefix, **settings).start()
        meshes.append(mesh)
        return mesh

    yield start
    for m in meshes:
        await m.stop()


@pytest.fixture
async def start_tool():
    """Start a helper service (`rabbitmesh event-display ...`) as a real process."""
    from tests.support.tools import ToolProcess

    tools: list[ToolProcess] = []

    async def start(*args: str, **kwargs: object) -> ToolProcess:
        tool = ToolProcess(*args, **kwargs)  # type: ignore[arg-type]
        tools.append(tool)
        return await tool.start()

    yield start
    await asyncio.gather(*(t.stop() for t in tools))


@pytest.fixture
async def app_prefix(prefix: str) -> AsyncIterator[str]:
    """A name prefix for queues and exchanges a test declares as "a RabbitMQ application"
    (bridges may not use rabbitmesh's own `{prefix}.` names); deleted after the test."""
    from tests.support.rabbit import delete_everything

    name = f"app-{prefix}"
    yield name
    try:
        await delete_everything(name + ".")
    except Exception:  # cleanup must never change the verdict
        pass
