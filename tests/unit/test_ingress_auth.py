"""Per-broker ingress tokens (rabbitmesh/ingress/auth.py): parsing and the 401 decision."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from rabbitmesh.ingress.auth import problem, tokens, unauthorized
from rabbitmesh.resources.base import FieldError
from rabbitmesh.resources.core import Secret
from rabbitmesh.resources.eventing import Broker


def broker(annotation: str | None) -> Broker:
    meta: dict[str, object] = {"name": "br", "namespace": "ns"}
    if annotation is not None:
        meta["annotations"] = {"rabbitmesh.dev/ingress-token-secret": annotation}
    return Broker.model_validate(
        {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": meta}
    )


def secret(name: str, **string_data: str) -> Secret:
    return Secret.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "ns"},
            "stringData": string_data,
        }
    )


def lookup(*resources: Secret):
    by_key = {("Secret", r.namespace, r.name): r for r in resources}
    return lambda kind, ns, name: by_key.get((kind, ns, name))


def test_the_annotation_names_a_secret_and_a_key():
    assert broker(None).ingress_token_secret() is None
    assert broker("tok").ingress_token_secret() == ("tok", "token")
    assert broker(" tok/producer-a ").ingress_token_secret() == ("tok", "producer-a")
    for bad in ("", "Tok", "tok/a/b", "/key"):
        with pytest.raises(FieldError) as e:
            broker(bad).check()
        assert "ingress-token-secret" in e.value.path


def test_tokens_are_the_lines_of_the_key_and_fail_closed():
    get = lookup(secret("tok", token="one\n  two \n\n", other="x"))
    assert tokens(get, broker(None)) is None  # open
    assert tokens(get, broker("tok")) == (b"one", b"two")
    assert tokens(get, broker("tok/other")) == (b"x",)
    assert tokens(get, broker("tok/missing")) == ()  # needs a token, none can match
    assert tokens(get, broker("nope")) == ()
    assert tokens(lookup(secret("tok", token="\n")), broker("tok")) == ()
    assert problem(get, broker("tok")) is None
    assert "ns/nope" in (problem(get, broker("nope")) or "")
    assert "one" not in (problem(get, broker("tok/missing")) or "")  # never a value


@pytest.mark.parametrize(
    ("header", "challenge"),
    [
        (None, 'Bearer realm="rabbitmesh"'),
        ("Basic b25lOg==", 'Bearer realm="rabbitmesh"'),
        ("Bearer", 'Bearer realm="rabbitmesh"'),
        ("Bearer one1", 'Bearer realm="rabbitmesh", error="invalid_token"'),
        ("Bearer on", 'Bearer realm="rabbitmesh", error="invalid_token"'),
    ],
)
def test_unauthorized_answers_401_with_a_challenge(header, challenge):
    headers = {"Authorization": header} if header is not None else {}
    response = unauthorized(make_mocked_request("POST", "/ns/br", headers=headers), (b"one",))
    assert response is not None and response.status == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert b"one" not in response.body  # type: ignore[operator]


def test_any_accepted_token_passes():
    for header in ("Bearer one", "bearer two", "BEARER   two  "):
        request = make_mocked_request("POST", "/ns/br", headers={"Authorization": header})
        assert unauthorized(request, (b"one", b"two")) is None
    request = make_mocked_request("POST", "/ns/br", headers={"Authorization": "Bearer one"})
    assert unauthorized(request, ()) is not None
