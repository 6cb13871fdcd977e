"""One line for an HTTP address that cannot be listened on, instead of a traceback."""

from __future__ import annotations

import os


class ListenError(Exception):
    """The HTTP server could not bind; `str()` is the line to print."""


def cannot_listen(e: OSError, host: str, port: int, change: str) -> ListenError:
    """`cannot listen on 0.0.0.0:8080: address already in use (change it with ...)`.

    `change` names the setting or flag that picks another address."""
    why = os.strerror(e.errno) if e.errno else str(e)
    return ListenError(f"cannot listen on {host}:{port}: {why[:1].lower()}{why[1:]} ({change})")
