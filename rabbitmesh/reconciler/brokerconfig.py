"""RabbitmqBrokerConfig -> its status. It has no topology of its own: the Brokers naming it
in `spec.config` are placed by it (rabbitmesh/config/brokers.py) and report problems (a
missing connection Secret, an unreachable RabbitMQ) in their own status."""

from __future__ import annotations

from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.rabbitmq import RabbitmqBrokerConfig

KIND = "RabbitmqBrokerConfig"
ORDER = 5


async def reconcile(ctx: Context, cfg: RabbitmqBrokerConfig) -> None:
    users = sorted(
        f"{key[1]}/{key[2]}" for key, placement in ctx.placements.items() if _names(ctx, key, cfg)
    )
    extra = cfg.status.model_extra
    assert extra is not None
    extra["brokers"] = users
    cfg.status.set_ready(True, "Accepted", "")


def _names(ctx: Context, key: tuple[str, str, str], cfg: RabbitmqBrokerConfig) -> bool:
    broker = ctx.resources.get(key)
    ref = getattr(getattr(broker, "spec", None), "config", None)
    if ref is None or ref.kind != KIND:
        return False
    return ref.name == cfg.name and (ref.namespace or key[1]) == cfg.namespace


async def finalize(ctx: Context, cfg: RabbitmqBrokerConfig) -> None:
    """Nothing to delete; its brokers become not Ready (BrokerConfigNotFound)."""
