"""Manifests several tests share."""

from __future__ import annotations


def request_reply_triggers(replier_url: str, final_url: str) -> str:
    """Broker `br`; trigger `first` sends com.example.request to `replier_url`, trigger
    `second` sends com.example.reply (the replier's answer) to `final_url`."""
    return f"""
        apiVersion: eventing.knative.dev/v1
        kind: Broker
        metadata: {{name: br}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: first}}
        spec:
          broker: br
          filter: {{attributes: {{type: com.example.request}}}}
          subscriber: {{uri: "{replier_url}"}}
        ---
        apiVersion: eventing.knative.dev/v1
        kind: Trigger
        metadata: {{name: second}}
        spec:
          broker: br
          filter: {{attributes: {{type: com.example.reply}}}}
          subscriber: {{uri: "{final_url}"}}
        """
