"""Destination -> URL, as Knative's addressable resolver does (docs/contract.md §2)."""

from __future__ import annotations

from urllib.parse import urljoin

from rabbitmesh.hosted import hosted_kind
from rabbitmesh.resources.duck import Destination


def address_url(base_url: str, kind: str, namespace: str, name: str) -> str:
    """The URL of a resource rabbitmesh hosts (its ingress path, rabbitmesh/hosted.py)."""
    row = hosted_kind(kind)
    if row is None:
        raise KeyError(f"{kind} is not a kind rabbitmesh hosts")
    return row.url(base_url, namespace, name)


def resolve(dest: Destination, namespace: str, *, base_url: str, service_url_template: str) -> str:
    """The URL a destination points at. A ref without namespace means the referrer's."""
    if dest.ref is None:
        assert dest.uri is not None  # the model guarantees ref or uri
        return dest.uri
    ns = dest.ref.namespace or namespace
    row = hosted_kind(dest.ref.kind)
    if row is not None:
        url = row.url(base_url, ns, dest.ref.name)
    else:
        url = service_url_template.format(name=dest.ref.name, namespace=ns)
    if dest.uri:
        url = urljoin(url, dest.uri)  # RFC 3986 reference resolution, as Knative does
    return url
