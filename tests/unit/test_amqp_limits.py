"""check_publishable refuses a body RabbitMQ would refuse for size (its max_message_size):
published, it closes the shared publish channel with PRECONDITION_FAILED."""

from __future__ import annotations

import pytest
from pamqp.commands import Basic

from rabbitmesh.amqp.limits import DEFAULT_MAX_MESSAGE_SIZE, UnpublishableMessage, check_publishable


def test_body_over_max_message_size_is_refused_with_413() -> None:
    props = Basic.Properties(message_id="e1")
    check_publishable(props, 131072, body_size=1000, max_message_size=1000)
    with pytest.raises(UnpublishableMessage) as e:
        check_publishable(props, 131072, body_size=1001, max_message_size=1000)
    assert e.value.status == 413
    assert "RABBITMESH_MAX_MESSAGE_BYTES" in str(e.value)


def test_default_is_rabbitmqs_128_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 128 * 1024 * 1024
    with pytest.raises(UnpublishableMessage):
        check_publishable(Basic.Properties(), 131072, body_size=DEFAULT_MAX_MESSAGE_SIZE + 1)
