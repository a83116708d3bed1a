"""Text that caddie stores and prints: what a name or a note may hold, and how
text from anywhere is shown on a terminal.

A terminal obeys the control characters in what it prints: ``\\x1b[2J`` clears
the screen, ``\\x1b]8;;...`` makes a link, U+202E turns the rest of the line
around. So names refuse them, notes keep only tab and newlines, and the CLI
shows every control character it is sent as a visible escape (``\\x1b``).
PostgreSQL cannot store NUL or a lone surrogate (``\\ud800``) at all.
"""

from __future__ import annotations

import unicodedata

# Bidirectional overrides and isolates (the "Trojan Source" characters): not
# control characters to Unicode (category Cf), but they reorder what follows.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
NOTE_WHITESPACE = "\t\n\r"


def is_unsafe(char: str) -> bool:
    """A C0/C1 control character, DEL, a bidi control or a lone surrogate."""
    return unicodedata.category(char) in ("Cc", "Cs") or char in BIDI_CONTROLS


def visible(char: str) -> str:
    """``\\x1b``, ``\\u202e``: how an unsafe character is shown."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep: str = "") -> str:
    """``text`` with every unsafe character except those in ``keep`` replaced by its visible escape."""
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(visible(c) if c not in keep and is_unsafe(c) else c for c in text)


def text_problem(text: str, allow: str = "") -> str | None:
    """Why ``text`` may not be stored as a name (``allow=NOTE_WHITESPACE``: as a note), or None."""
    found = sorted({c for c in text if c not in allow and is_unsafe(c)})
    if not found:
        return None
    return f"must not contain control characters (found {', '.join(visible(c) for c in found)})"
