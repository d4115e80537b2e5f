"""`approval.grants`: whether an approver may approve a tool's call "and the same for N minutes".

```json
"grants": {"max_duration": "15m", "max_uses": 20, "key": ["symbol", "side"]}
```

`max_duration` and `max_uses` are ceilings: whatever an approver asks for is cut to them. `key` names
the arguments that make two calls "the same" (without it, every argument must be equal). The parsed
form is `approvals.grant_terms.GrantOffer`, which the request carries to the approver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from approvals.durations import format_duration, parse_duration
from approvals.grant_terms import GrantOffer

# A standing approval stands in for a person watching; a day is as long as one may stand.
MAX_GRANT_SECONDS: Final = 86_400.0
MAX_GRANT_USES: Final = 10_000
GRANT_KEYS: Final = ("max_duration", "max_uses", "key")

Fail = Callable[[str, str], Exception]


def parse_grants(value: object, where: str, fail: Fail, *, quorum: int) -> GrantOffer:
    if not isinstance(value, dict):
        raise fail(where, f'expected an object such as {{"max_duration": "15m", "max_uses": 20}}, not {value!r}')
    for key in value:
        if key not in GRANT_KEYS:
            raise fail(f"{where}.{key}", f"unknown key {key!r}; expected one of {', '.join(GRANT_KEYS)}")
    for required in ("max_duration", "max_uses"):
        if required not in value:
            raise fail(f"{where}.{required}", "missing; a standing approval needs a ceiling on its length and calls")
    if quorum > 1:
        why = f"a standing approval is one approver's decision; it cannot stand in for a quorum of {quorum}"
        raise fail(where, why)
    try:
        seconds = parse_duration(value["max_duration"])
    except ValueError as exc:
        raise fail(f"{where}.max_duration", str(exc)) from None
    if seconds < 60 or seconds > MAX_GRANT_SECONDS:
        raise fail(
            f"{where}.max_duration",
            f"{value['max_duration']!r} is outside 1m to {format_duration(MAX_GRANT_SECONDS)}, "
            "the range a standing approval may last",
        )
    uses = value["max_uses"]
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_GRANT_USES:
        raise fail(f"{where}.max_uses", f"expected a whole number from 1 to {MAX_GRANT_USES}, not {uses!r}")
    return GrantOffer(seconds, uses, _key(value.get("key"), f"{where}.key", fail) if "key" in value else None)


def _key(value: object, where: str, fail: Fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise fail(where, f"expected a non-empty list of argument names, not {value!r}")
    names: list[str] = []
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name:
            raise fail(f"{where}[{index}]", f"expected an argument name, not {name!r}")
        if name in names:
            raise fail(f"{where}[{index}]", f"{name!r} is listed more than once")
        names.append(name)
    return tuple(names)
