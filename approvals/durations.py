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
    """Seconds as people read them, in a form parse_duration reads back: "15m", "14m 55s", "1h 30m", "0.5s".

    Every duration the gateway prints (progress messages, explain, Slack, rate-limit refusals) goes
    through here, so one length always reads the same. From a minute up the seconds are rounded to
    whole ones: "14m 55s", never "14m54.995s". Below a minute a tenth of a second is kept.
    """
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration: expected a finite number >= 0")
    tenths = math.floor(seconds * 10 + 0.5)
    if tenths < 600:
        return f"{tenths // 10}s" if tenths % 10 == 0 else f"{tenths / 10:.1f}s"
    whole = math.floor(seconds + 0.5)
    parts: list[str] = []
    for unit in _UNIT_ORDER:
        count, whole = divmod(whole, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts)


def _checked(seconds: float, original: object) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {original!r}: must be a finite number of seconds >= 0")
    return seconds


# How a hold bound says "no bound": a held call then waits until the request is decided or expires.
NO_BOUND: Final[str] = "none"


def parse_hold_bound(value: str | int | float) -> float:
    """A `max_hold` setting in seconds: a duration longer than zero, or "none" (math.inf: no bound)."""
    if isinstance(value, str) and value.strip().lower() == NO_BOUND:
        return math.inf
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f'{exc}; or "{NO_BOUND}" for no bound') from None
    if seconds <= 0:
        raise ValueError(f'a hold bound must be longer than zero; write "{NO_BOUND}" to hold without a bound')
    return seconds
