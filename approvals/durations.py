"""Durations as people write them in policy and config files: ``"15m"``, ``"2h30m"``, ``90``."""

from __future__ import annotations

import math
import re
from typing import Final

_UNIT_SECONDS: Final[dict[str, int]] = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_UNIT_ORDER: Final[str] = "dhms"
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_EXPECTED: Final[str] = "expected seconds as a number, or text like '30s', '15m', '1h', '2h30m' or '1d'"


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` in seconds; raise ValueError saying what was wrong and what is accepted."""
    # bool is an int subclass; `"timeout": true` is a mistake, not one second.
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {_EXPECTED}")
    if isinstance(value, int | float):
        return _checked(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: {_EXPECTED}")

    text = value.strip()
    if _BARE_NUMBER.fullmatch(text):
        return _checked(float(text), value)

    total = 0.0
    position = 0
    last_unit = -1
    for part in _PART.finditer(text):
        gap = text[position : part.start()]
        if gap.strip():
            break
        unit = _UNIT_ORDER.index(part.group(2))
        # "30m2h" or "1m1m" is almost always a typo; refusing it beats guessing.
        if unit <= last_unit:
            raise ValueError(f"invalid duration {value!r}: units must go from largest to smallest (d, h, m, s)")
        last_unit = unit
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    if last_unit < 0 or text[position:].strip():
        raise ValueError(f"invalid duration {value!r}: {_EXPECTED}")
    return _checked(total, value)


def format_duration(seconds: float) -> str:
    """The one way durations are shown to people, and read back by parse_duration.

    900 -> "15m", 5400 -> "1h 30m", 895.2 -> "14m 55s", 2.5 -> "2.5s". Beside minutes a fraction of a
    second is noise, so from one minute up the value is rounded to whole seconds.
    """
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration: expected a finite number >= 0")
    if seconds >= 60:
        whole, fraction = int(seconds + 0.5), 0.0
    else:
        whole = int(seconds)
        fraction = round(seconds - whole, 1)
        if fraction >= 1:
            whole, fraction = whole + 1, 0.0
    parts: list[str] = []
    for unit in _UNIT_ORDER[:-1]:
        count, whole = divmod(whole, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    if whole or fraction or not parts:
        secs = f"{whole + fraction:.1f}".rstrip("0").rstrip(".")
        parts.append(f"{secs}s")
    return " ".join(parts)


def _checked(seconds: float, original: object) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {original!r}: must be a finite number of seconds >= 0")
    return seconds
