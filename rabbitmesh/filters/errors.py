"""The one error a Trigger's filters can be rejected with."""

from __future__ import annotations

import re


class FilterError(ValueError):
    """An invalid filter, located by a field path such as `spec.filters[1].all[0].exact`.

    str() reads `spec.filters[0]: exactly one dialect per filter, got 'exact', 'prefix'`.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def child_path(path: str, key: object) -> str:
    """`path.key`, or `path['odd key']` when the key would make the path ambiguous or span lines."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"
