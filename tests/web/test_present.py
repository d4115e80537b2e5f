"""How the pages word times, results and audit details (gateway/web/present.py), without a server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from approvals.views import AuditEventView
from gateway.web.present import (
    ResultPart,
    ago,
    compact_json,
    describe_event,
    exact,
    humane,
    readable_json,
    result_parts,
    soft_breaks,
)

NOW = datetime(2026, 11, 30, 10, 42, 7, 250_000, tzinfo=UTC)


def event(message: str, outcome: str = "held", **detail: Any) -> AuditEventView:
    return AuditEventView(
        seq=1,
        at=NOW,
        kind=f"request.{outcome}",
        outcome=outcome,
        agent="alpha",
        tool="ibkr_cancel_order",
        upstream="paper",
        request_id="apr_1",
        actor=None,
        channel=None,
        message=message,
        arguments=None,
        detail=detail,
        hash="h",
    )


def test_times_read_as_people_say_them_with_the_exact_time_kept_for_the_title() -> None:
    assert ago(NOW - timedelta(seconds=3), NOW) == "just now"
    assert ago(NOW - timedelta(seconds=42), NOW) == "42 s ago"
    assert ago(NOW - timedelta(minutes=3, seconds=50), NOW) == "3 min ago"
    assert ago(NOW - timedelta(hours=5), NOW) == "5 h ago"
    assert ago(NOW - timedelta(days=1, hours=2), NOW) == "1 day ago"
    assert ago(NOW + timedelta(minutes=14, seconds=59), NOW) == "in 14 min"
    assert humane(NOW - timedelta(minutes=3), NOW) == "10:39:07 UTC"
    assert humane(datetime(2026, 11, 28, 9, 5, 1, tzinfo=UTC), NOW) == "28 Nov 09:05:01 UTC"
    assert humane(datetime(2025, 6, 1, 14, 3, 12, tzinfo=UTC), NOW) == "2025-06-01 14:03:12 UTC"
    assert exact(NOW) == "2026-11-30 10:42:07.250 UTC"


def test_arguments_on_one_line_break_between_values_not_inside_them() -> None:
    assert compact_json('{"confirm":true,"orderId":1004}') == '{"confirm": true, "orderId": 1004}'
    assert compact_json("not json") == "not json"
    assert soft_breaks('t["a<b>"].r[0]') == "t<wbr>[&#34;a&lt;b&gt;&#34;].<wbr>r<wbr>[0]"


def test_a_string_with_line_breaks_is_shown_on_several_lines_not_with_a_literal_backslash_n() -> None:
    shown = readable_json({"path": "/tmp/a", "log": 'first line\nsecond "quoted"', "n": [1, {}], "ok": None})
    assert shown.splitlines() == [
        "{",
        '  "path": "/tmp/a",',
        '  "log": "first line',
        '    second \\"quoted\\"",',
        '  "n": [',
        "    1,",
        "    {}",
        "  ],",
        '  "ok": null',
        "}",
    ]
    assert "\\n" not in shown
    assert readable_json({"a": [1]}) == json.dumps({"a": [1]}, indent=2)


def test_a_result_is_shown_once_as_readable_json_or_text() -> None:
    structured = {"orderId": 1001, "status": "Cancelled"}
    restated = {"content": [{"type": "text", "text": json.dumps(structured)}], "structuredContent": structured}
    assert result_parts(restated) == [ResultPart("Structured content", readable_json(structured), "json")]

    fastmcp = {
        "content": [{"type": "text", "text": "line 1\nline 2"}],
        "structuredContent": {"result": "line 1\nline 2"},
    }
    assert result_parts(fastmcp) == [ResultPart("Result", "line 1\nline 2", "text")]

    text_only = {"content": [{"type": "text", "text": '{"a":1}'}, {"type": "text", "text": "done\nok"}]}
    assert result_parts(text_only) == [
        ResultPart("Text", '{\n  "a": 1\n}', "json"),
        ResultPart("Text", "done\nok", "text"),
    ]

    picture = {"content": [{"type": "image", "data": "AAAA", "mimeType": "image/png"}]}
    assert result_parts(picture) == [ResultPart("Image", "Not shown: a image block (image/png).", "note")]
    assert result_parts(None) == []


def test_an_audit_event_reads_as_a_sentence_with_labelled_details_and_no_repeats() -> None:
    created = describe_event(
        event("held for approval: needs a human.", expires_at="2026-11-30T10:57:07+00:00", quorum=1, rule="r[0]")
    )
    assert created.headline == "held for approval: needs a human." and created.excerpt is None
    assert [(f.label, f.kind) for f in created.fields] == [
        ("Expires", "time"),
        ("Approvals needed", "text"),
        ("Rule", "code"),
    ]
    assert created.fields[0].moment == NOW.replace(microsecond=0) + timedelta(minutes=15)

    rejected = describe_event(event("rejected by alice: wrong account", "rejected", reason="wrong account"))
    assert rejected.fields == (), "the reason is already in the message"

    long_result = '{ "orderId": 1001, "trade": { "contract": { "conId": 265598, ' + "x" * 200 + "…"
    executed = describe_event(event(long_result, "executed"))
    assert executed.headline == "Executed; the upstream answered." and executed.excerpt == long_result

    failed = describe_event(event("boom: " + "y" * 300, "failed", error="boom: " + "y" * 150 + "…"))
    assert failed.headline == "The upstream reported an error." and failed.fields == ()
    short = describe_event(event("order not found", "failed", error="order not found"))
    assert short.headline == "The upstream reported an error: order not found" and short.fields == ()
    assert short.excerpt is None

    # A long sentence from the gateway itself is still a sentence, not an excerpt.
    slack = "Slack post failed (ratelimited); retrying in 1.0s, up to 5 attempts. " * 3
    assert describe_event(event(slack, "retrying", operation="post")).headline == slack.strip()
