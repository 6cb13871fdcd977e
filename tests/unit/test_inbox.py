"""The queue worker's Inbox: what asyncio.Queue did for it, in less memory."""

from __future__ import annotations

import asyncio
import sys

import pytest

from rabbitmesh.dispatch.worker import Inbox


async def test_fifo_and_waiting_getters_in_order() -> None:
    inbox = Inbox()
    got: list[tuple[int, object]] = []

    async def take(i: int) -> None:
        got.append((i, await inbox.get()))

    tasks = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0)  # let them wait (not synchronisation: a yield to the loop)
    for item in ("a", "b", "c"):
        inbox.put_nowait(item)  # type: ignore[arg-type]
    await asyncio.gather(*tasks)
    assert got == [(0, "a"), (1, "b"), (2, "c")]
    inbox.put_nowait("d")  # type: ignore[arg-type]
    inbox.put_nowait("e")  # type: ignore[arg-type]
    assert inbox.qsize() == 2 and not inbox.empty()
    assert [inbox.get_nowait(), inbox.get_nowait()] == ["d", "e"]
    assert inbox.empty()
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()


async def test_a_woken_getter_cancelled_before_it_ran_passes_the_item_on() -> None:
    inbox = Inbox()
    first = asyncio.create_task(inbox.get())
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("x")  # type: ignore[arg-type]  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 5) == "x"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_cancelled_waiter_is_forgotten() -> None:
    inbox = Inbox()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    inbox.put_nowait("y")  # type: ignore[arg-type]
    assert await asyncio.wait_for(inbox.get(), 5) == "y"


def test_an_idle_inbox_is_small() -> None:
    """Smaller than the asyncio.Queue it replaces (four deques of ~600 bytes each)."""
    inbox = Inbox()
    size = sys.getsizeof(inbox) + sys.getsizeof(inbox._waiters)
    assert size < 200, size
