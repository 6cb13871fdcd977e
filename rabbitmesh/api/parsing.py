"""Admin API bodies -> validated resources, without holding the event loop.

PyYAML parses in pure Python: a 1 MiB body of tiny tokens takes seconds, and a thread does
not help, since it holds the GIL (measured: the loop still stalled for over a second while a
thread parsed). So a body is parsed and validated in a worker process (one, started on first
use from a forkserver and kept), one body at a time, within RABBITMESH_MANIFEST_PARSE_TIMEOUT:
a parse that takes longer is killed and the request gets 413. Bodies below INLINE_BYTES,
which take well under a millisecond, are parsed in place. The loop then builds the resources
from the checked documents again, giving the loop back every SLICE seconds.

Bodies are JSON (orjson) or YAML (rabbitmesh/resources/loader.py's bounded loader), by their
Content-Type (rabbitmesh/api/auth.py); one document, or several for /apply, where a
`kind: List` is unrolled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import orjson

from rabbitmesh.api.errors import ApiError
from rabbitmesh.api.objects import describe, fill_from_url, validate
from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.loader import ExtraCheck, ManifestError, load_documents
from rabbitmesh.resources.registry import by_kind
from rabbitmesh.store.manifests import key_of

log = logging.getLogger("rabbitmesh.api")

#: Bodies parsed in place (a worker's round trip costs more): JSON parses at ~50 MB/s,
#: YAML at well under 1 MB/s when it is all tiny tokens.
INLINE_BYTES = {"json": 8 * 1024, "yaml": 512}
#: Longest the loop validates documents (or renders resources) before letting other work run.
SLICE = 0.002

T = TypeVar("T")
U = TypeVar("U")

#: What a body is for: ("apply", namespace for documents that name none) or
#: ("one", kind, version, namespace from the URL).
Mode = tuple[Any, ...]
#: The worker's answer: ("ok", documents) or ("error", status, message, details).
Result = tuple[Any, ...]


def decode(raw: bytes, fmt: str) -> list[Any]:
    """The documents of a body; ApiError 400 when it is empty or malformed."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send a manifest (JSON or YAML)")
    try:
        if fmt == "json":
            data = orjson.loads(raw)
            docs = data if isinstance(data, list) else [data]
        else:
            docs = [d for d in load_documents(raw.decode("utf-8"), "request") if d is not None]
    except ManifestError as e:
        raise ApiError(400, f"malformed request body: {e.message}") from None
    except (orjson.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ApiError(400, f"malformed request body: {first}") from None
    out: list[Any] = []
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(d["items"])
        else:
            out.append(d)
    if not out:
        raise ApiError(400, "the request body holds no document")
    return out


def prepare(docs: list[Any], mode: Mode) -> list[Any]:
    """Fill in what the URL says (kind, namespace); ApiError 400 for a body that is not one
    object where one is expected."""
    if mode[0] == "one":
        _, kind, version, namespace = mode
        if len(docs) != 1:
            raise ApiError(400, f"expected one object, got {len(docs)} (use POST /apply)")
        info = by_kind(kind)
        assert info is not None, kind
        return [fill_from_url(docs[0], info, version, namespace)]
    namespace = mode[1]
    if namespace:
        for doc in docs:
            if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
                info = by_kind(str(doc.get("kind", "")))
                if info is None or info.model.NAMESPACED:
                    doc["metadata"].setdefault("namespace", namespace)
    return docs


def _validating(
    docs: list[Any], out: list[Resource], single: bool = False, extra: ExtraCheck | None = None
) -> Iterator[None]:
    """Validate every document into `out`, yielding after each; ApiError 422 naming every
    problem (and every resource given twice) at the end, or the one problem of a `single`
    object. `extra`: checks that need this server's settings (run on the loop's pass only:
    the worker process does not have them)."""
    messages: list[str] = []
    details: list[dict[str, Any]] = []
    for i, doc in enumerate(docs, start=1):
        try:
            out.append(validate(doc, i, extra))
        except ApiError as e:
            if single:
                raise
            messages.append(f"document {i}: {e.message}")
            details.extend({"document": i, **d} for d in e.details)
        yield
    seen: set[tuple[str, str, str]] = set()
    for res in out:
        if key_of(res) in seen:
            messages.append(f"{describe(res)} appears twice")
            details.append({"field": "metadata.name", "message": "defined more than once"})
        seen.add(key_of(res))
    if messages:
        raise ApiError(422, "; ".join(messages), details=details)


def check(raw: bytes, fmt: str, mode: Mode) -> Result:
    """Decode, prepare and validate a body (in the worker); plain data back, since an
    ApiError does not pickle."""
    try:
        docs = prepare(decode(raw, fmt), mode)
        for _ in _validating(docs, [], single=mode[0] == "one"):
            pass
    except ApiError as e:
        return ("error", e.status, e.message, e.details)
    return ("ok", docs)


async def build_resources(
    docs: list[Any], extra: ExtraCheck | None = None, single: bool = False
) -> list[Resource]:
    """The resources of checked documents, built on the loop in slices of SLICE seconds."""
    out: list[Resource] = []
    started = time.monotonic()
    for _ in _validating(docs, out, single, extra):
        if time.monotonic() - started > SLICE:
            await asyncio.sleep(0)
            started = time.monotonic()
    return out


async def in_slices(items: Iterable[T], fn: Callable[[T], U]) -> list[U]:
    """`fn` over `items` on the loop, letting other work run every SLICE seconds."""
    out: list[U] = []
    started = time.monotonic()
    for item in items:
        out.append(fn(item))
        if time.monotonic() - started > SLICE:
            await asyncio.sleep(0)
            started = time.monotonic()
    return out


class Parser:
    """Runs `check` for the admin API: in place for small bodies, else in the worker."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pool: ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self._lock = asyncio.Lock()  # one body in the worker at a time

    async def documents(self, raw: bytes, fmt: str, mode: Mode) -> list[Any]:
        """The body's documents, each known to be valid; ApiError otherwise."""
        if len(raw) <= INLINE_BYTES[fmt]:
            result = check(raw, fmt, mode)
        else:
            result = await self._in_worker(raw, fmt, mode)
        if result[0] == "error":
            _, status, message, details = result
            raise ApiError(status, message, details=details)
        return result[1]

    async def _in_worker(self, raw: bytes, fmt: str, mode: Mode) -> Result:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._pool is None:
                # Starting the worker blocks until the forkserver has imported rabbitmesh
                # (seconds on a busy host): in a thread, not on the loop.
                try:
                    self._pool, self._pid = await asyncio.to_thread(self._start)
                except (OSError, BrokenProcessPool) as e:  # no /dev/shm, no writable TMPDIR
                    log.error("cannot start the manifest parser's worker process: %s", e)
                    raise ApiError(
                        503, f"cannot start the manifest parser's worker process: {e}"
                    ) from None
            try:
                return await asyncio.wait_for(
                    loop.run_in_executor(self._pool, check, raw, fmt, mode), self.timeout
                )
            except TimeoutError:
                self._reset()
                raise ApiError(
                    413,
                    f"the body took longer than {self.timeout:g}s to parse "
                    "(RABBITMESH_MANIFEST_PARSE_TIMEOUT); send smaller manifests",
                ) from None
            except BrokenProcessPool:
                self._reset()
                raise ApiError(503, "the manifest parser stopped; try again") from None

    @staticmethod
    def _start() -> tuple[ProcessPoolExecutor, int]:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        pool = ProcessPoolExecutor(1, mp_context=context)
        return pool, pool.submit(os.getpid).result()

    def _reset(self) -> None:
        """Kill the worker (it may be mid-parse) and start a new one on next use."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self._pid = None
