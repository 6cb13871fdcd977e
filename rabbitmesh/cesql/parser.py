"""CESQL parser: tokens -> an immutable AST.

Precedence follows the spec (CESQL 1.0 section 3.6), highest first; equal precedence
associates left to right:

1. function invocations, literals, attributes, `EXISTS name`, parenthesized expressions
2. unary `NOT` and `-` (so `NOT a = b` is `(NOT a) = b`, as the spec orders it)
3. `[NOT] LIKE 'pattern'` and `[NOT] IN (...)` (postfix, applied left to right)
4. `*` `/` `%`
5. `+` `-`
6. `=` `!=` `<>` `<` `<=` `>` `>=`
7. `AND` `OR` `XOR` (one level, like the spec and its ANTLR grammar)

Checks done here rather than at evaluation (spec 3.3 asks for compile-time checks): the LIKE
pattern must be a string literal, integer literals must fit in 32 bits, `IN` needs at least
one element, names must be well formed. Unknown functions are *not* parse errors: the spec
makes them a missingFunction error at evaluation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rabbitmesh.cesql.casting import INT32_MAX, INT32_MIN
from rabbitmesh.cesql.errors import CesqlParseError
from rabbitmesh.cesql.lexer import (
    COMMA,
    EOF,
    INT,
    KEYWORD,
    LPAREN,
    OP,
    RPAREN,
    STRING,
    WORD,
    Token,
    tokenize,
)

_IDENTIFIER: Final = re.compile(r"[A-Za-z0-9]+\Z")
_FUNCTION_NAME: Final = re.compile(r"[A-Za-z][A-Za-z_]*\Z")
_LOGIC_OPS: Final = frozenset({"AND", "OR", "XOR"})
_COMPARISON_OPS: Final = frozenset({"=", "!=", "<>", "<", "<=", ">", ">="})
_ADDITIVE_OPS: Final = frozenset({"+", "-"})
_MULTIPLICATIVE_OPS: Final = frozenset({"*", "/", "%"})


@dataclass(frozen=True, slots=True)
class Literal:
    value: str | int | bool
    pos: int


@dataclass(frozen=True, slots=True)
class Identifier:
    """An attribute reference; `name` is lower-cased (CESQL names are case-insensitive)."""

    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Exists:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "NOT" or "-"
    operand: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # AND OR XOR = != <> < <= > >= + - * / %
    left: Node
    right: Node
    pos: int


@dataclass(frozen=True, slots=True)
class Like:
    operand: Node
    pattern: str
    negate: bool
    pos: int


@dataclass(frozen=True, slots=True)
class In:
    operand: Node
    items: tuple[Node, ...]
    negate: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Call:
    """A function invocation; `name` is upper-cased."""

    name: str
    args: tuple[Node, ...]
    pos: int


Node = Literal | Identifier | Exists | Unary | Binary | Like | In | Call


def parse(source: str) -> Node:
    """Parse a whole CESQL expression; raises CesqlParseError naming the column."""
    if not isinstance(source, str):
        raise CesqlParseError(f"expression must be a string, got {type(source).__name__}", 0)
    return _Parser(source).parse_root()


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0

    # -- token helpers -------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != EOF:
            self.i += 1
        return tok

    def error(self, reason: str, tok: Token) -> CesqlParseError:
        return CesqlParseError(reason, tok.pos, self.source)

    def is_keyword(self, tok: Token, *words: str) -> bool:
        return tok.kind == KEYWORD and tok.value in words

    # -- grammar, lowest precedence first ------------------------------------------------

    def parse_root(self) -> Node:
        if self.peek().kind == EOF:
            raise self.error("expected an expression but the expression is empty", self.peek())
        node = self.parse_logic()
        tok = self.peek()
        if tok.kind != EOF:
            raise self.error(
                f"expected an operator or end of input after a complete expression, "
                f"found {tok.describe()}",
                tok,
            )
        return node

    def parse_logic(self) -> Node:
        left = self.parse_comparison()
        while (tok := self.peek()).kind == KEYWORD and tok.value in _LOGIC_OPS:
            self.take()
            left = Binary(tok.value, left, self.parse_comparison(), tok.pos)
        return left

    def parse_comparison(self) -> Node:
        left = self.parse_additive()
        while (tok := self.peek()).kind == OP and tok.value in _COMPARISON_OPS:
            self.take()
            left = Binary(tok.value, left, self.parse_additive(), tok.pos)
        return left

    def parse_additive(self) -> Node:
        left = self.parse_multiplicative()
        while (tok := self.peek()).kind == OP and tok.value in _ADDITIVE_OPS:
            self.take()
            left = Binary(tok.value, left, self.parse_multiplicative(), tok.pos)
        return left

    def parse_multiplicative(self) -> Node:
        left = self.parse_postfix()
        while (tok := self.peek()).kind == OP and tok.value in _MULTIPLICATIVE_OPS:
            self.take()
            left = Binary(tok.value, left, self.parse_postfix(), tok.pos)
        return left

    def parse_postfix(self) -> Node:
        node = self.parse_unary()
        while True:
            tok = self.peek()
            negate = False
            if self.is_keyword(tok, "NOT"):
                following = self.peek(1)
                if not self.is_keyword(following, "LIKE", "IN"):
                    raise self.error(
                        f"expected LIKE or IN after NOT, found {following.describe()}", following
                    )
                self.take()
                negate, tok = True, following
            if self.is_keyword(tok, "LIKE"):
                self.take()
                pattern = self.take()
                if pattern.kind != STRING:
                    raise self.error(
                        f"LIKE must be followed by a string literal pattern, "
                        f"found {pattern.describe()}",
                        pattern,
                    )
                node = Like(node, pattern.value, negate, tok.pos)
            elif self.is_keyword(tok, "IN"):
                self.take()
                node = In(node, self.parse_set(tok), negate, tok.pos)
            else:
                return node

    def parse_unary(self) -> Node:
        tok = self.peek()
        if self.is_keyword(tok, "NOT"):
            self.take()
            return Unary("NOT", self.parse_unary(), tok.pos)
        if tok.kind == OP and tok.value in ("-", "+"):
            self.take()
            following = self.peek()
            if following.kind == INT:
                # A signed integer literal, so that -2147483648 is representable.
                self.take()
                return Literal(self.integer(following, negative=tok.value == "-"), tok.pos)
            if tok.value == "+":
                raise self.error(
                    f"'+' as a sign must be followed by digits, found {following.describe()}",
                    following,
                )
            return Unary("-", self.parse_unary(), tok.pos)
        return self.parse_primary()

    def parse_primary(self) -> Node:
        tok = self.take()
        if tok.kind == INT:
            return Literal(self.integer(tok, negative=False), tok.pos)
        if tok.kind == STRING:
            return Literal(tok.value, tok.pos)
        if self.is_keyword(tok, "TRUE", "FALSE"):
            return Literal(tok.value == "TRUE", tok.pos)
        if self.is_keyword(tok, "EXISTS"):
            name = self.take()
            if name.kind != WORD:
                raise self.error(
                    f"EXISTS must be followed by an attribute name, found {name.describe()}", name
                )
            return Exists(self.identifier(name), tok.pos)
        if tok.kind == LPAREN:
            inner = self.parse_logic()
            self.expect_close(tok, "to close the parenthesis")
            return inner
        if tok.kind == WORD:
            if self.peek().kind == LPAREN:
                return self.parse_call(tok)
            return Identifier(self.identifier(tok), tok.pos)
        raise self.error(f"expected an expression, found {tok.describe()}", tok)

    def parse_call(self, name: Token) -> Call:
        if not _FUNCTION_NAME.match(name.value):
            raise self.error(
                f"invalid function name {name.value!r}: function names are letters and '_', "
                "starting with a letter",
                name,
            )
        opening = self.take()
        args: list[Node] = []
        if self.peek().kind == RPAREN:
            self.take()
            return Call(name.value.upper(), (), name.pos)
        while True:
            args.append(self.parse_logic())
            tok = self.take()
            if tok.kind == RPAREN:
                return Call(name.value.upper(), tuple(args), name.pos)
            if tok.kind != COMMA:
                raise self.error(
                    f"expected ',' or ')' in the arguments of {name.value.upper()} "
                    f"(opened at column {opening.pos + 1}), found {tok.describe()}",
                    tok,
                )

    def parse_set(self, keyword: Token) -> tuple[Node, ...]:
        opening = self.take()
        if opening.kind != LPAREN:
            raise self.error(
                f"IN must be followed by a parenthesized list of values, "
                f"found {opening.describe()}",
                opening,
            )
        if self.peek().kind == RPAREN:
            raise self.error("the IN list must contain at least one value", self.peek())
        items: list[Node] = []
        while True:
            items.append(self.parse_logic())
            tok = self.take()
            if tok.kind == RPAREN:
                return tuple(items)
            if tok.kind != COMMA:
                raise self.error(
                    f"expected ',' or ')' in the IN list (opened at column {opening.pos + 1}), "
                    f"found {tok.describe()}",
                    tok,
                )

    def expect_close(self, opening: Token, purpose: str) -> None:
        tok = self.take()
        if tok.kind != RPAREN:
            raise self.error(
                f"expected ')' {purpose} opened at column {opening.pos + 1}, "
                f"found {tok.describe()}",
                tok,
            )

    # -- leaves ----------------------------------------------------------------------------

    def integer(self, tok: Token, *, negative: bool) -> int:
        digits = tok.value.lstrip("0") or "0"
        if len(digits) <= 10:  # bounds int() on absurdly long literals
            value = -int(digits) if negative else int(digits)
            if INT32_MIN <= value <= INT32_MAX:
                return value
        sign = "-" if negative else ""
        raise self.error(
            f"integer literal {sign}{tok.value} is outside the 32-bit range "
            f"[{INT32_MIN}, {INT32_MAX}]",
            tok,
        )

    def identifier(self, tok: Token) -> str:
        if not _IDENTIFIER.match(tok.value):
            raise self.error(
                f"invalid attribute name {tok.value!r}: attribute names are letters and digits",
                tok,
            )
        return tok.value.lower()
