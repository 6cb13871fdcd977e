"""TidyRobustChannel._open is aio-pika's Channel._open with TidyUnderlay for UnderlayChannel
(rabbitmesh/amqp/channels.py): an aio-pika whose _open changed needs it looked at again."""

from __future__ import annotations

import hashlib
import inspect

import aio_pika

#: sha256 of aio_pika.Channel._open's source in aio-pika 10.2.1.
OPEN_10_2_1 = "f91c03e87a777c0839c889e8ab1fdbab4ac96407639152a3c2c1933af8813248"


def test_aio_pikas_channel_open_is_the_one_tidy_channels_copy() -> None:
    source = inspect.getsource(aio_pika.Channel._open)
    assert hashlib.sha256(source.encode()).hexdigest() == OPEN_10_2_1, (
        "aio_pika.Channel._open changed: bring TidyRobustChannel._open in line with it"
    )
