"""CESQL lexer: expression text -> tokens, each with its 0-based position for error messages.

Follows the spec's lexer grammar (cloudevents/spec cesql/CESQLLexer.g4):

* keywords (AND, OR, XOR, NOT, LIKE, IN, EXISTS, TRUE, FALSE) are case-insensitive;
* a word of ASCII letters, digits and `_` is an integer when it is all digits, else a keyword,
  an attribute name or a function name (the parser decides by the `(` that follows);
* strings are `'...'` or `"..."`. A backslash always pairs with the next character:
  `\\'` inside `'...'` (and `\\"` inside `"..."`) is the quote itself, any other pair is kept
  verbatim so that LIKE still sees `\\%` and `\\_`. A doubled quote (`'it''s'`) is one quote;
* only space, tab, CR and LF separate tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rabbitmesh.cesql.errors import CesqlParseError

INT: Final = "integer"
STRING: Final = "string"
WORD: Final = "word"
KEYWORD: Final = "keyword"
OP: Final = "operator"
LPAREN: Final = "("
RPAREN: Final = ")"
COMMA: Final = ","
EOF: Final = "end"

KEYWORDS: Final = frozenset({"AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE"})

_WHITESPACE: Final = frozenset(" \t\r\n")
_WORD: Final = re.compile(r"[A-Za-z0-9_]+")
_TWO_CHAR_OPS: Final = frozenset({"!=", "<>", "<=", ">="})
_ONE_CHAR_OPS: Final = frozenset("=<>+-*/%")
_PUNCTUATION: Final = {"(": LPAREN, ")": RPAREN, ",": COMMA}


@dataclass(frozen=True, slots=True)
class Token:
    """One token. `value` is the decoded text (upper-cased for keywords)."""

    kind: str
    value: str
    pos: int

    def describe(self) -> str:
        """How error messages name this token."""
        if self.kind == EOF:
            return "end of input"
        if self.kind == INT:
            return f"integer {self.value}"
        if self.kind == STRING:
            shown = self.value if len(self.value) <= 40 else self.value[:40] + "..."
            return f"string {shown!r}"
        if self.kind == KEYWORD:
            return f"keyword {self.value}"
        if self.kind == WORD:
            return f"name {self.value!r}"
        return f"{self.value!r}"


def tokenize(source: str) -> list[Token]:
    """Split `source` into tokens, ending with an EOF token; raises CesqlParseError."""
    tokens: list[Token] = []
    n = len(source)
    i = 0
    while i < n:
        c = source[i]
        if c in _WHITESPACE:
            i += 1
            continue
        if c == "'" or c == '"':
            value, end = _read_string(source, i)
            tokens.append(Token(STRING, value, i))
            i = end
            continue
        m = _WORD.match(source, i)
        if m is not None:
            text = m.group()
            if text.isdigit():
                tokens.append(Token(INT, text, i))
            elif text.upper() in KEYWORDS:
                tokens.append(Token(KEYWORD, text.upper(), i))
            else:
                tokens.append(Token(WORD, text, i))
            i = m.end()
            continue
        pair = source[i : i + 2]
        if pair in _TWO_CHAR_OPS:
            tokens.append(Token(OP, pair, i))
            i += 2
            continue
        if c in _ONE_CHAR_OPS:
            tokens.append(Token(OP, c, i))
            i += 1
            continue
        if c in _PUNCTUATION:
            tokens.append(Token(_PUNCTUATION[c], c, i))
            i += 1
            continue
        if c == "!":
            raise CesqlParseError("'!' must be followed by '=' (the operator is '!=')", i, source)
        raise CesqlParseError(f"unexpected character {c!r}", i, source)
    tokens.append(Token(EOF, "", n))
    return tokens


def _read_string(source: str, start: int) -> tuple[str, int]:
    """Decode the string literal opening at `start`; return its value and the end offset."""
    quote = source[start]
    n = len(source)
    out: list[str] = []
    j = start + 1
    while j < n:
        ch = source[j]
        if ch == "\\" and j + 1 < n:
            nxt = source[j + 1]
            out.append(quote if nxt == quote else ch + nxt)
            j += 2
        elif ch == quote:
            if j + 1 < n and source[j + 1] == quote:
                out.append(quote)
                j += 2
            else:
                return "".join(out), j + 1
        else:
            out.append(ch)
            j += 1
    raise CesqlParseError(f"unterminated string literal (missing closing {quote})", start, source)
