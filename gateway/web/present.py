"""How the pages say things: humane times, results as readable text, audit details as labelled fields.

Pure functions over the views the service hands out, registered as Jinja filters in `templating`.
What is stored is never changed here; the exports and the API keep the exact values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from markupsafe import Markup, escape

from approvals import stored
from approvals.errors import Unreadable
from approvals.views import AuditEventView

FieldKind = Literal["text", "code", "time", "block", "digest"]

# Detail keys the gateway writes, with the words a person reads. Other keys are shown with their
# underscores turned into spaces, so a new kind of event still reads sensibly.
LABELS: dict[str, str] = {
    "rule": "Rule",
    "expires_at": "Expires",
    "quorum": "Approvals needed",
    "reason": "Reason",
    "error": "Error",
    "operation": "Operation",
    "method": "Slack method",
    "attempts": "Attempts",
    "retry_after": "Retry after (s)",
    "arguments_sha256": "Arguments SHA-256",
    "policy_version": "Policy version",
    "pickup_until": "Pick up by",
}
CODE_KEYS = frozenset({"rule", "method", "operation"})
# Hashes: shown shortened, the whole value on hover (the JSON and CSV exports have it whole).
DIGEST_KEYS = frozenset({"arguments_sha256", "policy_version", "expected_hash"})

# Executed and failed events carry the upstream's own words (or data) as their message: the page says
# what happened, and quotes a short answer or folds a long one away.
ANSWERED: dict[str, str] = {
    "executed": "Executed; the upstream answered",
    "failed": "The upstream reported an error",
}
_SHORT_ANSWER = 120


def ago(moment: datetime, now: datetime) -> str:
    """How long ago (or how soon) as people say it: just now, 42 s ago, 3 min ago, in 5 min, 2 days ago.

    static/app.js keeps these current with the same wording.
    """
    seconds = int((now - moment).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 10:
        return "just now"
    if seconds < 60:
        amount = f"{seconds} s"
    elif seconds < 3600:
        amount = f"{seconds // 60} min"
    elif seconds < 86400:
        amount = f"{seconds // 3600} h"
    else:
        days = seconds // 86400
        amount = f"{days} day{'s' if days != 1 else ''}"
    return f"in {amount}" if future else f"{amount} ago"


def humane(moment: datetime, now: datetime) -> str:
    """A time short enough for a table cell: 10:42:07 UTC today, else with the day: 28 Nov 10:42:07 UTC."""
    moment, now = moment.astimezone(UTC), now.astimezone(UTC)
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S UTC")
    if moment.year == now.year:
        return f"{moment.day} {moment:%b %H:%M:%S} UTC"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def exact(moment: datetime) -> str:
    """The full time, to the millisecond, for a title attribute."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def soft_breaks(text: str) -> Markup:
    """Escaped text that may wrap after a dot and before a bracket: a rule like
    tools["cancel_order"].require_approval[0] wraps between its parts, not inside a word."""
    return Markup(str(escape(text)).replace(".", ".<wbr>").replace("[", "<wbr>["))


def compact_json(text: str | None) -> str:
    """JSON on one line with a space after each comma and colon, so it wraps between values, not inside them."""
    if text is None:
        return ""
    value = stored.shown(text)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def readable_json(value: Any) -> str:
    """JSON indented two spaces; a string with line breaks keeps them, continued under its opening quote.

    For people, not parsers: `"log": "line one\\nline two"` reads as two lines instead of one line with a
    literal \\n. Everything else is standard JSON.
    """
    return "".join(_readable(value, 0))


def _readable(value: Any, depth: int) -> Iterator[str]:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, Mapping) and value:
        yield "{\n"
        for n, (key, item) in enumerate(value.items()):
            yield f"{inner}{json.dumps(str(key), ensure_ascii=False)}: "
            yield from _readable(item, depth + 1)
            yield ",\n" if n < len(value) - 1 else "\n"
        yield pad + "}"
    elif isinstance(value, list | tuple) and value:
        yield "[\n"
        for n, item in enumerate(value):
            yield inner
            yield from _readable(item, depth + 1)
            yield ",\n" if n < len(value) - 1 else "\n"
        yield pad + "]"
    elif isinstance(value, str) and "\n" in value.strip("\n"):
        lines = [json.dumps(line, ensure_ascii=False)[1:-1] for line in value.split("\n")]
        yield '"' + ("\n" + inner).join(lines) + '"'
    else:
        yield json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class ResultPart:
    """One readable piece of a tool result: JSON or plain text for a <pre>, or a note about a block not shown."""

    label: str
    text: str
    kind: Literal["json", "text", "note"]


def result_parts(result: Mapping[str, Any] | None) -> list[ResultPart]:
    """A tool result as people read it: structured content as JSON, text blocks as text (or JSON when they
    are JSON), without repeating a text block that only restates the structured content."""
    if not result:
        return []
    parts: list[ResultPart] = []
    structured = result.get("structuredContent")
    if isinstance(structured, Mapping) and set(structured) == {"result"} and isinstance(structured["result"], str):
        # How FastMCP wraps a tool that returns a plain string.
        parts.append(ResultPart("Result", structured["result"], "text"))
    elif structured is not None:
        parts.append(ResultPart("Structured content", readable_json(structured), "json"))
    content = result.get("content")
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, Mapping):
            continue
        kind = str(block.get("type") or "unknown")
        if kind == "text":
            text = str(block.get("text") or "")
            parsed = _json_or_none(text)
            if structured is not None and (parsed == structured or _restates(text, parsed, structured)):
                continue
            if isinstance(parsed, dict | list):
                parts.append(ResultPart("Text", readable_json(parsed), "json"))
            else:
                parts.append(ResultPart("Text", text, "text"))
        elif kind == "resource" and isinstance(block.get("resource"), Mapping):
            resource = block["resource"]
            uri = str(resource.get("uri") or "")
            if isinstance(resource.get("text"), str):
                parts.append(ResultPart(f"Resource {uri}".strip(), resource["text"], "text"))
            else:
                parts.append(ResultPart("Resource", f"{uri or 'A resource'} (binary, not shown)", "note"))
        else:
            mime = block.get("mimeType")
            parts.append(
                ResultPart(kind.capitalize(), f"Not shown: a {kind} block{f' ({mime})' if mime else ''}.", "note")
            )
    return parts


def _json_or_none(text: str) -> Any:
    try:
        return stored.strict(text, "the text")
    except Unreadable:
        return None


def _restates(text: str, parsed: Any, structured: Any) -> bool:
    if isinstance(structured, Mapping) and set(structured) == {"result"}:
        wrapped = structured["result"]
        return bool(text == wrapped or parsed == wrapped)
    return False


@dataclass(frozen=True)
class Field:
    label: str
    value: str
    kind: FieldKind = "text"
    moment: datetime | None = None


@dataclass(frozen=True)
class EventSummary:
    """What one audit event says: a sentence, labelled details, and a result excerpt if the message is one."""

    headline: str
    fields: tuple[Field, ...]
    excerpt: str | None = None


def describe_event(event: AuditEventView) -> EventSummary:
    message = event.message.strip()
    looks_like_data = message[:1] in ("{", "[")
    lead = ANSWERED.get(event.outcome)
    excerpt: str | None = None
    if lead is not None and message in ("", event.outcome):
        headline = f"{lead}."
    elif lead is not None and not looks_like_data and len(message) <= _SHORT_ANSWER:
        headline = f"{lead}: {message}"
    elif lead is not None or looks_like_data:
        headline, excerpt = f"{lead or event.outcome.capitalize()}.", message
    else:
        headline = message
    return EventSummary(headline, tuple(detail_fields(event.detail, message)), excerpt)


def detail_fields(detail: Mapping[str, Any], message: str = "") -> list[Field]:
    """The details as labelled fields, leaving out a reason or error the message already quotes."""
    fields: list[Field] = []
    for key, value in detail.items():
        if value is None or value == "":
            continue
        if isinstance(value, str) and len(value) >= 3 and value.strip().rstrip("…") in message:
            continue
        label = LABELS.get(key, key.replace("_", " ").capitalize())
        moment = _moment(value)
        if key in DIGEST_KEYS and isinstance(value, str):
            fields.append(Field(label, value, "digest"))
        elif moment is not None:
            fields.append(Field(label, exact(moment), "time", moment))
        elif isinstance(value, bool):
            fields.append(Field(label, "yes" if value else "no"))
        elif isinstance(value, Mapping | list):
            fields.append(Field(label, json.dumps(value, ensure_ascii=False, separators=(", ", ": ")), "code"))
        elif isinstance(value, str) and "\n" in value:
            fields.append(Field(label, value, "block"))
        else:
            fields.append(Field(label, str(value), "code" if key in CODE_KEYS else "text"))
    return fields


def _moment(value: Any) -> datetime | None:
    """An ISO 8601 time with a zone (as the gateway writes them); anything else is not a time."""
    if not isinstance(value, str) or len(value) < 19 or value[10:11] != "T":
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
