"""Pure parts of issue 14: partition hashing, the annotations, the Replay model."""

from __future__ import annotations

import pytest

from rabbitmesh.dispatch.ordered import key_of, partition_of
from rabbitmesh.resources.base import FieldError
from rabbitmesh.resources.eventing import Broker, Trigger
from rabbitmesh.resources.ordering import partitions
from rabbitmesh.resources.replay import Replay, archive_limits


def trigger(annotations: dict[str, str]) -> Trigger:
    return Trigger.model_validate(
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {"name": "t", "annotations": annotations},
            "spec": {"broker": "b", "subscriber": {"uri": "http://x/"}},
        }
    )


def test_a_key_always_lands_in_the_same_partition():
    # crc32, not hash(): the same in every process and every replica
    assert partition_of("order-17", 8, 0) == partition_of("order-17", 8, 99) == 4
    spread = {partition_of(f"k{i}", 8, 0) for i in range(200)}
    assert spread == set(range(8))
    assert partition_of(None, 8, 13) == 5  # no key: round robin


def test_the_key_comes_from_headers_in_either_binding():
    assert key_of({"ce-partitionkey": "a"}, b"", None) == "a"
    assert key_of({"cloudEvents:partitionkey": b"b"}, b"", None) == "b"
    assert key_of({"ce-id": "1"}, b"", None) is None


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, None),
        ({"rabbitmesh.dev/delivery-order": "unordered"}, None),
        ({"rabbitmesh.dev/delivery-order": "ordered"}, 8),
        ({"rabbitmesh.dev/delivery-order": "ordered", "rabbitmesh.dev/partitions": "64"}, 64),
    ],
)
def test_ordering_annotations(annotations, expected):
    assert partitions(trigger(annotations)) == expected


@pytest.mark.parametrize(
    "annotations",
    [
        {"rabbitmesh.dev/delivery-order": "yes"},
        {"rabbitmesh.dev/delivery-order": "ordered", "rabbitmesh.dev/partitions": "-1"},
        {"rabbitmesh.dev/delivery-order": "ordered", "rabbitmesh.dev/partitions": "8.5"},
    ],
)
def test_bad_ordering_annotations_name_the_annotation(annotations):
    with pytest.raises(FieldError) as e:
        trigger(annotations).check()
    assert e.value.path.startswith("metadata.annotations[rabbitmesh.dev/")


def test_archive_annotations():
    def broker(notes: dict[str, str]) -> Broker:
        return Broker.model_validate(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Broker",
                "metadata": {"name": "b", "annotations": notes},
            }  # fmt: skip
        )

    assert archive_limits(broker({})) is None
    assert archive_limits(broker({"rabbitmesh.dev/archive-retention": "P7D"})) == (604800, None)
    both = {"rabbitmesh.dev/archive-retention": "PT1H", "rabbitmesh.dev/archive-max-bytes": "10"}
    assert archive_limits(broker(both)) == (3600, 10)
    for bad in (
        {"rabbitmesh.dev/archive-retention": "7 days"},
        {"rabbitmesh.dev/archive-max-bytes": "10"},
        {"rabbitmesh.dev/archive-retention": "P1D", "rabbitmesh.dev/archive-max-bytes": "x"},
    ):
        with pytest.raises(FieldError):
            broker(bad).check()


def test_replay_spec_reads_from_and_destination():
    r = Replay.model_validate(
        {
            "apiVersion": "rabbitmesh.dev/v1alpha1",
            "kind": "Replay",
            "metadata": {"name": "r"},
            "spec": {
                "broker": "b",
                "from": "2026-12-01T00:00:00Z",
                "destination": {"uri": "http://127.0.0.1:9/"},
            },
        }
    )
    r.check()
    assert r.spec.to is None and r.spec.destination.trigger is None
    assert r.spec.dump()["from"].startswith("2026-12-01T00:00:00")
