"""The delivery core without RabbitMQ: the pure decision (dispatch/decision.py), and the queue
worker carrying it out against a stub publisher and a real HTTP subscriber.

tests/integration/test_delivery.py and test_poison.py cover the same rules end to end on a
real RabbitMQ; these run in a second or two and pin each branch down on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rabbitmesh.amqp.client import UnpublishableMessage
from rabbitmesh.amqp.messages import RETRIES_HEADER
from rabbitmesh.amqp.names import Names
from rabbitmesh.amqp.topology import DELAY_HEADER
from rabbitmesh.cloudevents import CloudEvent
from rabbitmesh.dataplane import ExchangeReplier, Target
from rabbitmesh.dispatch import worker as worker_module
from rabbitmesh.dispatch.decision import Action, Decision, decide
from rabbitmesh.dispatch.policy import RETRYABLE_4XX, DeliveryPolicy
from rabbitmesh.dispatch.sender import Outcome, unsendable
from rabbitmesh.dispatch.worker import QueueWorker, Subscriber
from tests.support.sink import Reply, Sink
from tests.support.stubs import StubMessage, StubPublisher, StubWorkerQueues

DLS = "http://dls.invalid/"


def policy(retry: int | None = 2, dls: str | None = DLS, **kw: Any) -> DeliveryPolicy:
    fields: dict[str, Any] = {
        "retry": retry,
        "backoff_policy": "exponential",
        "backoff_delay": 0.5,
        "timeout": None,
        "retry_after_max": None,
        "dead_letter_url": dls,
        "format": "binary",
    }
    fields.update(kw)
    return DeliveryPolicy(**fields)


def event(**attrs: Any) -> CloudEvent:
    base = {"specversion": "1.0", "id": "e1", "source": "tests", "type": "com.example.t"}
    return CloudEvent({**base, **attrs}, b'{"n": 1}')


# --- the pure decision --------------------------------------------------------------------


def test_success_acks_and_a_reply_is_handed_on_only_when_there_is_somewhere_to_go() -> None:
    ok = Outcome(True, 200, reply=event(id="r"))
    assert decide(Outcome(True, 202), 0, policy()) == Decision(Action.ACK)
    assert decide(ok, 0, policy(), replies=True) == Decision(Action.REPLY)
    assert decide(ok, 0, policy(), replies=False) == Decision(Action.ACK)


def test_retryable_failure_with_retries_left_is_retried_after_the_backoff() -> None:
    assert decide(Outcome(False, 503), 0, policy()) == Decision(Action.RETRY, 0.5, 1)
    assert decide(Outcome(False, 0), 1, policy()) == Decision(Action.RETRY, 1.0, 2)


def test_retry_after_is_honoured_up_to_its_maximum() -> None:
    p = policy(retry_after_max=3.0)
    assert decide(Outcome(False, 429, retry_after=2.0), 0, p).delay == 2.0
    assert decide(Outcome(False, 429, retry_after=60.0), 0, p).delay == 3.0
    assert decide(Outcome(False, 500, retry_after=60.0), 0, p).delay == 0.5  # only 429/503


def test_final_failures_dead_letter_or_drop() -> None:
    assert decide(Outcome(False, 500), 2, policy()) == Decision(
        Action.DEAD_LETTER, why="retries exhausted"
    )
    assert decide(Outcome(False, 400), 0, policy()) == Decision(
        Action.DEAD_LETTER, why="not retryable"
    )
    assert decide(unsendable("no"), 0, policy()) == Decision(
        Action.DEAD_LETTER, why="cannot be sent"
    )
    assert decide(Outcome(False, 400), 0, policy(dls=None)) == Decision(
        Action.DROP, why="not retryable"
    )


def test_a_dead_letter_sink_is_retried_for_ever_and_a_refusal_parks_the_event() -> None:
    p = policy(retry=None, dls=None)
    assert decide(Outcome(False, 503), 10_000, p, dead_letter_mode=True).action is Action.RETRY
    refused = Outcome(False, 400, error="HTTP 400")
    assert decide(refused, 3, p, dead_letter_mode=True) == Decision(
        Action.PARK, why="refused it: HTTP 400"
    )


@given(
    status=st.sampled_from([0, 200, 202, 400, 401, 403, 404, 408, 409, 410, 429, 500, 502, 503]),
    retries=st.integers(0, 20),
    retry=st.none() | st.integers(0, 10),
    dls=st.booleans(),
)
def test_decision_rules_hold_for_every_outcome(
    status: int, retries: int, retry: int | None, dls: bool
) -> None:
    p = policy(retry=retry, dls=DLS if dls else None)
    ok = 200 <= status < 300
    d = decide(Outcome(ok, status), retries, p)
    retryable = status == 0 or status >= 500 or status in RETRYABLE_4XX
    if ok:
        assert d.action is Action.ACK
    elif retryable and (retry is None or retries < retry):
        assert d == Decision(Action.RETRY, delay=0.5 * 2**retries, retries=retries + 1)
    else:
        assert d.action is (Action.DEAD_LETTER if dls else Action.DROP)


# --- the worker carrying it out -------------------------------------------------------------

NAMES = Names("t")
QUEUE = "t.trigger.default.tr"


@pytest.fixture(autouse=True)
def no_requeue_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pause before a requeue protects RabbitMQ from a hot loop; here it only costs time."""
    monkeypatch.setattr(worker_module, "REQUEUE_PAUSE", 0.0)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


Make = Callable[..., Awaitable[tuple[QueueWorker, StubPublisher, Sink]]]


@pytest.fixture
def make_worker(make_sink: Callable[..., Awaitable[Sink]], session: aiohttp.ClientSession) -> Make:
    async def make(
        *answers: Reply,
        p: DeliveryPolicy | None = None,
        mode: str = "deliver",
        replier: bool = False,
        publisher: StubPublisher | None = None,
    ) -> tuple[QueueWorker, StubPublisher, Sink]:
        replies = list(answers) or [Reply(202)]
        sink = await make_sink(lambda _r, i: replies[min(i, len(replies) - 1)])
        pub = publisher or StubPublisher()
        sub = Subscriber(
            name="trigger=default/tr",
            namespace="default",
            url=sink.url,
            policy=p or policy(),
            on_reply=(
                ExchangeReplier(pub, Target("t.broker.default.br", True), "tr", carry_ttl=True)
                if replier
                else None
            ),
        )
        worker = QueueWorker(
            queue=QUEUE,
            subscriber=sub,
            consumer=cast(Any, None),  # only start() consumes: these tests hand messages in
            publisher=pub,
            topology=StubWorkerQueues(),
            names=NAMES,
            session=session,
            prefetch=1,
            concurrency=1,
            mode=cast(Any, mode),
        )
        return worker, pub, sink

    return make


async def test_delivered_event_is_acked_without_the_broker_ttl(make_worker: Make) -> None:
    worker, pub, sink = await make_worker(Reply(202))
    msg = StubMessage.of(event(knativebrokerttl=254))
    await worker._handle(msg)
    assert msg.answered == ["ack"] and pub.published == []
    (got,) = sink.received
    assert got.ce_id == "e1" and "ce-knativearrivaltime" in got.headers
    assert "ce-knativebrokerttl" not in got.headers
    assert worker.stats.delivered == 1


async def test_failure_with_retries_left_goes_to_the_delay_queue_then_ack(
    make_worker: Make,
) -> None:
    worker, pub, _ = await make_worker(Reply(503))
    msg = StubMessage.of(event())
    await worker._handle(msg)
    (retry,) = pub.to(NAMES.delay_exchange)
    assert retry.routing_key == QUEUE and retry.mandatory
    assert retry.headers[RETRIES_HEADER] == 1 and retry.headers[DELAY_HEADER] == "500"
    assert msg.answered == ["ack"] and worker.stats.retried == 1


async def test_exhausted_retries_dead_letter_with_the_error_then_ack(make_worker: Make) -> None:
    worker, pub, sink = await make_worker(Reply(500, body=b"boom"))
    msg = StubMessage.of(event(), **{RETRIES_HEADER: 2})
    await worker._handle(msg)
    (dead,) = pub.to(NAMES.dead_letter_queue(QUEUE))
    attrs = dead.event().attributes
    assert attrs["knativeerrorcode"] == "500" and attrs["knativeerrordest"] == sink.url
    assert attrs["knativeerrordata"] == "Ym9vbQ=="  # base64 of the body
    assert msg.answered == ["ack"] and worker.stats.dead_lettered == 1


async def test_not_retryable_without_sink_is_dropped(make_worker: Make) -> None:
    worker, pub, _ = await make_worker(Reply(400), p=policy(dls=None))
    msg = StubMessage.of(event())
    await worker._handle(msg)
    assert pub.published == [] and msg.answered == ["ack"] and worker.stats.dropped == 1


async def test_retry_that_cannot_be_published_now_requeues(make_worker: Make) -> None:
    pub = StubPublisher()
    pub.fail(NAMES.delay_exchange)
    worker, _, _ = await make_worker(Reply(503), publisher=pub)
    msg = StubMessage.of(event())
    await worker._handle(msg)
    assert msg.answered == ["requeue"] and worker.stats.retried == 0


async def test_dead_letter_publish_failing_hands_the_message_to_rabbitmqs_dlx(
    make_worker: Make,
) -> None:
    pub = StubPublisher()
    pub.fail(NAMES.dead_letter_queue(QUEUE))
    worker, _, _ = await make_worker(Reply(400), publisher=pub)
    msg = StubMessage.of(event())
    await worker._handle(msg)
    assert msg.answered == ["nack"]
    # ... into a `:dlq` made sure of first (declared only when needed: amqp/topology.py)
    assert cast(StubWorkerQueues, worker.topology).dead_letter_queues == {QUEUE}


async def test_reply_is_published_into_the_broker_before_the_ack(make_worker: Make) -> None:
    reply = Reply(200, {"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "s", "ce-type": "re"})
    worker, pub, _ = await make_worker(reply, replier=True)
    msg = StubMessage.of(event(knativebrokerttl=7))
    await worker._handle(msg)
    (published,) = pub.to("t.broker.default.br")
    assert published.routing_key == "re"
    assert published.event().attributes["knativebrokerttl"] == 6
    assert msg.answered == ["ack"]


async def test_reply_not_confirmed_redelivers_the_original(make_worker: Make) -> None:
    pub = StubPublisher()
    pub.fail("t.broker.default.br")
    reply = Reply(200, {"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "s", "ce-type": "re"})
    worker, _, _ = await make_worker(reply, replier=True, publisher=pub)
    msg = StubMessage.of(event())
    await worker._handle(msg)
    assert msg.answered == ["requeue"] and worker.stats.delivered == 0


async def test_unpublishable_reply_is_a_failed_delivery(make_worker: Make) -> None:
    pub = StubPublisher()
    pub.fail("t.broker.default.br", UnpublishableMessage("too large"))
    reply = Reply(200, {"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "s", "ce-type": "re"})
    worker, _, _ = await make_worker(reply, replier=True, publisher=pub)
    msg = StubMessage.of(event())
    await worker._handle(msg)
    (retry,) = pub.to(NAMES.delay_exchange)
    assert retry.headers[RETRIES_HEADER] == 1 and msg.answered == ["ack"]


async def test_not_a_cloudevent_is_parked_once(make_worker: Make) -> None:
    worker, pub, sink = await make_worker()
    msg = StubMessage(b"junk", {"x-other": "1"}, "text/plain")
    await worker._handle(msg)
    (parked,) = pub.to(NAMES.parked_queue)
    assert parked.headers["x-rabbitmesh-parked-from"] == QUEUE
    assert msg.answered == ["ack"] and sink.received == []


async def test_dead_letter_sink_refusing_parks_the_event(make_worker: Make) -> None:
    worker, pub, sink = await make_worker(
        Reply(400), p=policy(retry=None, dls=None), mode="dead-letter"
    )
    msg = StubMessage.of(event())
    await worker._handle(msg)
    (parked,) = pub.to(NAMES.parked_queue)
    assert parked.headers["x-rabbitmesh-parked-reason"].startswith(f"dead-letter sink {sink.url}")
    assert msg.answered == ["ack"]


async def test_unexpected_error_is_redelivered_later_with_a_count(make_worker: Make) -> None:
    worker, pub, _ = await make_worker()
    msg = StubMessage.of(event())
    await worker._guard(msg, RuntimeError("a bug"))
    (copy,) = pub.to(NAMES.delay_exchange)
    assert copy.headers[worker_module.HANDLER_ERRORS_HEADER] == 1 and msg.answered == ["ack"]


async def test_a_guard_that_fails_itself_rejects_into_a_dlq_made_sure_of_first(
    make_worker: Make,
) -> None:
    """The redelivery guard's last resort rejects the message (nack without requeue) for
    RabbitMQ to dead-letter into the `:dlq`: a classic queue's is declared only when needed
    (amqp/topology.py), and RabbitMQ drops what it dead-letters to a missing queue."""
    worker, pub, _ = await make_worker()
    pub.fail(NAMES.delay_exchange, RuntimeError("the guard's own copy fails oddly"))
    msg = StubMessage.of(event())
    await worker._guard(msg, RuntimeError("a bug"))
    assert msg.answered == ["nack"]
    assert cast(StubWorkerQueues, worker.topology).dead_letter_queues == {QUEUE}
