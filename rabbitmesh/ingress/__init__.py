"""HTTP ingress: CloudEvents in, confirmed RabbitMQ publishes out (docs/contract.md §3)."""
