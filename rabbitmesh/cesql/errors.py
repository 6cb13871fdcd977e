"""CESQL errors: the spec's seven error kinds, as values and as exceptions.

CESQL is total: evaluation never raises, it returns its errors in a list next to the value.
Only `compile_expression` raises, and only `CesqlParseError`.
"""

from __future__ import annotations

from typing import Final

#: Readable label of each error kind the spec defines (section 3.3), keyed by the TCK's names.
KIND_LABELS: Final[dict[str, str]] = {
    "parse": "parse error",
    "math": "math error",
    "cast": "cast error",
    "missingFunction": "missing function error",
    "functionEvaluation": "function evaluation error",
    "missingAttribute": "missing attribute error",
    "generic": "generic error",
}

ERROR_KINDS: Final[frozenset[str]] = frozenset(KIND_LABELS)


class CesqlError(ValueError):
    """One CESQL error. `kind` is one of `ERROR_KINDS`; `position` is a 0-based offset or None.

    Instances returned by evaluation are shared between evaluations where the message is
    static (missing attribute, missing function): treat them as immutable.
    """

    def __init__(self, kind: str, message: str, position: int | None = None) -> None:
        if kind not in KIND_LABELS:
            raise ValueError(f"unknown CESQL error kind {kind!r}")
        super().__init__(kind, message, position)
        self.kind = kind
        self.message = message
        self.position = position

    def __str__(self) -> str:
        return f"{KIND_LABELS[self.kind]}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, message={self.message!r})"


class CesqlParseError(CesqlError):
    """The expression is not valid CESQL; the message names the column and what was expected."""

    def __init__(self, reason: str, position: int, source: str | None = None) -> None:
        self.column = position + 1
        super().__init__("parse", f"at column {self.column}: {reason}", position)
        # args mirror __init__ so the exception pickles and copies faithfully.
        self.args = (reason, position, source)
        self.reason = reason
        self.source = source
