"""Making untrusted text honest to the human who reads it before approving.

An agent writes the arguments an approver judges. Characters that do not show, or that reorder
what does show, let it present one thing and send another: a right-to-left override shows the
characters after it in reverse order, a zero-width space makes two equal-looking values differ,
tag characters smuggle a whole hidden sentence. `mark_hidden` replaces each such character with
a visible token, `⟨U+202E⟩`, so the approver sees that it is there and which one it is; the
stored arguments (and what is forwarded) are never changed.
"""

from __future__ import annotations

import unicodedata

# Characters that draw nothing yet are not in Unicode's format (Cf) or control (Cc) categories:
# the combining grapheme joiner, Hangul fillers and the blank Braille pattern, which are commonly
# used to fake an empty or different-looking string.
_INVISIBLE_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0")

# Layout a reader expects in pretty-printed JSON and free text.
_ORDINARY_CONTROLS = frozenset("\n\t")


def is_hidden(char: str) -> bool:
    """True for a character an approver could not see, or that changes the order of what they see."""
    if char in _ORDINARY_CONTROLS:
        return False
    if char in _INVISIBLE_LETTERS:
        return True
    code = ord(char)
    # Variation selectors change nothing visible on most text and can carry hidden data.
    if 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF:
        return True
    # Cf: bidi controls (U+202A..U+202E, U+2066..U+2069, U+200E/F, U+061C), zero-width characters
    # (U+200B..U+200D, U+2060, U+FEFF), the soft hyphen, tag characters (U+E0000..U+E007F).
    # Cc: C0 and C1 controls (a carriage return can hide what precedes it on a terminal).
    # Zl, Zp: line and paragraph separators, which break a line where none seems to be.
    return unicodedata.category(char) in ("Cf", "Cc", "Zl", "Zp")


def token(char: str) -> str:
    return f"⟨U+{ord(char):04X}⟩"


def mark_hidden(text: str) -> str:
    """`text` with every hidden character shown as `⟨U+XXXX⟩`; everything else is left as it is."""
    return "".join(token(char) if is_hidden(char) else char for char in text)
