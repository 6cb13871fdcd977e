"""Delivering events from RabbitMQ queues to HTTP subscribers (CONTRACT.md §4)."""
