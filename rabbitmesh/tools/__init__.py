"""The helper services of Knative's samples, as `rabbitmesh` commands (docs/contract.md §7):
event-display, appender, filter and heartbeats. Each is a small, real HTTP process."""
