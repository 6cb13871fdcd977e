"""The shared, durable resource store: a RabbitMQ stream every replica reads and follows."""
