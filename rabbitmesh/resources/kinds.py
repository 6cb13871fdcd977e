"""Imports every kind module so that each registers itself. A new kind: add its import here."""

from rabbitmesh.resources import eventing  # noqa: F401
