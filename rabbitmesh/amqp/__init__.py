"""RabbitMQ plumbing: connections with reconnect, confirmed publishing, topology names."""
