"""ConfigMap -> its status: what it means here (rabbitmesh/config/knative.py).

A ConfigMap has no topology. Its status says whether rabbitmesh applies it (`ConfigApplied`)
or accepts it with no effect (`NoEffect`, with why), lists the keys accepted with no meaning
here (`status.warnings`), and for config-features which value of each flag rabbitmesh has an
equivalent for is in force and where it came from (`status.effectiveConfig`). Brokers and
channels read ConfigMaps when they reconcile; a change reconciles the ones it affects
(rabbitmesh/store/dependencies.py).
"""

from __future__ import annotations

import logging

from rabbitmesh.config.effective import FEATURE_FALLBACKS
from rabbitmesh.config.knative import FEATURES, SYSTEM_NAMESPACE, Parsed, parsed
from rabbitmesh.reconciler.context import Context
from rabbitmesh.resources.base import FieldError
from rabbitmesh.resources.core import ConfigMap

log = logging.getLogger("rabbitmesh.config")

#: ConfigMap key -> the resourceVersion whose warnings were logged (once per version).
_logged: dict[tuple[str, str, str], str | None] = {}

KIND = "ConfigMap"
ORDER = 5

_ROLES = {
    "br-defaults": "the defaults of brokers (class, spec.config, delivery)",
    "ch-defaults": "the channel kind of Channels, Sequences and Parallels that name none",
    "features": "the feature flags rabbitmesh has an equivalent for",
}


async def reconcile(ctx: Context, cm: ConfigMap) -> None:
    try:
        meaning: Parsed = parsed(cm)
    except FieldError as e:  # stored by an older version that read it differently
        cm.status.set_ready(False, "InvalidConfig", f"{e.path}: {e.message}")
        return
    extra = cm.status.model_extra
    assert extra is not None
    if meaning.warnings:
        extra["warnings"] = list(meaning.warnings)
        if _logged.get(cm.key, "") != cm.metadata.resource_version:
            _logged[cm.key] = cm.metadata.resource_version
            for w in meaning.warnings:
                log.warning("ConfigMap %s/%s: %s", cm.namespace, cm.name, w)
    else:
        extra.pop("warnings", None)
    if cm.namespace == SYSTEM_NAMESPACE and cm.name == FEATURES:
        eff = ctx.effective()
        extra["effectiveConfig"] = {
            flag: eff.feature(flag).as_status() for flag in FEATURE_FALLBACKS
        }
    else:
        extra.pop("effectiveConfig", None)
    if meaning.role == "none":
        cm.status.set_ready(True, "NoEffect", f"accepted; no effect on RabbitMQ: {meaning.why}")
        return
    cm.status.set_ready(True, "ConfigApplied", f"in force: {_ROLES[meaning.role]}")


async def finalize(ctx: Context, cm: ConfigMap) -> None:
    """Nothing to delete: what read it goes back to the settings (its dependents are
    reconciled again)."""
    _logged.pop(cm.key, None)
