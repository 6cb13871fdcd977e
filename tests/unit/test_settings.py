"""Settings from RABBITMESH_* variables, and one clear line when one is wrong."""

from __future__ import annotations

import pytest

from rabbitmesh.settings import SettingsError, load_settings


def test_defaults(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("RABBITMESH_"):
            monkeypatch.delenv(k)
    s = load_settings()
    assert s.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert (s.http_host, s.http_port) == ("0.0.0.0", 8080)
    assert s.base_url == "http://localhost:8080"
    assert s.topology_prefix == "rabbitmesh"
    assert s.max_event_bytes == 4194304
    assert (s.default_retry, s.default_backoff_policy, s.default_backoff_delay) == (
        10,
        "exponential",
        "PT0.2S",
    )


def test_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("RABBITMESH_HTTP_PORT", "9090")
    monkeypatch.setenv("RABBITMESH_PUBLIC_URL", "https://events.example.com/")
    assert load_settings().http_port == 9090
    assert load_settings(http_port=7000).http_port == 7000
    assert load_settings().base_url == "https://events.example.com"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("RABBITMESH_HTTP_PORT", "eighty", "RABBITMESH_HTTP_PORT: Input should be a valid integer"),
        ("RABBITMESH_HTTP_PORT", "70000", "RABBITMESH_HTTP_PORT"),
        ("RABBITMESH_AMQP_URL", "redis://x", "RABBITMESH_AMQP_URL: must start with amqp://"),
        ("RABBITMESH_LOG_FORMAT", "xml", "RABBITMESH_LOG_FORMAT"),
        ("RABBITMESH_TOPOLOGY_PREFIX", "has space", "RABBITMESH_TOPOLOGY_PREFIX"),
        ("RABBITMESH_DEFAULT_BACKOFF_DELAY", "200ms", "ISO-8601"),
        ("RABBITMESH_SERVICE_URL_TEMPLATE", "http://{svc}", "service_url_template"),
    ],
)
def test_bad_values_give_one_line(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as e:
        load_settings()
    assert needle in str(e.value)
    assert "\n" not in str(e.value)
