# ruff: noqa: E501  (the Knative table below is Markdown: one row per line)
"""Renders docs/configuration.md from the Settings model, so the reference never drifts.

python -m rabbitmesh.settings_doc > docs/configuration.md
"""

from __future__ import annotations

from rabbitmesh.config.knative import BROKER_CLASSES, FLAGS, NO_EFFECT
from rabbitmesh.settings import Settings

HEADER = """# Configuration reference

Generated from `rabbitmesh/settings.py` by
`python -m rabbitmesh.settings_doc > docs/configuration.md`; a test fails when this page
and the model disagree.

Every setting is an environment variable, and the `rabbitmesh run` flag of the same name
overrides it (`RABBITMESH_HTTP_PORT=9000` or `rabbitmesh run --http-port 9000`). An invalid
value stops start-up with one line naming the variable.

| variable | flag | default | meaning |
|---|---|---|---|
"""


KNATIVE = """
## Coming from Knative / eventing-rabbitmq

Knative is configured with ConfigMaps in `knative-eventing`, eventing-rabbitmq with
`RabbitmqBrokerConfig` and trigger annotations. rabbitmesh takes the same manifests (config
dir, `rabbitmesh apply`, the admin API at `/api/v1/namespaces/knative-eventing/configmaps`),
hot-reloaded like every resource, and gives each setting the closest meaning on RabbitMQ.
`config/examples/knative/kafka.yaml` is the Kafka section of the article, loading unchanged.

**Which value wins:** the ConfigMap, then the `RABBITMESH_*` environment variable, then the
built-in default. ConfigMaps live in the resource store: every replica reads the same value
and a change applies to running replicas within a second; an environment variable is one
process's start-up fallback (replicas started differently would disagree). A resource's
`status.effectiveConfig` (shown by `rabbitmesh get KIND NAME -o yaml`, and by `rabbitmesh broker describe NAME` for a Broker) lists
each value in force with where it came from: `annotation ...`, `spec.config`,
`ConfigMap knative-eventing/config-br-defaults (namespaceDefaults.ns1)`,
`RABBITMESH_QUEUE_TYPE`, `built-in default`. The `config-features` flags that switch something
here (the table below; `authentication-oidc` and `default-authorization-mode` included, both
switched while running) are listed in that ConfigMap's own `status.effectiveConfig`
(`rabbitmesh get configmap config-features -n knative-eventing -o yaml`), with the same sources.

**Errors and warnings:** an invalid value or an unknown key of a ConfigMap rabbitmesh reads
is refused like any invalid manifest (422 from the API, one line naming file and field at
start-up), e.g. `data.default-br-config.clusterDefault.brokerClass: broker class 'Foo' is not
one rabbitmesh serves`. A Knative key accepted with no meaning here is a warning in the
ConfigMap's (or Channel's) `status.warnings`, logged once, never an error.

| you write | rabbitmesh |
|---|---|
| `config-br-defaults` `default-br-config`: `clusterDefault`, `namespaceDefaults.<ns>` (a namespace's entry wins), `brokerClasses.<class>` | the defaults of brokers that set none, read at every reconcile (existing brokers too) |
| ... `brokerClass` | the class of brokers without the `eventing.knative.dev/broker.class` annotation |
| ... `apiVersion`, `kind`, `name`, `namespace` | the `spec.config` of brokers without one: a `RabbitmqBrokerConfig` places them (below); any other kind (`ConfigMap kafka-broker-config`) is recorded and has no effect |
| ... `delivery` | the delivery of triggers whose trigger and broker set none, before `RABBITMESH_DEFAULT_*` |
| `default-ch-webhook` `default-ch-config`: `clusterDefault`, `namespaceDefaults.<ns>` | the channel kind and spec of Channels, Sequences and Parallels that name no `channelTemplate`; `spec.delivery` is inherited by their subscriptions, as in Knative |
| annotation `eventing.knative.dev/broker.class` | CLASSES served on RabbitMQ (status says so); any other class: not Ready, `UnknownBrokerClass` |
| `RabbitmqBrokerConfig` (`eventing.knative.dev/v1alpha1`) in a Broker's `spec.config` | `queueType` (`quorum`, the default, or `classic`): the type of its triggers' queues; `vhost`: its exchange and queues on that vhost; `rabbitmqClusterReference.connectionSecret`: a Secret (its namespace) whose `uri` (`amqp://` or `amqps://`, with `username`/`password` keys if the URI has none) is another RabbitMQ; `rabbitmqClusterReference.name` (a RabbitmqCluster): `RABBITMESH_AMQP_URL`. A missing config or Secret: not Ready (`BrokerConfigNotFound`, `SecretNotFound`). A change of queue type, vhost or cluster on a broker with triggers is refused, as eventing-rabbitmq refuses it (RabbitMQ cannot retype or move a queue): 422 from the API naming the field (`spec.queueType`, `spec.vhost`, a Broker's `spec.config`, ...); from the config dir, the broker keeps serving where it is, with condition `ConfigApplied: False` (`BrokerConfigImmutable`). Within one running replica; after a restart a queue-type change still meets RabbitMQ's own refusal (the trigger is not Ready, `QueueTypeImmutable`), a vhost or cluster change does not (delete the triggers first) |
| Broker `spec.config` `RabbitmqCluster` | `RABBITMESH_AMQP_URL` |
| Trigger annotation `rabbitmq.eventing.knative.dev/parallelism` (and the older `.../prefetchCount`) | 1 to 1000 deliveries in flight for that trigger (1 = FIFO), instead of `RABBITMESH_CONCURRENCY`; anything else: 422 |
| `KafkaChannel` (`messaging.knative.dev/v1beta1` or `v1`), `NatssChannel` (`v1beta1`) | a Channel (a RabbitMQ fanout exchange); `numPartitions`, `replicationFactor`, `retentionDuration` are accepted and reported as not applicable (`status.warnings`) |
"""


def knative_tables() -> str:
    flags = ["", "| `config-features` flag | here |", "|---|---|"]
    for name, flag in FLAGS.items():
        if flag.switches is not None:
            what = flag.switches
        else:
            what = "accepted, not applicable" + (f": {flag.note}" if flag.note else "")
        flags.append(f"| `{name}` | {what} |")
    flags.append(
        "| `node-selector-*`, `apiserversources-nodeselector-*` | accepted, not applicable |"
    )
    flags.append("| any other flag | refused (422): unknown feature flag |")
    others = ["", "| other ConfigMap in `knative-eventing` | accepted, no effect |", "|---|---|"]
    for name, why in NO_EFFECT.items():
        others.append(f"| `{name}` | {why} |")
    others.append(
        "| any other name (or namespace) | accepted, no effect (`NoEffect` in its status) |"
    )
    classes = ", ".join(f"`{c}`" for c in BROKER_CLASSES)
    return KNATIVE.replace("CLASSES", classes) + "\n".join(flags) + "\n" + "\n".join(others) + "\n"


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else f"`{field.default}`"
        desc = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `RABBITMESH_{name.upper()}` | `--{name.replace('_', '-')}` | {default} | {desc} |"
        )
    return HEADER + "\n".join(rows) + "\n" + knative_tables()


if __name__ == "__main__":
    print(render(), end="")
