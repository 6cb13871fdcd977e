"""TidyRobustChannel copies parts of aio-pika (rabbitmesh/amqp/channels.py): `_open` is
aio_pika.Channel._open with TidyUnderlay for UnderlayChannel, `_on_open` is
aio_pika.RobustChannel._on_open, and `_restore_queues` does what aio_pika.RobustQueue.restore
does for each queue. An aio-pika whose copied code changed needs them looked at again."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.robust_queue import RobustQueue

#: sha256 of each copied function's source in aio-pika 10.2.1, and what copies it.
COPIED: list[tuple[Callable[..., Any], str, str]] = [
    (
        aio_pika.Channel._open,
        "f91c03e87a777c0839c889e8ab1fdbab4ac96407639152a3c2c1933af8813248",
        "TidyRobustChannel._open",
    ),
    (
        aio_pika.RobustChannel._on_open,
        "7a390a638da6ce1739821694d319a6ee5c8ef03619ef10a77a86c96933d04c2b",
        "TidyRobustChannel._on_open",
    ),
    (
        RobustQueue.restore,
        "877f824f3bf7db143d3d90138870fc786d4f90d389301d26ea97df303eddc779",
        "TidyRobustChannel._restore_queues",
    ),
]


@pytest.mark.parametrize(("function", "digest", "copy"), COPIED, ids=[c[2] for c in COPIED])
def test_aio_pikas_code_is_the_one_tidy_channels_copy(
    function: Callable[..., Any], digest: str, copy: str
) -> None:
    source = inspect.getsource(function)
    assert hashlib.sha256(source.encode()).hexdigest() == digest, (
        f"{function.__qualname__} changed in aio-pika: bring {copy} in line with it"
    )
