"""Which refusals of a stream consume are "still starting" (retried) and which are final.

RabbitMQ 3.10 answers a stream's declare before the stream's local member runs; a consume in
that moment is refused 406 "does not have a replica on the local node" (seen in the suite: a
rabbitmesh exited at start-up on it). The store's follower retries those, and only those.
"""

from __future__ import annotations

import aio_pika.exceptions as amqp_errors
import aiormq.exceptions

from rabbitmesh.amqp.streams import not_consumable_yet


def test_a_stream_still_starting_is_retried() -> None:
    starting = amqp_errors.ChannelPreconditionFailed(
        "PRECONDITION_FAILED - queue 'queue 'rm.store' in vhost '/'' does not have a replica "
        "on the local node"
    )
    forming = amqp_errors.ChannelNotFoundEntity("NOT_FOUND - stream_not_found")
    assert not_consumable_yet(starting)
    assert not_consumable_yet(forming)


def test_other_refusals_are_final() -> None:
    arguments = amqp_errors.ChannelPreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length-bytes'"
    )
    denied = aiormq.exceptions.ChannelAccessRefused("ACCESS_REFUSED - access to queue 'x' refused")
    assert not not_consumable_yet(arguments)
    assert not not_consumable_yet(denied)
    assert not not_consumable_yet(RuntimeError("does not have a replica"))
