"""Stored JSON read strictly: a surrogate found however the text carries it, and only then."""

from __future__ import annotations

import pytest

from approvals.errors import Unreadable
from approvals.stored import strict


@pytest.mark.parametrize(
    "text",
    [
        '{"note": "\\ud800"}',  # an escape of a lone high surrogate
        '{"note": "\\uDFFF at the end"}',  # a low one, in capitals
        '["\\ud83d"]',  # half a pair
        '{"k\\udc00": 1}',  # in a key
        '{"note": "\ud800"}',  # the character itself in the text
    ],
)
def test_a_lone_surrogate_is_unreadable_however_it_is_written(text: str) -> None:
    with pytest.raises(Unreadable, match="unpaired surrogate"):
        strict(text, "its arguments")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"note": "\\ud83d\\ude00"}', {"note": "\U0001f600"}),  # a pair: one character
        ('{"note": "\\\\ud800"}', {"note": "\\ud800"}),  # a backslash, then letters
        ('{"note": "\\u00e9t\\u00e9", "n": [1, 2.5, null]}', {"note": "été", "n": [1, 2.5, None]}),
        ('{"note": "plain", "n": [1, 2.5, null]}', {"note": "plain", "n": [1, 2.5, None]}),
        ('{"note": "été"}', {"note": "été"}),  # not ASCII, no escape
    ],
)
def test_text_without_a_lone_surrogate_reads_as_its_value(text: str, value: object) -> None:
    assert strict(text, "its arguments") == value
