"""Delivering events from RabbitMQ queues to HTTP subscribers (docs/contract.md §4)."""
