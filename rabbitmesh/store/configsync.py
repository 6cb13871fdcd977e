"""RABBITMESH_CONFIG_DIR -> the store: applied at start, and again whenever a file changes.

Resources from files carry origin `file` and their file's name. A sync applies every document
whose stored manifest differs, and deletes the `file` resources whose document is gone; it never
touches resources created through the API. Writes whose content is already stored are skipped,
so replicas with the same config dir do not fight over it.

Hot reload polls the directory (no new dependency, works on every filesystem) and applies a
change once the content has stayed the same for one more poll, so a file caught half-written
by an editor is not taken for one whose documents were removed. An invalid file at reload is
logged in one line and the last good state stays; at start it stops rabbitmesh.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
from collections.abc import Awaitable
from pathlib import Path

from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.loader import (
    ExtraCheck,
    ManifestError,
    check_duplicates,
    load_path,
    load_text,
    manifest_files,
)
from rabbitmesh.store.manifests import key_of, to_manifest
from rabbitmesh.store.state import Key, describe
from rabbitmesh.store.stream import Store, StoreUnavailable

log = logging.getLogger("rabbitmesh.config")

#: Seconds between two looks at the config dir.
POLL_SECONDS = 0.5
#: Writes in flight during one sync.
PARALLEL_WRITES = 32

Parsed = dict[Key, tuple[Resource, str]]

#: The config dir as `rabbitmesh run` parsed it to fail fast, before it forked its workers:
#: (directory, digest, checks, parsed). A worker whose start finds the same content takes
#: it from here instead of parsing it again (5,000 Triggers were parsed three times per
#: start with two workers: in the supervisor, then in each worker).
_preparsed: tuple[Path, str, ExtraCheck | None, Parsed] | None = None


def read_dir(directory: Path) -> tuple[str, dict[str, bytes]] | None:
    """(digest, file name -> bytes) of the manifest files; None without the directory."""
    if not directory.is_dir():
        return None
    files: dict[str, bytes] = {}
    for path in manifest_files(directory):
        try:
            files[path.name] = path.read_bytes()
        except OSError:
            continue  # removed between listing and reading: the next poll sees it gone
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest(), files


def parse_files(directory: Path, files: dict[str, bytes], extra: ExtraCheck | None) -> Parsed:
    """Every resource of the files, by key, with its file's name; raises ManifestError."""
    out: Parsed = {}
    resources: list[Resource] = []
    for name in sorted(files):
        source = str(directory / name)
        try:
            text = files[name].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(source, 1, "", "", f"cannot read: {e}") from None
        for res in load_text(text, source, extra):
            resources.append(res)
            out[key_of(res)] = (res, name)
    check_duplicates(resources)
    return out


def preparse(directory: Path, extra: ExtraCheck | None) -> None:
    """Parse the config dir now (ManifestError when it is invalid) and keep the result for
    the ConfigSync of this process, or of the workers forked from it, to start with."""
    global _preparsed
    if directory.is_file():  # not a directory: nothing is applied from it, but say it is bad
        load_path(directory, extra)
        return
    content = read_dir(directory)
    if content is None:
        return
    digest, files = content
    _preparsed = (directory, digest, extra, parse_files(directory, files, extra))


def forget_preparsed() -> None:
    """Drop the preparsed config dir (the supervisor, once its workers have their copy; it
    allocates nothing afterwards, so a collection would never come by itself)."""
    global _preparsed
    if _preparsed is not None:
        _preparsed = None
        gc.collect()


def _take_preparsed(directory: Path, digest: str, extra: ExtraCheck | None) -> Parsed | None:
    """The preparsed config dir if it is this one with this content (once: it is dropped)."""
    global _preparsed
    cached, _preparsed = _preparsed, None
    if cached is None:
        return None
    where, seen, checks, parsed = cached
    if where != directory or seen != digest or checks != extra:
        return None
    return parsed


class ConfigSync:
    def __init__(self, store: Store, directory: Path, extra: ExtraCheck | None = None) -> None:
        self.store = store
        self.directory = directory
        self.extra = extra  # checks needing settings: Names.check_length
        self._applied: str | None = None  # digest of the content last applied
        self._seen: str | None = None  # digest seen at the previous poll
        self.polls = 0  # how many looks at the directory so far

    def read(self) -> tuple[str, dict[str, bytes]] | None:
        """(digest, file name -> bytes) of the manifest files; None without the directory."""
        return read_dir(self.directory)

    def parse(self, files: dict[str, bytes]) -> Parsed:
        return parse_files(self.directory, files, self.extra)

    async def initial(self) -> None:
        """Apply the config dir at start. Invalid manifests raise ManifestError (fatal)."""
        content = self.read()
        if content is None:
            log.warning(
                "config dir %s does not exist; resources from files are left as they are",
                self.directory,
            )
            return
        digest, files = content
        parsed = _take_preparsed(self.directory, digest, self.extra)
        await self.sync(parsed if parsed is not None else self.parse(files))
        self._applied = self._seen = digest

    async def poll(self) -> None:
        """One look at the directory; applies a change that has stayed put for one poll."""
        self.polls += 1
        content = self.read()
        if content is None:
            return
        digest, files = content
        stable, self._seen = digest == self._seen, digest
        if not stable or digest == self._applied:
            return
        try:
            desired = self.parse(files)
        except ManifestError as e:
            log.error("config dir not reloaded, keeping the last good state: %s", e)
            self._applied = digest  # do not repeat the same error every poll
            return
        log.info("config dir %s changed; applying it", self.directory)
        await self.sync(desired)
        self._applied = digest

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(POLL_SECONDS):
                    await stop.wait()
                return
            except TimeoutError:
                pass
            try:
                await self.poll()
            except StoreUnavailable as e:
                log.warning("config dir change not applied yet (%s); retrying", e)
                self._seen = None  # retry on a later poll

    async def sync(self, desired: Parsed) -> None:
        """Write what differs: apply changed documents, delete `file` resources now gone."""
        state = self.store.state
        writes = []
        for key, (res, name) in desired.items():
            manifest = to_manifest(res)
            cur = state.entries.get(key)
            if (
                cur is not None
                and cur.manifest == manifest
                and cur.origin == "file"
                and cur.source == name
            ):
                continue
            writes.append(self._apply(key, manifest, name))
        for entry in list(state.file_entries()):
            if entry.key not in desired:
                writes.append(self._delete(entry.key, entry.resource_version))
        sem = asyncio.Semaphore(PARALLEL_WRITES)

        async def bounded(write: Awaitable[None]) -> None:
            async with sem:
                await write

        await asyncio.gather(*(bounded(w) for w in writes))

    async def _apply(self, key: Key, manifest: dict, name: str) -> None:
        outcome = await self.store.apply(manifest, key, origin="file", source=name)
        if outcome.result in ("created", "configured"):
            log.info("%s %s from %s", describe(key), outcome.result, name)

    async def _delete(self, key: Key, version: int) -> None:
        outcome = await self.store.delete(key, expect=version)
        if outcome.result == "deleted":
            log.info("%s deleted: its document is gone from the config dir", describe(key))
