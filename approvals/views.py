"""Read-only snapshots the service hands to channels, so no caller ever holds an ORM row."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from approvals import stored
from approvals.audit import as_utc
from approvals.edits import ArgumentEdit, edits_from_json
from approvals.errors import Unreadable
from approvals.grant_terms import GrantOffer, GrantView
from approvals.states import TERMINAL, EndReason, Status


@dataclass(frozen=True)
class NewRequest:
    """Everything needed to park a call, and later to carry it out without consulting anything else."""

    upstream: str
    tool: str
    upstream_tool: str
    arguments: Mapping[str, Any]
    agent: str
    rule: str
    reason: str
    timeout_seconds: float
    approvers: tuple[str, ...] = ()
    quorum: int = 1
    channels: tuple[str, ...] = ("web", "slack")
    reject_reason_required: bool = False
    slack_channel: str | None = None
    session_id: str | None = None
    pickup_seconds: float = 600.0
    run_unattended: bool = False
    max_hold_seconds: float | None = None
    keep_on_cancel: bool = False
    # The content hash of the policy that held the call: the approval is bound to it.
    policy_version: str | None = None
    # What approvers are shown beside the arguments (the policy's sentence, the agent's reason, looked-up facts).
    title: str | None = None
    agent_reason: str | None = None
    context: tuple[ContextItem, ...] = ()
    # The standing approval the policy allows an approver to make with the approval (None: none).
    grant_offer: GrantOffer | None = None
    # What approvers may do besides yes or no: change these argument paths (approvals.edits), and who else
    # is asked, when, if nobody decides (approvals.escalation); the tool's own reminder lead time.
    editable: tuple[str, ...] = ()
    escalation: tuple[EscalationStep, ...] = ()
    remind_before_seconds: float | None = None
    # Chosen by the caller when something (a context lookup) must name the request before it exists.
    id: str | None = None


@dataclass(frozen=True)
class ContextItem:
    """One context lookup's outcome: the selected value, or why there is none."""

    name: str
    tool: str
    value: Any = None
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "tool": self.tool, "value": self.value, "problem": self.problem}


@dataclass(frozen=True)
class EscalationStep:
    """After `after_seconds` with no decision, `approvers` (names, `group:NAME`) may decide the request too."""

    after_seconds: float
    approvers: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"after_seconds": self.after_seconds, "approvers": list(self.approvers)}


def _steps(text: str) -> tuple[EscalationStep, ...]:
    loaded = stored.strict(text, "the escalation")
    if not isinstance(loaded, list):
        raise Unreadable("it is not a JSON list of steps")
    steps = []
    for entry in loaded:
        after = entry.get("after_seconds") if isinstance(entry, dict) else None
        names = entry.get("approvers") if isinstance(entry, dict) else None
        if not isinstance(after, int | float) or not isinstance(names, list):
            raise Unreadable("a step is not {after_seconds, approvers}")
        steps.append(EscalationStep(float(after), tuple(str(n) for n in names)))
    return tuple(steps)


@dataclass(frozen=True)
class DecisionView:
    approver: str
    channel: str
    verdict: str
    reason: str | None
    at: datetime


def _names(text: str) -> tuple[str, ...]:
    names = stored.strict(text, "the list")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise Unreadable("it is not a JSON list of names")
    return tuple(names)


@dataclass(frozen=True)
class RequestView:
    """One approval request as stored. The fields are listed here once; `from_row` maps them from the columns.

    `damage` says what of the row cannot be read (see `approvals.stored`): such a request is shown to
    everyone, as stored, and may be rejected, but it is never approved or run.
    """

    id: str
    upstream: str
    tool: str
    upstream_tool: str
    arguments_json: str
    arguments_sha256: str
    agent: str
    session_id: str | None
    rule: str
    reason: str
    approvers: tuple[str, ...]
    quorum: int
    channels: tuple[str, ...]
    timeout_seconds: float
    reject_reason_required: bool
    slack_channel: str | None
    pickup_seconds: float
    run_unattended: bool
    max_hold_seconds: float | None
    keep_on_cancel: bool
    created_at: datetime
    expires_at: datetime
    status: Status
    status_changed_at: datetime
    decided_by: str | None
    decided_via: str | None
    decision_reason: str | None
    ended_because: EndReason | None
    agent_waiting: bool
    result_json: str | None
    error: str | None
    slack_ts: str | None
    reminded_at: datetime | None
    open_key: str | None
    executing_by: str | None
    lease_until: datetime | None
    policy_version: str | None
    title: str | None
    agent_reason: str | None
    context_json: str | None
    grant_offer_json: str | None
    editable: tuple[str, ...]
    original_arguments_json: str | None
    original_sha256: str | None
    edits_json: str | None
    escalation: tuple[EscalationStep, ...]
    escalated: int
    remind_before_seconds: float | None
    damage: tuple[str, ...] = ()

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments exactly as approved, to carry out; Unreadable unless they are a finite JSON object."""
        loaded = stored.strict(self.arguments_json, f"the arguments of request {self.id}")
        if not isinstance(loaded, dict):
            raise Unreadable(f"the arguments of request {self.id} are not a JSON object")
        return loaded

    @property
    def arguments_shown(self) -> Any:
        """The arguments for people to read: always serialisable, odd values marked (approvals.stored)."""
        return stored.shown(self.arguments_json)

    @property
    def result(self) -> dict[str, Any] | None:
        """The upstream's recorded result, for people to read (always serialisable)."""
        if self.result_json is None:
            return None
        loaded = stored.shown(self.result_json)
        return loaded if isinstance(loaded, dict) else {"stored": loaded}

    @property
    def context(self) -> tuple[ContextItem, ...]:
        """The context lookups' outcomes as stored, for people to read (never fails: odd entries are skipped)."""
        loaded = stored.shown(self.context_json) if self.context_json else []
        items = []
        for entry in loaded if isinstance(loaded, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                problem = entry.get("problem")
                items.append(
                    ContextItem(
                        entry["name"],
                        str(entry.get("tool", "")),
                        entry.get("value"),
                        None if problem is None else str(problem),
                    )
                )
        return tuple(items)

    @property
    def grant_offer(self) -> GrantOffer | None:
        """The standing approval an approver may make with this request's approval; None while it is not pending."""
        return GrantOffer.from_json(self.grant_offer_json) if self.status == Status.PENDING else None

    @property
    def edits(self) -> tuple[ArgumentEdit, ...]:
        """What the approver changed before approving (empty: approved, if at all, as the agent asked)."""
        return edits_from_json(stored.shown(self.edits_json)) if self.edits_json else ()

    @property
    def original_arguments_shown(self) -> Any:
        """The agent's own arguments when an approver changed them; None otherwise."""
        return None if self.original_arguments_json is None else stored.shown(self.original_arguments_json)

    @property
    def pickup_deadline(self) -> datetime | None:
        """Until when an approved call waits for its agent to come back; None unless approved."""
        if self.status != Status.APPROVED:
            return None
        return self.status_changed_at + timedelta(seconds=self.pickup_seconds)

    @property
    def deadline(self) -> datetime:
        """When the request's current wait ends: its expiry while pending, its pick-up window once approved."""
        return self.pickup_deadline or self.expires_at

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RequestView:
        values: dict[str, Any] = {}
        damage: list[str] = []
        for name in _REQUEST_FIELDS:
            raw = row[_COLUMN_OF.get(name, name)]
            load = _LOAD.get(name)
            try:
                values[name] = _EMPTY.get(name) if raw is None else raw if load is None else load(raw)
            except (Unreadable, ValueError) as exc:
                # Shown as what this version can make of it; the damage keeps it from being approved or run.
                values[name] = _UNREADABLE[name]
                known = name in ("status", "ended_because")
                damage.append(f"its {name} {raw!r} is unknown here" if known else f"its {name} cannot be read: {exc}")
        try:
            if not isinstance(stored.strict(values["arguments_json"], "its arguments"), dict):
                damage.append("its arguments are not a JSON object")
            if values["result_json"] is not None:
                stored.strict(values["result_json"], "its result")
        except Unreadable as exc:
            damage.append(str(exc))
        return cls(**values, damage=tuple(damage))


_REQUEST_FIELDS = tuple(f.name for f in fields(RequestView) if f.name != "damage")
# What a field that cannot be read becomes. An unknown status reads as failed: it ended, and nothing acts on it.
_UNREADABLE: dict[str, Any] = {
    "approvers": (),
    "channels": (),
    "status": Status.FAILED,
    "ended_because": None,
    "editable": (),
    "escalation": (),
}
# What a field whose column is NULL reads as (lists that were never set are empty).
_EMPTY: dict[str, Any] = {"editable": (), "escalation": ()}
# Where a field's column has another name, and how a column's value becomes the field's (None stays None).
_COLUMN_OF = {
    "arguments_json": "arguments",
    "result_json": "result",
    "context_json": "context",
    "grant_offer_json": "grant_offer",
    "original_arguments_json": "original_arguments",
    "edits_json": "edits",
}
_LOAD: dict[str, Callable[[Any], Any]] = {
    "approvers": _names,
    "channels": _names,
    "editable": _names,
    "escalation": _steps,
    "reject_reason_required": bool,
    "run_unattended": bool,
    "keep_on_cancel": bool,
    "agent_waiting": bool,
    "status": Status,
    "ended_because": EndReason,
    **{name: as_utc for name in ("created_at", "expires_at", "status_changed_at", "reminded_at", "lease_until")},
}


@dataclass(frozen=True)
class DecisionOutcome:
    request: RequestView
    approvals: int
    needed: int
    message: str
    # The standing approval made with this approval, if one was asked for (approvals.grants).
    grant: GrantView | None = None

    @property
    def decided(self) -> bool:
        return self.request.status != Status.PENDING


@dataclass(frozen=True)
class AuditEventView:
    seq: int
    at: datetime
    kind: str
    outcome: str
    agent: str | None
    tool: str | None
    upstream: str | None
    request_id: str | None
    actor: str | None
    channel: str | None
    message: str
    arguments: str | None
    detail: dict[str, Any]
    hash: str

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AuditEventView:
        return cls(
            seq=row["seq"],
            at=as_utc(row["at"]),
            kind=row["kind"],
            outcome=row["outcome"],
            agent=row["agent"],
            tool=row["tool"],
            upstream=row["upstream"],
            request_id=row["request_id"],
            actor=row["actor"],
            channel=row["channel"],
            message=row["message"],
            arguments=row["arguments"],
            detail=_detail(row["detail"]),
            hash=row["hash"],
        )


def _detail(text: str) -> dict[str, Any]:
    shown = stored.shown(text)
    return shown if isinstance(shown, dict) else {"stored": shown}
