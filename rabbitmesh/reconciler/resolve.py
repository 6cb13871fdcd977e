"""Destination -> URL, as Knative's addressable resolver does (docs/contract.md §2)."""

from __future__ import annotations

from urllib.parse import urljoin

from rabbitmesh.resources.duck import Destination

#: Kinds rabbitmesh hosts itself, and the ingress path of each.
HOSTED_PATHS: dict[str, str] = {
    "Broker": "/{namespace}/{name}",
    "Channel": "/channels/{namespace}/{name}",
    "InMemoryChannel": "/channels/{namespace}/{name}",
    "Sequence": "/sequences/{namespace}/{name}",
    "Parallel": "/parallels/{namespace}/{name}",
    # Hosted, but not exchanges: synchronous endpoints (issue 15).
    "EventTransform": "/eventtransforms/{namespace}/{name}",
    "RequestReply": "/requestreplies/{namespace}/{name}",
    "JobSink": "/jobsinks/{namespace}/{name}",
}


def address_url(base_url: str, kind: str, namespace: str, name: str) -> str:
    return base_url + HOSTED_PATHS[kind].format(namespace=namespace, name=name)


def resolve(dest: Destination, namespace: str, *, base_url: str, service_url_template: str) -> str:
    """The URL a destination points at. A ref without namespace means the referrer's."""
    if dest.ref is None:
        assert dest.uri is not None  # the model guarantees ref or uri
        return dest.uri
    ns = dest.ref.namespace or namespace
    if dest.ref.kind in HOSTED_PATHS:
        url = address_url(base_url, dest.ref.kind, ns, dest.ref.name)
    else:
        url = service_url_template.format(name=dest.ref.name, namespace=ns)
    if dest.uri:
        url = urljoin(url, dest.uri)  # RFC 3986 reference resolution, as Knative does
    return url
