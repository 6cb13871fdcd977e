"""Header-value escaping of the CloudEvents HTTP binding (1.0.2 §3.1.3.2).

Encoding percent-encodes space, double-quote, percent and everything outside printable
US-ASCII, as UTF-8 bytes with upper-case hex. Decoding first undoes an RFC 7230
quoted-string (older senders quote instead of escaping), then does exactly one round of
percent-decoding, rejecting malformed escapes and byte sequences that are not UTF-8; both
are MUSTs the common SDKs skip.

Most values need neither: a compiled regex recognises them in one C-level scan.
"""

from __future__ import annotations

import re

# Printable ASCII U+0021..U+007E except '"' (0x22) and '%' (0x25).
_SAFE = re.compile(r"[!#$&-~]*")
_ENCODED_BYTE = tuple(
    chr(b) if 0x21 <= b <= 0x7E and b not in (0x22, 0x25) else f"%{b:02X}" for b in range(256)
)
_HEX_PAIR = {
    f"{hi}{lo}": int(f"{hi}{lo}", 16)
    for hi in "0123456789abcdefABCDEF"
    for lo in "0123456789abcdefABCDEF"
}


def needs_encoding(value: str) -> bool:
    """True when `value` has a character the HTTP binding requires to be percent-encoded.

    Four C-level string scans beat one regex match on typical short values.
    """
    return (
        not (value.isascii() and value.isprintable())
        or " " in value
        or '"' in value
        or "%" in value
    )


def percent_encode(value: str) -> str:
    """Escape `value` for an HTTP header; raises ValueError for unpaired surrogates."""
    if _SAFE.fullmatch(value) is not None:
        return value
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("value is not valid Unicode (unpaired surrogate)") from exc
    return "".join([_ENCODED_BYTE[b] for b in raw])


def _unquote(value: str) -> str:
    """Undo an RFC 7230 §3.2.6 quoted-string: strip the quotes, resolve backslash escapes."""
    inner = value[1:-1]
    if "\\" not in inner:
        if '"' in inner:
            raise ValueError("malformed quoted string: unescaped '\"'")
        return inner
    out: list[str] = []
    chars = iter(inner)
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError("malformed quoted string: dangling backslash")
            out.append(escaped)
        elif ch == '"':
            raise ValueError("malformed quoted string: unescaped '\"'")
        else:
            out.append(ch)
    return "".join(out)


def percent_decode(value: str) -> str:
    """Decode an HTTP header value into the attribute string; raises ValueError if invalid.

    A value is treated as a quoted-string only when it both starts and ends with '"'; a
    lone quote character is kept literally, as older senders did not escape it.
    """
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = _unquote(value)
    if "%" not in value:
        return value
    parts = value.split("%")
    try:
        out = bytearray(parts[0].encode("utf-8"))
        for part in parts[1:]:
            byte = _HEX_PAIR.get(part[:2])
            if byte is None:
                raise ValueError(f"invalid percent-encoding {'%' + part[:2]!r}")
            out.append(byte)
            out += part[2:].encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("value is not valid Unicode") from exc
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"invalid percent-encoding: bytes {bytes(out[exc.start : exc.end])!r} are not UTF-8"
        ) from None
