"""The admin REST API: Kubernetes-shaped paths over the resource store (CONTRACT.md §7)."""
