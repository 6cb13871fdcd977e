"""Sending CloudEvents to an ingress the way users do (curl-like, over real HTTP)."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import orjson


def binary_headers(
    type_: str = "com.example.test", id_: str | None = None, source: str = "tests", **ext: str
) -> dict[str, str]:
    h = {
        "ce-specversion": "1.0",
        "ce-id": id_ or uuid.uuid4().hex,
        "ce-type": type_,
        "ce-source": source,
        "content-type": "application/json",
    }
    h.update({f"ce-{k}": v for k, v in ext.items()})
    return h


async def post(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | str = b"",
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, headers=headers or {}, data=body) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def post_binary(
    url: str, type_: str = "com.example.test", data: Any = None, id_: str | None = None, **ext: str
) -> tuple[int, str]:
    id_ = id_ or uuid.uuid4().hex
    body = orjson.dumps(data if data is not None else {"n": 1})
    status, _, _ = await post(url, headers=binary_headers(type_, id_, **ext), body=body)
    return status, id_


async def post_each_type(url: str, types: list[str]) -> list[str]:
    """One binary event of each type to `url` (each must be accepted); their ids."""
    ids = []
    for type_ in types:
        status, id_ = await post_binary(url, type_=type_)
        assert status == 202, (type_, status)
        ids.append(id_)
    return ids


async def post_structured(url: str, event: dict[str, Any]) -> tuple[int, bytes]:
    status, _, body = await post(
        url,
        headers={"content-type": "application/cloudevents+json"},
        body=orjson.dumps(event),
    )
    return status, body
