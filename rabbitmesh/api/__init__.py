"""The admin REST API: Kubernetes-shaped paths over the resource store (docs/contract.md §7)."""
