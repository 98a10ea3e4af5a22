"""Text from the user, made safe to show on one terminal line or in a report.

A scenario name, a file name or a path may hold characters that change how the text
around them is shown: control characters (an escape sequence, a newline), bidirectional
overrides and isolates (U+202E turns the rest of a line around), the line and paragraph
separators U+2028 and U+2029, and other format characters. :func:`printable` writes each
as a ``\\uXXXX`` escape (``\\xXX`` below 0x100), so what is shown is what was written.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories escaped: format (bidi controls among them), line and paragraph
#: separators, surrogates, private use, unassigned.
_ESCAPED = frozenset({"Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, controls: bool = True) -> str:
    """``text`` with every character that could rearrange or split a line escaped;
    ``controls=False`` leaves C0/C1 control characters (tab, newline) to the caller
    (HTML shows them as spaces)."""
    if text.isascii() and (not controls or text.isprintable()):
        return text
    out = []
    for char in text:
        category = unicodedata.category(char)
        if category in _ESCAPED or (controls and category == "Cc"):
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)
