"""Logging set-up: readable text by default, one JSON object per line with `json`."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from aiormq.abc import DeliveredMessage


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("event_id", "event_type", "subscriber", "attempt", "source"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _Summary:
    """Stands for a message in a log line: what it was, never its body."""

    def __init__(self, m: DeliveredMessage) -> None:
        self.m = m

    def __repr__(self) -> str:
        props = getattr(self.m.header, "properties", None)
        return (
            f"DeliveredMessage(delivery={self.m.delivery!r}, "
            f"message_id={getattr(props, 'message_id', None)!r}, body=<{len(self.m.body)} bytes>)"
        )

    __str__ = __repr__


class DropMessageBodies(logging.Filter):
    """aiormq logs a whole message (event data included) when a return arrives for a publish
    that no longer waits (`Unhandled message DeliveredMessage(..., body=b'...')`): event data
    must not reach the logs, and a 4 MB body per line floods them. The line stays, the body
    becomes its size."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, DeliveredMessage) for a in args):
            record.args = tuple(_Summary(a) if isinstance(a, DeliveredMessage) else a for a in args)
        return True


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs every request it cannot parse (a control character in a header, no Host)
    as an ERROR with a 12-line traceback: anyone could flood the log with them. It keeps one
    INFO line naming the problem; the client got its 400 already."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())[:200]
            record.msg, record.args = "malformed HTTP request refused (400): %s", (reason,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika/aiormq log every reconnect attempt with tracebacks; ours say it in one line.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level) + 10)
    # On the handler: a logger's filter would not see records of its child loggers.
    handler.addFilter(DropMessageBodies())
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
