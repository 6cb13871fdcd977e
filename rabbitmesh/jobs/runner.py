"""Runs a JobSink's queued events, one run each, and records what became of them.

- The JobSink's queue (`{prefix}.jobsink.{ns}.{name}`, durable) holds runs not started yet:
  the ingress answers 202 once RabbitMQ confirmed an event there, so a queued run survives a
  restart of rabbitmesh and still runs.
- The queue has a single active consumer: one replica runs a JobSink's events at a time (its
  prefetch, RABBITMESH_JOBSINK_PARALLELISM, is how many at once); another takes over when it
  goes.
- Every replica follows the JobSink's run log, a stream (`...:runs`) of `started` and
  `finished` records, so any of them shows the outcomes and the one that takes over knows
  which runs were started already: the same (source, id) never starts a second run. A run
  whose replica died before it finished is recorded `Interrupted` when its event comes back,
  not run again (a run is not known to be safe to repeat).
- A message is acked only after its `finished` record was confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from rabbitmesh.amqp.client import AmqpClient, PublishFailed
from rabbitmesh.amqp.names import Names
from rabbitmesh.cloudevents import InvalidEvent, decode_amqp
from rabbitmesh.cloudevents.jsonformat import encode_json
from rabbitmesh.jobs.launch import EventFile, deadline, plan, run_all
from rabbitmesh.metrics import jobsink_runs_total
from rabbitmesh.resources.sinks import JobSink
from rabbitmesh.settings import Settings
from rabbitmesh.sources.container import runtime_for
from rabbitmesh.sources.secrets import NotReady, SecretLookup
from rabbitmesh.timestamps import now_rfc3339

log = logging.getLogger("rabbitmesh.jobsink")

#: Bytes of run records a JobSink's stream keeps (segments of a sixteenth): the window in which
#: a repeated (source, id) is recognised. ~300 bytes a run: about 50,000 runs.
RUNS_MAX_BYTES = 16 * 1024 * 1024
#: How long the runner waits for its own marker to come back through the run log.
SYNC_TIMEOUT = 30.0


def run_id(source: str, event_id: str) -> str:
    """A run's name: the same (source, id) always gives the same one (Knative names the Job
    after them too)."""
    return hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()[:16]


def stream_arguments() -> dict[str, Any]:
    return {
        "x-queue-type": "stream",
        "x-max-length-bytes": RUNS_MAX_BYTES,
        "x-stream-max-segment-size-bytes": RUNS_MAX_BYTES // 16,
    }


@dataclass
class RunLog:
    """What the run stream says: each run's latest record, the newest last."""

    history: int
    runs: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    #: Every run ever started (within the stream's retention): the duplicates check.
    started: set[str] = field(default_factory=set)
    last_offset: int = -1

    def apply(self, offset: int, record: dict[str, Any]) -> None:
        if offset <= self.last_offset:
            return  # read again after a reconnect
        self.last_offset = offset
        run = record.get("run")
        if not isinstance(run, str):
            return
        if record.get("state") == "started":
            self.started.add(run)
        self.runs[run] = record
        self.runs.move_to_end(run)
        finished = [k for k, r in self.runs.items() if r.get("state") == "finished"]
        for k in finished[: max(len(finished) - self.history, 0)]:
            del self.runs[k]

    def summary(self) -> dict[str, Any]:
        """For status: counts and the recent runs, newest first."""
        runs = list(reversed(self.runs.values()))
        counts = {"running": 0, "succeeded": 0, "failed": 0}
        for r in runs:
            if r.get("state") == "started":
                counts["running"] += 1
            elif r.get("result") == "Succeeded":
                counts["succeeded"] += 1
            else:
                counts["failed"] += 1
        return {**counts, "runs": [_public(r) for r in runs]}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("rid",)}


class JobSinkRunner:
    """One JobSink's run log reader and (when dispatching) its queue consumer."""

    def __init__(
        self,
        settings: Settings,
        names: Names,
        publisher: AmqpClient,
        consumer: AmqpClient,
        job: JobSink,
        secrets: SecretLookup,
        on_change: Callable[[JobSink], None],
    ) -> None:
        self.settings = settings
        self.names = names
        self.publisher = publisher
        self.consumer = consumer
        self.job = job
        self.secrets = secrets
        self.on_change = on_change
        self.log = RunLog(settings.jobsink_history)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._channels: list[AbstractRobustChannel] = []
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer_tag: str | None = None
        self._queue: AbstractQueue | None = None
        #: Status is refreshed per record only once the log was read up to now: reading a
        #: long log must not rebuild the summary at every record.
        self._synced = False

    @property
    def stream(self) -> str:
        return self.names.jobsink_runs(self.job.namespace, self.job.name)

    async def start(self, consume: bool) -> None:
        ch = await self.consumer.channel(prefetch=1000)
        self._channels.append(ch)
        stream = await ch.get_queue(self.stream, ensure=True)
        await stream.consume(self._on_record, arguments={"x-stream-offset": "first"})
        await self.sync()
        self._synced = True
        self.on_change(self.job)
        if consume:
            jobs = await self.consumer.channel(prefetch=self.settings.jobsink_parallelism)
            self._channels.append(jobs)
            queue = await jobs.get_queue(
                self.names.jobsink_queue(self.job.namespace, self.job.name), ensure=True
            )
            self._queue = queue
            self._consumer_tag = await queue.consume(self._on_job)

    async def stop(self, grace: float) -> None:
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._consumer_tag)
        if self._tasks:  # let runs in progress finish, within the shutdown grace
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=TERMINATION_WAIT)
        for ch in self._channels:
            with contextlib.suppress(Exception):
                await ch.close()

    # --- the run log ---------------------------------------------------------------------

    async def _on_record(self, msg: AbstractIncomingMessage) -> None:
        offset = (msg.headers or {}).get("x-stream-offset")
        with contextlib.suppress(Exception):
            await msg.ack()
        if not isinstance(offset, int):
            return
        try:
            record = orjson.loads(msg.body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(record, dict):
            return
        marker = self._markers.get(str(record.get("marker")))
        if marker is not None and not marker.done():
            marker.set_result(None)
            return
        if "marker" in record:
            return
        self.log.apply(offset, record)
        if self._synced:
            self.on_change(self.job)

    async def _append(self, record: dict[str, Any]) -> None:
        await self.publisher.publish(
            "",
            self.stream,
            aio_pika.Message(orjson.dumps(record), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            mandatory=True,
        )

    async def sync(self) -> None:
        """Return once the run log was read up to now (a marker of ours came back)."""
        rid = uuid.uuid4().hex
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._markers[rid] = fut
        try:
            await self._append({"marker": rid})
            await asyncio.wait_for(fut, SYNC_TIMEOUT)
        finally:
            self._markers.pop(rid, None)

    # --- runs ------------------------------------------------------------------------------

    async def _on_job(self, msg: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._job_logged(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _job_logged(self, msg: AbstractIncomingMessage) -> None:
        try:
            await self._job(msg)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # e.g. the channel went with the connection: the message
            # comes back, and the run log decides (finished: not again; started: Interrupted)
            log.warning(
                "jobsink=%s/%s: %s: %s", self.job.namespace, self.job.name, type(e).__name__, e
            )
            with contextlib.suppress(Exception):  # unsettled, it would hold a run slot
                await msg.nack(requeue=True)

    async def _job(self, msg: AbstractIncomingMessage) -> None:
        job = self.job
        what = f"{job.namespace}/{job.name}"
        try:
            event = decode_amqp(msg.headers, msg.body, msg.content_type)
        except InvalidEvent as e:  # the ingress validated it: only a hand-made message
            log.warning("jobsink=%s: message dropped, not a CloudEvent: %s", what, e)
            await msg.ack()
            return
        run = run_id(event.source, event.id)
        base = {"run": run, "source": event.source, "id": event.id, "type": event.type}
        if run in self._running or run in self.log.started:
            # A run older than the history is in `started` but no longer in `runs`: it
            # finished (a duplicate), it was not interrupted.
            if run in self._running or self.log.runs.get(run, {}).get("state") != "started":
                jobsink_runs_total.labels(job.namespace, job.name, "duplicate").inc()
                log.info(
                    "jobsink=%s: event %s from %s ran already; not run again",
                    what,
                    event.id,
                    event.source,
                )
            else:  # started by a replica that is gone
                await self._finish(
                    base,
                    None,
                    [],
                    "Interrupted",
                    "rabbitmesh stopped while the run was in progress; not run again",
                )
            await msg.ack()
            return
        self._running.add(run)
        try:
            try:
                runtime = runtime_for(
                    job, self.settings.container_runtime, self.settings.allow_process_runtime
                )
            except NotReady as e:
                # Not run, and not lost: back into the queue until the operator allows it.
                # (The JobSink is not Ready meanwhile, so its ingress takes no more.)
                # The reconciler stops this consumer as it marks the JobSink not Ready.
                log.warning("jobsink=%s: %s", what, e.message)
                await msg.nack(requeue=True)
                return
            started = {
                **base,
                "state": "started",
                "replica": self.replica,
                "startTime": now_rfc3339("seconds"),
            }
            await self._append(started)  # before the run: a second delivery sees it
            files = EventFile(encode_json(event))
            try:
                launches = plan(
                    job, runtime, self.settings.docker_args, self.secrets, files.dir, run
                )
                outcome = await run_all(launches, what, deadline(job))
            except NotReady as e:
                await self._finish(started, None, [], "Failed", e.message)
                await msg.ack()
                return
            finally:
                files.remove()
            result = "Succeeded" if outcome.succeeded else "Failed"
            await self._finish(started, outcome.exit_code, outcome.log, result, outcome.error)
            await msg.ack()
        except PublishFailed as e:
            # The record could not be written: the message stays unacked and comes back;
            # then the `started` record (if it was written) stops a second run.
            log.warning("jobsink=%s: run record not written: %s", what, e)
            with contextlib.suppress(Exception):
                await msg.nack(requeue=True)
        finally:
            self._running.discard(run)

    async def _finish(
        self,
        base: dict[str, Any],
        exit_code: int | None,
        lines: list[str],
        result: str,
        message: str,
    ) -> None:
        record = {
            **{k: v for k, v in base.items() if k != "state"},
            "state": "finished",
            "result": result,
            "completionTime": now_rfc3339("seconds"),
            "exitCode": exit_code,
            "log": lines,
        }
        if message:
            record["message"] = message
        await self._append(record)
        jobsink_runs_total.labels(self.job.namespace, self.job.name, result.lower()).inc()


#: After cancelling runs at shutdown, how long to wait for them to be stopped.
TERMINATION_WAIT = 20.0


class JobRunner:
    """This replica's JobSink runners, one per JobSink (driven by the reconciler)."""

    def __init__(
        self,
        settings: Settings,
        names: Names,
        publisher: AmqpClient,
        consumer: AmqpClient,
        secrets: SecretLookup,
        on_change: Callable[[JobSink], None],
        consume: bool,
    ) -> None:
        self.settings = settings
        self.names = names
        self.publisher = publisher
        self.consumer = consumer
        self.secrets = secrets
        self.on_change = on_change
        self.consume = consume
        self.runners: dict[tuple[str, str], JobSinkRunner] = {}
        self._lock = asyncio.Lock()

    async def ensure(self, job: JobSink) -> JobSinkRunner:
        key = (job.namespace, job.name)
        async with self._lock:
            runner = self.runners.get(key)
            if runner is not None:
                runner.job = job  # the next run uses the new spec
                return runner
            runner = JobSinkRunner(
                self.settings,
                self.names,
                self.publisher,
                self.consumer,
                job,
                self.secrets,
                self.on_change,
            )
            await runner.start(self.consume)
            self.runners[key] = runner
            return runner

    async def drop(self, namespace: str, name: str) -> None:
        async with self._lock:
            runner = self.runners.pop((namespace, name), None)
        if runner is not None:
            await runner.stop(self.settings.shutdown_timeout)

    def summary(self, namespace: str, name: str) -> dict[str, Any] | None:
        runner = self.runners.get((namespace, name))
        return None if runner is None else runner.log.summary()

    async def close(self) -> None:
        for key in list(self.runners):
            await self.drop(*key)
