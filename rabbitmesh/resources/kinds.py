"""Imports every kind module so that each registers itself. A new kind: add its import here."""

from rabbitmesh.resources import (
    bridges,  # noqa: F401
    core,  # noqa: F401
    eventing,  # noqa: F401
    eventpolicy,  # noqa: F401
    eventtypes,  # noqa: F401
    flows,  # noqa: F401
    messaging,  # noqa: F401
    rabbitmq,  # noqa: F401
    sources,  # noqa: F401
)
