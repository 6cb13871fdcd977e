"""CESQL 1.0 (CloudEvents SQL Expression Language): lexer, parser and closure compiler.

    from rabbitmesh.cesql import compile_expression, evaluate

    value, errors = evaluate("EXISTS subject AND int(sequence) > 5", attributes)
    expr = compile_expression("type LIKE 'com.example.%'")   # parse once ...
    expr.evaluate(attributes)                                 # ... evaluate many times

Evaluation is total: it never raises and returns `(value, errors)`; each error has a `.kind`
among `ERROR_KINDS`. Only `compile_expression` raises, with `CesqlParseError`.
"""

from rabbitmesh.cesql.errors import ERROR_KINDS, CesqlError, CesqlParseError
from rabbitmesh.cesql.expression import Expression, compile_expression, evaluate

__all__ = [
    "ERROR_KINDS",
    "CesqlError",
    "CesqlParseError",
    "Expression",
    "compile_expression",
    "evaluate",
]
