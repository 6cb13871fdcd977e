"""rabbitmesh: Knative Eventing's model on RabbitMQ, without Kubernetes."""

__version__ = "0.1.0"
