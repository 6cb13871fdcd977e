"""Sender identity (Knative's `authentication-oidc`) and authorization (EventPolicy).

- identity.py  who a resource is (`sub`) and what a target is called (`aud`), as Knative
- verify.py    checking a bearer JWT against the trusted issuers' keys (JWKS)
- issuer.py    rabbitmesh as an issuer: its signing key, JWKS, discovery, tokens it mints
- policies.py  which EventPolicies apply to a target and what they allow
- gate.py      the decision at an ingress path: 401, 403, or the events it may take
"""
