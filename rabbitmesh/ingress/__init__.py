"""HTTP ingress: CloudEvents in, confirmed RabbitMQ publishes out (CONTRACT.md §3)."""
