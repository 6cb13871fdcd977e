"""The one error a Trigger's filters can be rejected with."""

from __future__ import annotations


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
