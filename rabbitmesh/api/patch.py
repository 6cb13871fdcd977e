"""JSON Merge Patch (RFC 7386), the `PATCH` of `application/merge-patch+json`."""

from __future__ import annotations

from typing import Any

#: Deepest merge patch taken (objects and arrays; the outermost object is level 1). Merging
#: recurses once per level: a patch ~1,000 levels deep exhausted the stack (a 500). No
#: manifest comes near this.
MAX_PATCH_DEPTH = 100


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 §2: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out
