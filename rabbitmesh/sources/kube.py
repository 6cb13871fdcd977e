"""A small Kubernetes API client for ApiServerSource: discovery, list, watch.

Configuration and authentication come from kubernetes_asyncio: RABBITMESH_KUBECONFIG, else
$KUBECONFIG, else ~/.kube/config when it exists, else the in-cluster service account (tokens,
client certificates, exec plugins and CA bundles all handled there). Requests go through its
ApiClient with `_preload_content=False`, so this module reads the raw responses: JSON
documents, and watch streams of newline-delimited JSON events — which lets the watcher see
BOOKMARK events and 410 Gone exactly as the API server sends them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

#: Seconds a request other than a watch may take.
REQUEST_TIMEOUT = 30.0


class KubeError(Exception):
    """An API error answer (a `Status` object), or no usable answer at all (`code` 0)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}" if code else message)
        self.code = code
        self.reason = reason
        self.message = message


def kubeconfig_path(configured: Path | None) -> Path | None:
    """Which kubeconfig to use; None means in-cluster."""
    if configured is not None:
        return configured.expanduser()
    env = os.environ.get("KUBECONFIG")
    if env:
        first = next((p for p in env.split(os.pathsep) if p), None)
        if first:
            return Path(first)
    default = Path.home() / ".kube" / "config"
    return default if default.exists() else None


def api_path(api_version: str, plural: str, namespace: str | None = None) -> str:
    """The collection URL path of a resource: /api/v1/... for the core group."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    return f"{base}/{plural}"


class Kube:
    def __init__(self, api: ApiClient) -> None:
        self.api = api
        #: The API server's URL, as the kubeconfig (or in-cluster config) names it: Knative's
        #: ApiServerSource uses it as every event's `source`.
        self.host: str = api.configuration.host or ""

    @classmethod
    async def connect(cls, kubeconfig: Path | None) -> Kube:
        config = Configuration()
        path = kubeconfig_path(kubeconfig)
        try:
            if path is not None:
                await load_kube_config(
                    config_file=str(path), client_configuration=config, persist_config=False
                )
            else:
                load_incluster_config(client_configuration=config)
        except (ConfigException, OSError, ValueError, KeyError, TypeError) as e:
            where = f"kubeconfig {path}" if path is not None else "in-cluster config"
            raise KubeError(0, "ConfigError", f"cannot load {where}: {e}") from None
        return cls(ApiClient(configuration=config))

    async def close(self) -> None:
        await self.api.close()

    async def _request(
        self, path: str, params: dict[str, str], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        try:
            resp = await self.api.call_api(
                path,
                "GET",
                query_params=list(params.items()),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise KubeError(0, "Unreachable", f"{type(e).__name__}: {e}") from None
        if resp.status != 200:
            body = await resp.read()
            resp.release()
            raise _status_error(resp.status, body)
        return resp

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        resp = await self._request(path, params or {}, aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        try:
            return orjson.loads(await resp.read())
        except (orjson.JSONDecodeError, aiohttp.ClientError) as e:
            raise KubeError(0, "BadResponse", f"GET {path}: {e}") from None
        finally:
            resp.release()

    async def watch(
        self, path: str, params: dict[str, str], timeout_seconds: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events of one watch request, until the server ends the stream."""
        params = {**params, "watch": "true", "timeoutSeconds": str(timeout_seconds)}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=REQUEST_TIMEOUT, sock_read=timeout_seconds + 30
        )
        resp = await self._request(path, params, timeout)
        try:
            async for line in resp.content:
                if not line.strip():
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise KubeError(0, "BadResponse", f"watch {path}: {e}") from None
                if isinstance(event, dict):
                    yield event
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeError(0, "Unreachable", f"watch {path}: {type(e).__name__}: {e}") from None
        finally:
            resp.release()


def _status_error(code: int, body: bytes) -> KubeError:
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        status = None
    if isinstance(status, dict):
        return KubeError(
            int(status.get("code") or code),
            str(status.get("reason") or ""),
            str(status.get("message") or ""),
        )
    return KubeError(code, "", body[:200].decode(errors="replace"))
