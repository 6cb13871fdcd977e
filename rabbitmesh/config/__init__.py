"""Configuration as Knative and eventing-rabbitmq users write it (issue 20).

- `knative.py`: the knative-eventing ConfigMaps (config-br-defaults, default-ch-webhook,
  config-features, and the ones that mean nothing on RabbitMQ) parsed into typed values, with
  errors that name the key and field;
- `effective.py`: what is in force for a broker, channel or feature, and where it came from
  (ConfigMap, then RABBITMESH_* environment variable, then built-in default);
- `brokers.py`: a Broker's class, `spec.config` and RabbitmqBrokerConfig turned into where its
  topology lives (which RabbitMQ, which vhost, which queue type).
"""
