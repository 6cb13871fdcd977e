"""EventTransform's engine: JSONata over a whole CloudEvent (rabbitmesh/transform/jsonata.py)."""
