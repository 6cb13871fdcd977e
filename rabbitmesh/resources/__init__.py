"""Resource models (one module per API group), manifest loading and the kind registry."""
