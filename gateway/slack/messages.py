"""Block Kit for a request: the approval message in every state, the reminder, and the reject-reason modal.

Everything an agent or an upstream supplies (arguments, results, errors, tool names) is untrusted.
It is escaped for mrkdwn (`&`, `<`, `>`), so `<!channel>`, `<http://x|y>` and `<@U…>` arrive as
inert text; it is shown in `verbatim` text objects, so Slack does not link-ify bare names or URLs
in it; and backticks cannot close the code spans and blocks that hold it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from approvals.durations import format_duration
from approvals.states import Status
from approvals.story import context_lines, describe, title, who_decides
from approvals.terms import terms_lines
from approvals.views import DecisionView, RequestView
from gateway.results import summarize
from gateway.text import mark_hidden

ACTION_APPROVE = "countersign.approve"
ACTION_REJECT = "countersign.reject"
# Approve, and allow the same call for the policy's longest grant (approvals.grants).
ACTION_APPROVE_GRANT = "countersign.approve_grant"
# A link button: Slack opens the URL and still sends a click, which decides nothing.
ACTION_REVIEW = "countersign.review"
ACTIONS_BLOCK = "countersign.actions"
REJECT_CALLBACK = "countersign.reject_reason"
REASON_BLOCK = "reason"
REASON_ACTION = "reason"

# Block Kit allows 3000 characters in a section's text; keep clear of it after the surrounding markup.
ARGUMENTS_LIMIT = 2600
SUMMARY_LIMIT = 600
_ZWSP = "\u200b"

Block = dict[str, Any]


@dataclass(frozen=True)
class Links:
    """Where the web inbox lives: `{public_url}/inbox` and `{public_url}/approvals/{id}`."""

    base_url: str

    @property
    def inbox(self) -> str:
        return f"{self.base_url}/inbox"

    def request(self, request_id: str) -> str:
        return f"{self.base_url}/approvals/{request_id}"


@dataclass(frozen=True)
class Message:
    text: str
    blocks: list[Block]


def escape(text: str) -> str:
    """Make text inert in mrkdwn: no links, mentions or special commands can be formed from it.

    Invisible and bidi characters are shown as `⟨U+XXXX⟩` too, so what an approver reads is what
    the text holds (see gateway.text).
    """
    return mark_hidden(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def inline_code(text: str) -> str:
    # A backtick would end the span early; a look-alike keeps the name readable.
    return "`" + escape(text).replace("`", "\u02cb") + "`"


def clipped(text: str, limit: int, *, in_code: bool = False) -> tuple[str, bool]:
    """Escape `text`, keeping at most `limit` characters of the result; returns (escaped, truncated)."""
    out: list[str] = []
    size = 0
    for char in text:
        # In a code block a zero-width space after each backtick means no run of three can close it.
        piece = escape(char) + (_ZWSP if in_code and char == "`" else "")
        if size + len(piece) > limit:
            return "".join(out) + "…", True
        out.append(piece)
        size += len(piece)
    return "".join(out), False


def short(text: str, limit: int = 1500) -> str:
    """Escaped free text (a reason, an error) cut so that a block stays within Block Kit's limits."""
    return clipped(text, limit)[0]


def code_block(text: str, limit: int) -> tuple[str, bool]:
    """Escaped text inside a ``` block, cut to `limit` characters; returns (mrkdwn, truncated)."""
    body, truncated = clipped(text, limit, in_code=True)
    return f"```{body or ' '}```", truncated


def link(url: str, label: str) -> str:
    # The URL is ours (public_url); the label may not contain `|` or `>` unescaped.
    return f"<{url}|{escape(label).replace('|', '¦')}>"


def slack_date(moment: datetime) -> str:
    """A time every viewer sees in their own zone, with UTC as the fallback text."""
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time_secs}}|{moment:%Y-%m-%d %H:%M:%S} UTC>"


def pretty_arguments(view: RequestView) -> str:
    return json.dumps(view.arguments_shown, indent=2, ensure_ascii=False, sort_keys=True)


def _mrkdwn(text: str) -> Block:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _plain(text: str, limit: int) -> Block:
    # plain_text is never parsed for links or mentions; only hidden characters and its length need watching.
    text = mark_hidden(text)
    return {"type": "plain_text", "text": text if len(text) <= limit else text[: limit - 1] + "…", "emoji": False}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text)}


_HEADLINES: dict[Status, str] = {
    Status.PENDING: ":lock: *Approval needed*",
    Status.APPROVED: ":white_check_mark: *Approved*",
    Status.EXECUTING: ":hourglass_flowing_sand: *Approved — executing*",
    Status.EXECUTED: ":white_check_mark: *Approved and executed*",
    Status.FAILED: ":warning: *Approved — the call failed*",
    Status.REJECTED: ":x: *Rejected*",
    Status.EXPIRED: ":alarm_clock: *Expired*",
    Status.CANCELLED: ":no_entry_sign: *Cancelled*",
    Status.OUTCOME_UNKNOWN: ":grey_question: *Approved — outcome unknown*",
}


def headline(view: RequestView) -> str:
    return (
        f"{_HEADLINES[view.status]}: {short(title(view), 300)}\n"
        f"{inline_code(view.tool)} on {inline_code(view.upstream)}"
    )


def fallback_text(view: RequestView) -> str:
    """The notification text (and what screen readers get); plain, escaped, no markup of ours."""
    state = "approval needed" if view.status == Status.PENDING else view.status.value
    return escape(f"Countersign: {title(view)} ({view.tool} from {view.agent}): {state}")


def request_message(view: RequestView, decisions: Sequence[DecisionView], links: Links) -> Message:
    """The one message per request; rendered from the current state, so re-rendering is how it is kept true."""
    approvals = [d.approver for d in decisions if d.verdict == "approve"]
    fields = [
        _mrkdwn(f"*Agent*\n{escape(view.agent)}"),
        _mrkdwn(f"*Expires*\n{slack_date(view.expires_at)}"),
        _mrkdwn(f"*Why it is held*\n{short(view.reason, 1000)}"),
        _mrkdwn(f"*Who may decide*\n{short(who_decides(view), 1000)}"),
    ]
    if view.agent_reason:
        fields.append(_mrkdwn(f"*Agent's reason*\n{short(view.agent_reason, 1000)}"))
    arguments, truncated = arguments_block(view)
    arguments_text = f"*Arguments*\n{arguments}"
    if truncated:
        arguments_text += (
            f"\nTruncated — nobody can approve what they cannot read, so this call is approved only in the "
            f"inbox: {link(links.request(view.id), 'see the full arguments')}."
        )
    blocks: list[Block] = [
        _section(headline(view)),
        {"type": "section", "fields": fields},
        *context_section(view),
        *terms_section(view, links),
        _section(arguments_text),
        _section(status_line(view, approvals)),
    ]
    summary = _outcome_detail(view)
    if summary:
        blocks.append(_section(summary))
    blocks.append(
        {
            "type": "context",
            "elements": [
                _mrkdwn(
                    f"Request {link(links.request(view.id), view.id)} · arguments SHA-256 "
                    f"`{view.arguments_sha256[:16]}` · {link(links.inbox, 'Open the inbox')}"
                )
            ],
        }
    )
    if view.status == Status.PENDING:
        blocks.append(_buttons(view, approvable=not truncated, full_request=links.request(view.id)))
    return Message(fallback_text(view), blocks)


def context_section(view: RequestView) -> list[Block]:
    """The facts the policy's lookups found when the request was made, as the web card shows them."""
    lines = context_lines(view)
    if not lines:
        return []
    shown = "\n".join(f"• *{short(label, 100)}*: {short(text, 300)}" for label, text in lines[:20])
    return [_section(f"*What this call would act on*\n{shown}"[:2900])]


def terms_section(view: RequestView, links: Links) -> list[Block]:
    """Changes an approver made or may make (on the web card: the buttons here approve only as asked), and
    escalation steps, in the words every channel uses (approvals.terms)."""
    lines = [f"• {short(line, 400)}" for line in terms_lines(view)]
    if view.editable and view.status == Status.PENDING:
        lines.append(f"• To approve with changes, use the {link(links.request(view.id), 'web card')}")
    return [_section(("*Terms*\n" + "\n".join(lines))[:2900])] if lines else []


def status_line(view: RequestView, approvals: Sequence[str]) -> str:
    """Where the request stands, in the words every channel uses (approvals.story), plus quorum progress."""
    parts = []
    if view.status == Status.PENDING and view.quorum > 1:
        who = f" ({escape(', '.join(approvals))})" if approvals else ""
        parts.append(f":ballot_box_with_check: *{len(approvals)} of {view.quorum} approvals*{who}")
    via = f" _(decided via {escape(view.decided_via)})_" if view.decided_via and view.status != Status.PENDING else ""
    parts.append(escape(describe(view)) + via)
    return "\n".join(parts)


def _outcome_detail(view: RequestView) -> str | None:
    if view.status == Status.EXECUTED:
        block, _ = code_block(result_summary(view), SUMMARY_LIMIT)
        return f"*Result*\n{block}"
    if view.status == Status.FAILED:
        block, _ = code_block(view.error or "no error text", SUMMARY_LIMIT)
        return f"*Error*\n{block}"
    return None


def result_summary(view: RequestView) -> str:
    """What the upstream returned, for a glance; the inbox has all of it."""
    return summarize(view.result, SUMMARY_LIMIT) or "(no output)"


def arguments_block(view: RequestView) -> tuple[str, bool]:
    """The arguments as the message shows them, and whether they had to be cut to fit."""
    return code_block(pretty_arguments(view), ARGUMENTS_LIMIT)


def approvable_in_slack(view: RequestView) -> bool:
    """Whether the message shows every argument, the condition for offering (and honouring) Approve in Slack."""
    return not arguments_block(view)[1]


def _buttons(view: RequestView, *, approvable: bool, full_request: str) -> Block:
    reject = {
        "type": "button",
        "action_id": ACTION_REJECT,
        "text": {"type": "plain_text", "text": "Reject", "emoji": False},
        "style": "danger",
        "value": view.id,
        "accessibility_label": f"Reject {view.tool}"[:75],
    }
    if not approvable:
        # Arguments cut short (an `orderId` past the cut would be invisible): approving happens where
        # they are shown in full. Rejecting needs no such care, so it stays.
        review = {
            "type": "button",
            "action_id": ACTION_REVIEW,
            "text": {"type": "plain_text", "text": "Review in the inbox", "emoji": False},
            "url": full_request,
            "accessibility_label": f"Review {view.tool} in the inbox"[:75],
        }
        return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": [review, reject]}
    return {
        "type": "actions",
        "block_id": ACTIONS_BLOCK,
        "elements": [
            {
                "type": "button",
                "action_id": ACTION_APPROVE,
                "text": {"type": "plain_text", "text": "Approve", "emoji": False},
                "style": "primary",
                "value": view.id,
                "confirm": {
                    "title": {"type": "plain_text", "text": "Approve this call?"},
                    "text": _plain(f"Countersign will forward {view.tool} to {view.upstream}.", 300),
                    "confirm": {"type": "plain_text", "text": "Approve"},
                    "deny": {"type": "plain_text", "text": "Back"},
                },
                "accessibility_label": f"Approve {view.tool}"[:75],
            },
            *_grant_button(view),
            reject,
        ],
    }


def _grant_button(view: RequestView) -> list[Block]:
    """ "Approve for N min" where the tool's policy allows standing approvals; N is its longest."""
    offer = view.grant_offer
    if offer is None:
        return []
    minutes = offer.max_minutes
    return [
        {
            "type": "button",
            "action_id": ACTION_APPROVE_GRANT,
            "text": {"type": "plain_text", "text": f"Approve for {minutes} min", "emoji": False},
            "value": view.id,
            "confirm": {
                "title": {"type": "plain_text", "text": f"Approve for {minutes} min?"},
                "text": _plain(
                    f"Countersign will forward {view.tool} to {view.upstream}, and let {view.agent} make the same "
                    f"call without asking: {offer.describe()}. Revoke it any time in the inbox.",
                    300,
                ),
                "confirm": {"type": "plain_text", "text": "Approve and allow"},
                "deny": {"type": "plain_text", "text": "Back"},
            },
            "accessibility_label": f"Approve {view.tool} for {minutes} minutes"[:75],
        }
    ]


def reminder_text(view: RequestView, remaining: float, links: Links) -> str:
    return (
        f":alarm_clock: Still waiting: this request expires in {format_duration(max(0, round(remaining)))} "
        f"({slack_date(view.expires_at)}). Decide here or in the {link(links.request(view.id), 'inbox')}."
    )


# ---- the reject modal


@dataclass(frozen=True)
class ModalContext:
    """What the modal carries back in `private_metadata`: which request, and where its message is."""

    request_id: str
    channel: str | None
    ts: str | None
    # An HMAC over the three fields above, by the gateway's key (see gateway.slack.decisions).
    seal: str = ""

    def dump(self) -> str:
        data = {"r": self.request_id, "c": self.channel, "t": self.ts, "s": self.seal}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def load(cls, raw: str) -> ModalContext:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("r"), str):
            raise ValueError("private_metadata does not name a request")
        channel, ts, seal = data.get("c"), data.get("t"), data.get("s")
        return cls(
            data["r"],
            channel if isinstance(channel, str) else None,
            ts if isinstance(ts, str) else None,
            seal if isinstance(seal, str) else "",
        )


def reject_modal(view: RequestView, context: ModalContext) -> Block:
    required = view.reject_reason_required
    return {
        "type": "modal",
        "callback_id": REJECT_CALLBACK,
        "private_metadata": context.dump(),
        "title": {"type": "plain_text", "text": "Reject the call"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _section(
                f"Reject {inline_code(view.tool)} on {inline_code(view.upstream)} requested by "
                f"*{escape(view.agent)}*? The agent is told who rejected it and why."
            ),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "optional": not required,
                "label": {"type": "plain_text", "text": "Reason" if required else "Reason (optional)"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_ACTION,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }
