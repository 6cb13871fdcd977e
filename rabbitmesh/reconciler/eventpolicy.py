"""EventPolicy -> its status: `from` (the subjects it allows, refs resolved, as Knative's
`status.from`), `targets` (the resources it applies to now), and Ready.

Enforcement is at ingress (rabbitmesh/auth/gate.py). Without authentication-oidc (config-features,
else RABBITMESH_AUTHENTICATION_OIDC)
nothing is enforced, so a policy is not Ready then (reason `OIDCAuthenticationDisabled`, as
Knative reports it), which says plainly that it protects nothing.
"""

from __future__ import annotations

from rabbitmesh.auth.policies import subjects, targets
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.eventpolicy import EventPolicy

KIND = "EventPolicy"
ORDER = 90


async def reconcile(ctx: Context, policy: EventPolicy) -> None:
    extra = policy.status.model_extra
    assert extra is not None
    extra["from"] = subjects(policy)
    extra["targets"] = [
        {"apiVersion": f"{t.GROUP}/{t.VERSIONS[0]}", "kind": t.KIND, "name": t.name}
        for t in targets(policy, list(ctx.resources.values()))
    ]
    if ctx.gate is not None:
        ctx.gate.policies.invalidate()
        policy.status.set_ready(True)
    else:
        policy.status.set_ready(
            False,
            "OIDCAuthenticationDisabled",
            "EventPolicies are enforced only with authentication-oidc enabled (config-features "
            "in knative-eventing, else RABBITMESH_AUTHENTICATION_OIDC=true)",
        )


async def finalize(ctx: Context, policy: EventPolicy) -> None:
    if ctx.gate is not None:
        ctx.gate.policies.invalidate()
