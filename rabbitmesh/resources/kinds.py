"""Imports every kind module so that each registers itself. A new kind: add its import here."""

from rabbitmesh.resources import (
    core,  # noqa: F401
    eventing,  # noqa: F401
    eventtypes,  # noqa: F401
    flows,  # noqa: F401
    messaging,  # noqa: F401
    replay,  # noqa: F401
    sources,  # noqa: F401
)
