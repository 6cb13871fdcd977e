"""Desired resources -> RabbitMQ topology, running consumers and status (one module per kind)."""
