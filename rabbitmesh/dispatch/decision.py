"""The delivery core: what becomes of a message after one attempt, as a pure function.

`decide` takes the attempt's outcome, how many retries the message already had and the
delivery policy, and answers one of: ack, reply (then ack), retry after d, dead-letter, drop
(no dead-letter sink), park. No I/O, no clock, no RabbitMQ: the queue worker
(dispatch/worker.py) carries the decision out and handles what RabbitMQ then does (a publish
that fails for now is a requeue whatever the decision was). The rules are Knative's
(docs/delivery.md): 2xx succeeds; connection errors, timeouts, 404, 408, 409, 429 and 5xx
are retried `retry` times with the policy's backoff (Retry-After honoured up to
`retryAfterMax`); then the event goes to the dead-letter sink, or is dropped without one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rabbitmesh.dispatch.policy import DeliveryPolicy
from rabbitmesh.dispatch.sender import Outcome


class Action(enum.Enum):
    ACK = "ack"  # delivered: ack
    REPLY = "reply"  # delivered with a reply to hand on: publish it, then ack
    RETRY = "retry"  # publish a copy through the delay queue for `delay`, then ack
    DEAD_LETTER = "dead-letter"  # publish to the queue's :dlq with knativeerror*, then ack
    DROP = "drop"  # final failure and no dead-letter sink: log, ack
    PARK = "park"  # a dead letter its sink refused for good: keep it for an operator


@dataclass(frozen=True)
class Decision:
    action: Action
    #: RETRY: seconds before the next attempt
    delay: float = 0.0
    #: RETRY: the retry count the copy carries (the attempt after it is retries + 1)
    retries: int = 0
    #: DEAD_LETTER, DROP, PARK: why the failure is final
    why: str = ""


def decide(
    outcome: Outcome,
    retries: int,
    policy: DeliveryPolicy,
    *,
    replies: bool = False,
    dead_letter_mode: bool = False,
) -> Decision:
    """What to do after an attempt. `retries`: retries this message already had (0 on the
    first attempt); `replies`: the subscription hands replies on; `dead_letter_mode`: this
    queue is a `:dlq` delivering to its dead-letter sink (a refusal parks the event)."""
    if outcome.ok:
        if replies and outcome.reply is not None:
            return Decision(Action.REPLY)
        return Decision(Action.ACK)
    if outcome.retryable and policy.retries_left(retries):
        n = retries + 1
        delay = policy.delay_before_retry(n, outcome.status, outcome.retry_after)
        return Decision(Action.RETRY, delay=delay, retries=n)
    if outcome.unsendable:
        why = "cannot be sent"
    else:
        why = "not retryable" if not outcome.retryable else "retries exhausted"
    return final(outcome, policy, why, dead_letter_mode=dead_letter_mode)


def final(
    outcome: Outcome, policy: DeliveryPolicy, why: str, *, dead_letter_mode: bool = False
) -> Decision:
    """A failure that will not be retried (`why`): dead-letter, drop or park."""
    if dead_letter_mode:
        return Decision(Action.PARK, why=f"refused it: {outcome.error}")
    if policy.dead_letter_url is None:
        return Decision(Action.DROP, why=why)
    return Decision(Action.DEAD_LETTER, why=why)
