"""The building blocks of the configuration's sections: a strict, frozen section and the duration parsers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from approvals.durations import parse_duration, parse_hold_bound


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a duration such as 30, '30s', '5m' or '1h'")
    return parse_duration(value)


def hold_bound(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError('expected a duration such as 50, "50s" or "5m", or "none" for no bound')
    return parse_hold_bound(value)
