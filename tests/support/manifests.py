"""Manifests several tests share."""

from __future__ import annotations

import textwrap


def request_reply_triggers(replier_url: str, final_url: str) -> str:
    """Broker `br`; trigger `first` sends com.example.request to `replier_url`, trigger
    `second` sends com.example.reply (the replier's answer) to `final_url`."""
    return f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: br}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: first}}
        spec:
          broker: br
          filter: {{attributes: {{type: com.example.request}}}}
          subscriber: {{uri: "{replier_url}"}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: second}}
        spec:
          broker: br
          filter: {{attributes: {{type: com.example.reply}}}}
          subscriber: {{uri: "{final_url}"}}
        """


def broker_manifest(name: str = "br", *, config: str | None = None, annotations: str = "") -> str:
    """Broker `name`, its queues placed by the RabbitmqBrokerConfig `config` when given;
    `annotations` flow mapping entries. In column 0, as broker_and_trigger."""
    meta = f"name: {name}"
    if annotations:
        meta += f", annotations: {{{annotations}}}"
    text = f"apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{{meta}}}\n"
    if config is not None:
        ref = (
            f"apiVersion: eventing.knative.dev/v1alpha1, kind: RabbitmqBrokerConfig, name: {config}"
        )
        text += f"spec: {{config: {{{ref}}}}}\n"
    return text


def trigger_manifest(
    name: str,
    subscriber: str,
    *,
    broker: str = "br",
    filter_type: str | None = None,
    delivery: str | None = None,
    annotations: str = "",
    spec: str = "",
) -> str:
    """Trigger `name` on `broker` delivering to the URI `subscriber`; only events of
    `filter_type` when given; `delivery` the Trigger's delivery (YAML flow text, `{retry: 0}`);
    `annotations` flow mapping entries; `spec` more lines of the spec, indented by two spaces.
    In column 0, as broker_manifest."""
    meta = f"name: {name}"
    if annotations:
        meta += f", annotations: {{{annotations}}}"
    lines = [
        "apiVersion: eventing.knative.dev/v1",
        "kind: Trigger",
        f"metadata: {{{meta}}}",
        "spec:",
        f"  broker: {broker}",
    ]
    if filter_type is not None:
        lines.append(f"  filter: {{attributes: {{type: {filter_type}}}}}")
    lines.append(f'  subscriber: {{uri: "{subscriber}"}}')
    if delivery is not None:
        lines.append(f"  delivery: {delivery}")
    return "\n".join(lines) + "\n" + spec


def broker_and_trigger(
    subscriber: str,
    *,
    broker: str = "br",
    trigger: str = "all",
    filter_type: str | None = None,
    delivery: str | None = None,
    spec: str = "",
    broker_annotations: str = "",
    trigger_annotations: str = "",
    broker_config: str | None = None,
) -> str:
    """Broker `broker` (see broker_manifest) and Trigger `trigger` on it (see
    trigger_manifest). The manifests start in column 0, so they can be followed by more
    documents (`---`), or joined with others by `documents`."""
    return (
        broker_manifest(broker, config=broker_config, annotations=broker_annotations)
        + "---\n"
        + trigger_manifest(
            trigger,
            subscriber,
            broker=broker,
            filter_type=filter_type,
            delivery=delivery,
            annotations=trigger_annotations,
            spec=spec,
        )
    )


def documents(*parts: str) -> str:
    """One YAML stream of `parts` (each dedented, so indented literals mix with the builders
    above), separated by `---`."""
    return "---\n".join(textwrap.dedent(p).strip("\n") + "\n" for p in parts)
