"""The CLI's client for the admin API: stdlib urllib, JSON in and out, one-line errors."""

from __future__ import annotations

import builtins
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

DEFAULT_SERVER = "http://localhost:8080"
#: What `--server` shows as its default in help texts.
SERVER_DEFAULT_HELP = "http://localhost:$RABBITMESH_HTTP_PORT, else " + DEFAULT_SERVER


def default_server() -> str:
    """Where the CLI looks without --server or RABBITMESH_SERVER: the `rabbitmesh run` this
    same environment would start, i.e. localhost on RABBITMESH_HTTP_PORT (https with
    RABBITMESH_TLS_CERT_FILE). Not RABBITMESH_PUBLIC_URL: that is how sinks and other
    services reach rabbitmesh, often a name that only resolves inside a container network.
    """
    port = os.environ.get("RABBITMESH_HTTP_PORT", "").strip()
    if not port.isdigit() or int(port) in (0, 8080) or int(port) > 65535:
        port = ""  # unset, or 0 (any free port): nothing to follow
    scheme = "https" if os.environ.get("RABBITMESH_TLS_CERT_FILE") else "http"
    if not port:
        return f"{scheme}://localhost:8080"
    return f"{scheme}://localhost:{int(port)}"


def server_origin(server: str, from_flag_or_env: bool) -> str:
    """Where the server URL came from, for error messages."""
    if from_flag_or_env:
        return "from --server / RABBITMESH_SERVER"
    if os.environ.get("RABBITMESH_HTTP_PORT", "").strip() and server != DEFAULT_SERVER:
        return "from RABBITMESH_HTTP_PORT"
    return "the default"


#: How to point the CLI at another rabbitmesh, said with every "cannot reach".
POINT_ELSEWHERE = "for another rabbitmesh pass --server URL or set RABBITMESH_SERVER=URL"
#: Seconds a request may wait for the server (connecting, then between two reads) unless the
#: command says otherwise (`apply` scales it with the number of documents).
TIMEOUT = 30.0
#: A body this large that meets a reset connection was most likely refused for its size.
LARGE_BODY = 256 * 1024

#: Short names accepted by `get`/`delete` besides kind, plural and singular (as kubectl's).
SHORT_NAMES = {
    "ns": "namespaces",
    "ch": "channels",
    "imc": "channels",
    "inmemorychannel": "channels",
    "inmemorychannels": "channels",
    "sub": "subscriptions",
    "et": "eventtypes",
}


#: CliError.status of a request the server took but did not answer in time.
TIMED_OUT = -1


class CliError(Exception):
    """Printed as `rabbitmesh: <message>`, exit status 1."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{urllib.parse.quote(namespace)}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{urllib.parse.quote(name)}"
        return base

    @property
    def qualified(self) -> str:
        """`broker.eventing.knative.dev`, as kubectl names a kind in its output."""
        singular = self.kind.lower()
        return f"{singular}.{self.group}" if self.group else singular


# The kinds the dedicated commands work on; the server answers if it does not host one.
BROKER = Kind("eventing.knative.dev", "v1", "Broker", "brokers")
TRIGGER = Kind("eventing.knative.dev", "v1", "Trigger", "triggers")
EVENTTYPE = Kind("eventing.knative.dev", "v1beta3", "EventType", "eventtypes")
CHANNEL = Kind("messaging.knative.dev", "v1", "Channel", "channels")
SUBSCRIPTION = Kind("messaging.knative.dev", "v1", "Subscription", "subscriptions")
PINGSOURCE = Kind("sources.knative.dev", "v1", "PingSource", "pingsources")
CONTAINERSOURCE = Kind("sources.knative.dev", "v1", "ContainerSource", "containersources")
APISERVERSOURCE = Kind("sources.knative.dev", "v1", "ApiServerSource", "apiserversources")
GITLABSOURCE = Kind("sources.knative.dev", "v1alpha1", "GitLabSource", "gitlabsources")
SINKBINDING = Kind("sources.knative.dev", "v1", "SinkBinding", "sinkbindings")
RABBITMQSOURCE = Kind("sources.knative.dev", "v1alpha1", "RabbitmqSource", "rabbitmqsources")
RABBITMQSINK = Kind("sinks.rabbitmesh.dev", "v1alpha1", "RabbitmqSink", "rabbitmqsinks")
SOURCE_KINDS = (
    PINGSOURCE,
    CONTAINERSOURCE,
    APISERVERSOURCE,
    SINKBINDING,
    GITLABSOURCE,
    RABBITMQSOURCE,
)
EVENTTRANSFORM = Kind("eventing.knative.dev", "v1alpha1", "EventTransform", "eventtransforms")
REQUESTREPLY = Kind("eventing.knative.dev", "v1alpha1", "RequestReply", "requestreplies")
JOBSINK = Kind("sinks.knative.dev", "v1alpha1", "JobSink", "jobsinks")


class ApiClient:
    def __init__(self, server: str, token: str | None = None, origin: str = "") -> None:
        self.server = server.rstrip("/")
        self.token = token or None
        self.origin = origin  # "from RABBITMESH_HTTP_PORT", ..., for "cannot reach"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        url = self.server + path
        timeout = TIMEOUT if timeout is None else timeout
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            raise CliError(self._error_text(e), e.code) from None
        except TimeoutError:
            # Raised as it is (not inside a URLError) only once the request was sent: the
            # server was reached and is still working on it, it is not unreachable.
            raise CliError(
                f"the rabbitmesh API at {self.server} took the request but did not answer "
                f"within {timeout:g}s; it may still complete (check with `rabbitmesh get`)",
                TIMED_OUT,
            ) from None
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            if isinstance(why, ConnectionResetError | BrokenPipeError) and len(data or b"") > (
                LARGE_BODY
            ):
                # The server answered before reading the body (over its size limit: 413; no
                # or a wrong token: 401/403) and stopped reading (docs/security.md); urllib
                # sends the whole body before it reads the answer, so it sees a reset instead
                # and cannot tell which it was.
                raise CliError(
                    f"the rabbitmesh API at {self.server} closed the connection while the "
                    f"{len(data or b'')}-byte body was sent: it refused the request unread, "
                    "either for its size (over RABBITMESH_MAX_MANIFEST_BYTES, 1 MiB by "
                    "default: split the manifests into several files) or for its credentials "
                    "(check RABBITMESH_ADMIN_TOKEN; a small request such as `rabbitmesh get "
                    "brokers` shows the server's own answer)"
                ) from None
            detail = "connection refused" if isinstance(why, ConnectionRefusedError) else why
            origin = f", {self.origin}" if self.origin else ""
            raise CliError(
                f"cannot reach the rabbitmesh API at {self.server}{origin} ({detail}); is "
                f"`rabbitmesh run` running there? ({POINT_ELSEWHERE})"
            ) from None
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise CliError(f"{url} did not answer JSON; is it a rabbitmesh API?") from None

    @staticmethod
    def _error_text(e: urllib.error.HTTPError) -> str:
        try:
            body = json.loads(e.read() or b"{}")
        except ValueError:
            body = {}
        message = body.get("error") if isinstance(body, dict) else None
        if not message:
            return f"the API answered {e.code} {e.reason}"
        if e.code in (401, 403):
            return (
                f"{message} (set --token or RABBITMESH_ADMIN_TOKEN)" if e.code == 401 else message
            )
        return str(message)

    # --- conveniences --------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        return self.request("GET", kind.path(namespace, name))

    def list(self, kind: Kind, namespace: str | None) -> list[dict[str, Any]]:
        """Items of a kind in a namespace, or in every namespace with namespace=None."""
        if kind.namespaced and namespace is None:
            base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
            return self.request("GET", f"{base}/{kind.plural}").get("items", [])
        return self.request("GET", kind.path(namespace)).get("items", [])

    def create(self, kind: Kind, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", kind.path(namespace), obj)

    def replace(self, kind: Kind, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", kind.path(namespace, obj["metadata"]["name"]), obj)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any]:
        return self.request("DELETE", kind.path(namespace, name))

    def patch(
        self, kind: Kind, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): null removes a field, objects merge."""
        return self.request(
            "PATCH",
            kind.path(namespace, name),
            patch,
            content_type="application/merge-patch+json",
        )

    def watch(
        self, kind: Kind, namespace: str | None, resource_version: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Watch events ({"type", "object"}) of a kind, from `resource_version` on (or an
        ADDED for every existing object first); ends when the server ends the stream."""
        if kind.namespaced and namespace is None:
            base = f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
            path = f"{base}/{kind.plural}"
        else:
            path = kind.path(namespace)
        query = {"watch": "true"}
        if resource_version:
            query["resourceVersion"] = resource_version
        req = urllib.request.Request(self.server + path + "?" + urllib.parse.urlencode(query))
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            resp = urllib.request.urlopen(req, timeout=None)  # a watch may be quiet for hours
        except urllib.error.HTTPError as e:
            raise CliError(self._error_text(e), e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"cannot reach the rabbitmesh API at {self.server}: {e}") from None
        with resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)

    def kinds(self) -> builtins.list[Kind]:  # `list` here is the method
        out = []
        for r in self.request("GET", "/apis").get("resources", []):
            versions = r.get("versions") or ["v1"]
            out.append(Kind(r["group"], versions[0], r["kind"], r["plural"], r["namespaced"]))
        return out

    def resolve(self, name: str) -> Kind:
        """A kind from what a user types: Broker, broker, brokers, or a short name."""
        want = SHORT_NAMES.get(name.lower(), name.lower())
        group = ""
        if "." in want:  # broker.eventing.knative.dev
            want, group = want.split(".", 1)
        kinds = self.kinds()
        for k in kinds:
            if group and k.group != group:
                continue
            if want in (k.kind.lower(), k.plural, k.plural.removesuffix("s")):
                return k
        known = ", ".join(sorted(k.plural for k in kinds))
        raise CliError(f"unknown resource type {name!r}; known: {known}")
