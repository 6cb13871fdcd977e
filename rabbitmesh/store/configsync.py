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
import hashlib
import logging
from collections.abc import Awaitable
from pathlib import Path

from rabbitmesh.resources.base import Resource
from rabbitmesh.resources.loader import (
    ExtraCheck,
    ManifestError,
    check_duplicates,
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
        if not self.directory.is_dir():
            return None
        files: dict[str, bytes] = {}
        for path in manifest_files(self.directory):
            try:
                files[path.name] = path.read_bytes()
            except OSError:
                continue  # removed between listing and reading: the next poll sees it gone
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        return digest.hexdigest(), files

    def parse(self, files: dict[str, bytes]) -> dict[Key, tuple[Resource, str]]:
        out: dict[Key, tuple[Resource, str]] = {}
        resources: list[Resource] = []
        for name in sorted(files):
            source = str(self.directory / name)
            try:
                text = files[name].decode("utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(source, 1, "", "", f"cannot read: {e}") from None
            for res in load_text(text, source, self.extra):
                resources.append(res)
                out[key_of(res)] = (res, name)
        check_duplicates(resources)
        return out

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
        await self.sync(self.parse(files))
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

    async def sync(self, desired: dict[Key, tuple[Resource, str]]) -> None:
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
