"""Text from outside (video ids, labels, paths, ffmpeg's messages) made safe to print on a terminal."""
from __future__ import annotations

import unicodedata

# characters an id or a label may not hold: control (C0, C1, DEL), format (bidirectional overrides, zero width),
# surrogates, line and paragraph separators
CONTROL_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object, limit: int = 0) -> str:
    """``str(value)`` with every character a terminal could act on (control characters such as ESC, newlines,
    bidirectional overrides and other format characters) written as a Python escape (``\\x1b``, ``\\n``,
    ``\\u202e``); ``limit`` > 0 shortens the result to about that many characters, keeping both ends."""
    text = str(value)
    out = "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)
    if limit > 0 and len(out) > limit:
        keep = max(1, (limit - 3) // 2)
        out = f"{out[:keep]}...{out[-keep:]}"
    return out


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control, format or line-separator character (:data:`CONTROL_CATEGORIES`)."""
    return any(unicodedata.category(ch) in CONTROL_CATEGORIES for ch in text)
