"""What the audit chain proves about the request and decision tables, and where they disagree with it.

The tables are what the gateway acts on; the chain is what can be proved (its events are keyed,
see `approvals.audit`). Someone who can write to the database can change a row, but cannot
make the chain agree. So:

- before an approved call is forwarded, `not_as_approved` compares the stored request with the
  events that created and approved it (arguments, policy version, pick-up window) and names the
  first difference; the service then refuses to run it;
- `audit verify` (`verify_log`) walks the chain and then holds every request row and every
  decision row against the events written with it, in both directions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, Select, any_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from approvals import audit, driver_sql
from approvals.audit import CHAIN_KEY, ChainReport, as_utc, canonical_json
from approvals.models import ApprovalRequest, AuditEvent, Decision
from approvals.states import Status
from approvals.views import RequestView

_events = AuditEvent.__table__  # type: ignore[attr-defined]
_requests = ApprovalRequest.__table__  # type: ignore[attr-defined]
_decisions = Decision.__table__  # type: ignore[attr-defined]

# The events that record a decision row, and its verdict.
DECISION_KINDS = {"request.approval": "approve", "request.approved": "approve", "request.rejected": "reject"}
# The status each transition's event leaves its request in. Events of other `request.*` kinds that
# are not listed as leaving the status alone are not judged (a kind this version does not know).
TRANSITIONS = {
    "request.created": Status.PENDING,
    "request.approval": Status.PENDING,
    "request.approved": Status.APPROVED,
    "request.rejected": Status.REJECTED,
    "request.expired": Status.EXPIRED,
    "request.cancelled": Status.CANCELLED,
    "request.executing": Status.EXECUTING,
    "request.executed": Status.EXECUTED,
    "request.failed": Status.FAILED,
    "request.start_abandoned": Status.APPROVED,
    "request.outcome_unknown": Status.OUTCOME_UNKNOWN,
}
LEAVE_STATUS = frozenset(
    {"request.attached", "request.detached", "request.reminded", "request.answered_late", "request.escalated"}
)
# A pick-up window stored later than the approval recorded it, by more than clocks disagree, was extended.
_SLACK = timedelta(seconds=1)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _short(digest: str | None) -> str:
    return "none" if digest is None else digest[:16] + "…"


# ---- before an approved call runs


def _evidence_query() -> Select[Any]:
    kinds = ("request.created", "request.approved", "request.start_abandoned")
    # One parameter per kind (not an expanding list), so it compiles once to plain SQL.
    named = [bindparam(f"kind{i}", kind, type_=_events.c.kind.type) for i, kind in enumerate(kinds)]
    where = (_events.c.request_id == bindparam("rid", type_=_events.c.request_id.type), _events.c.kind.in_(named))
    return select(_events).where(*where).order_by(_events.c.seq)


def _evidence_of_many_query() -> Select[Any]:
    kinds = ("request.created", "request.approved", "request.start_abandoned")
    named = [bindparam(f"kind{i}", kind, type_=_events.c.kind.type) for i, kind in enumerate(kinds)]
    ids = bindparam("rids", type_=ARRAY(_events.c.request_id.type))
    return select(_events).where(_events.c.request_id == any_(ids), _events.c.kind.in_(named)).order_by(_events.c.seq)


async def evidence_of(conn: AsyncConnection, request_ids: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
    """The events `not_as_approved` judges, for each of several requests (`rows=`): on PostgreSQL one read for all."""
    for request_id in request_ids:
        await driver_sql.flush(conn, touching=(_events, "request_id", request_id))
    found: dict[str, list[Mapping[str, Any]]] = {request_id: [] for request_id in request_ids}
    if conn.dialect.name != "postgresql" or len(request_ids) == 1:
        single = driver_sql.compiled(conn.dialect, "evidence", _evidence_query)
        for request_id in request_ids:
            found[request_id] = list(await driver_sql.rows(conn, single, {"rid": request_id}))
        return found
    many = driver_sql.compiled(conn.dialect, "evidence of many", _evidence_of_many_query)
    for row in await driver_sql.rows(conn, many, {"rids": list(request_ids)}):
        found[row["request_id"]].append(row)
    return found


async def not_as_approved(
    conn: AsyncConnection,
    view: RequestView,
    forwarding_sha256: str,
    *,
    approving: audit.Event | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """Why `view` must not run, judged by the chain's record of its creation and approval; None when it may.

    `forwarding_sha256` is the digest of the arguments about to be forwarded. Runs inside the
    write transaction that starts the execution, so what is checked is what is started.
    `approving`: the approval this same transaction is recording, to be appended with the start
    (one insert for both): it is the latest approval, and it is judged as it will be written.
    `rows`: its events as `evidence_of` read them in this transaction (otherwise read here).
    """
    key: bytes | None = conn.info.get(CHAIN_KEY)
    if rows is None:
        rows = (await evidence_of(conn, [view.id]))[view.id]
    created = next((r for r in rows if r["kind"] == "request.created"), None)
    approvals: list[Mapping[Any, Any]] = [r for r in rows if r["kind"] == "request.approved"]
    if approving is not None:
        approvals.append(_unwritten(approving))
    if created is None:
        return "the audit log holds no record of this request being created"
    if not approvals:
        return "the audit log holds no approval of this request"
    approved = approvals[-1]
    # The approval being recorded needs no hash check: this transaction is writing it.
    for row in (created, approved) if approving is None else (created,):
        if not await _trustworthy(conn, row, key):
            return f"audit event #{row['seq']} ({row['kind']}) does not match its hash: it was altered"
    recorded = sha256(created["arguments"] or "")
    approved_detail = json.loads(approved["detail"])
    source: Mapping[Any, Any] = created
    if approved["arguments"] is not None:
        # Approved with changes: what may run is what the approval recorded, if the changes were allowed.
        problem = _edit_problem(created, approved, approved_detail, recorded)
        if problem is not None:
            return problem
        recorded, source = sha256(approved["arguments"]), approved
    claims = [
        ("the arguments about to be forwarded", forwarding_sha256),
        ("the stored arguments", sha256(view.arguments_json)),
        ("the stored arguments_sha256", view.arguments_sha256),
        (f"the arguments approved in {_named(approved)}", approved_detail.get("arguments_sha256", recorded)),
    ]
    for what, digest in claims:
        if digest != recorded:
            when = "created" if source is created else "approved with changes"
            return (
                f"{what} (sha256 {_short(digest)}) are not those recorded when the request was {when} "
                f"(event #{source['seq']}, sha256 {_short(recorded)})"
            )
    for row in (created, approved):
        detail = json.loads(row["detail"])
        if "policy_version" in detail and detail["policy_version"] != view.policy_version:
            return (
                f"its policy version ({_short(view.policy_version)}) is not the one recorded in event "
                f"#{row['seq']} ({_short(detail['policy_version'])})"
            )
    # The newest window recorded (an abandoned start opens a fresh one); the stored one may not be later.
    later = [approved] if approving is not None else [r for r in rows if r["seq"] >= approved["seq"]]
    windows = [json.loads(r["detail"]).get("pickup_until") for r in later]
    recorded_until = [datetime.fromisoformat(w) for w in windows if w]
    if recorded_until and view.pickup_deadline is not None and view.pickup_deadline > max(recorded_until) + _SLACK:
        return f"its pick-up window was extended in the database past {max(recorded_until).isoformat()}"
    return None


def _unwritten(event: audit.Event) -> dict[str, Any]:
    """An event this transaction is about to append, as its row will read (it has no number yet)."""
    return {"seq": None, "kind": event.kind, "arguments": event.arguments, "detail": canonical_json(dict(event.detail))}


def _named(row: Mapping[Any, Any]) -> str:
    return "the approval being recorded" if row["seq"] is None else f"event #{row['seq']}"


def _edit_problem(
    created: Mapping[Any, Any], approved: Mapping[Any, Any], detail: Mapping[str, Any], recorded: str
) -> str | None:
    """Why an approval with changes does not follow from the request as created; None when it does."""
    where = _named(approved)
    if detail.get("original_arguments_sha256") != recorded:
        return f"the approval with changes ({where}) does not start from the arguments the request was created with"
    editable = json.loads(created["detail"]).get("editable") or []
    try:
        before, after = json.loads(created["arguments"] or "{}"), json.loads(approved["arguments"])
    except ValueError:
        return f"the arguments recorded in {where} cannot be read"
    changed = _changed_paths(before, after)
    outside = sorted(p for p in changed if not any(p == e or p.startswith(e + ".") for e in editable))
    if outside:
        return f"the approval with changes ({where}) changed {outside[0]!r}, which approvers may not change here"
    return None


def _changed_paths(before: Any, after: Any, prefix: str = "") -> set[str]:
    """The paths at which two JSON values differ, as deep as the change (an edited leaf names its own path)."""
    if before is _ABSENT or after is _ABSENT:
        return {prefix.rstrip(".")}
    if isinstance(before, dict) and isinstance(after, dict):
        keys = set(before) | set(after)
        return {p for k in keys for p in _changed_paths(before.get(k, _ABSENT), after.get(k, _ABSENT), f"{prefix}{k}.")}
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return {
            p for i, (b, a) in enumerate(zip(before, after, strict=True)) for p in _changed_paths(b, a, f"{prefix}{i}.")
        }
    same = json.dumps(before, sort_keys=True) == json.dumps(after, sort_keys=True)
    return set() if same else {prefix.rstrip(".")}


_ABSENT: Any = object()


async def _trustworthy(conn: AsyncConnection, row: Mapping[Any, Any], key: bytes | None) -> bool:
    """The event matches its hash, and is keyed unless it was written before the chain was keyed."""
    if not audit.authentic(row, key):
        return False
    if row["keyed"] or key is None:
        return True
    earlier_keyed = select(_events.c.seq).where(_events.c.keyed, _events.c.seq < row["seq"]).limit(1)
    return (await conn.execute(earlier_keyed)).first() is None


# ---- audit verify: the tables against the chain


@dataclass
class _Created:
    seq: int
    arguments_sha256: str
    agent: str | None
    tool: str | None
    upstream: str | None
    detail: dict[str, Any]


def _decision_of(
    request_id: str, approver: str | None, channel: str | None, verdict: str, **rest: Any
) -> tuple[Any, ...]:
    reason, at, policy_version = rest["reason"], rest["at"], rest["policy_version"]
    return (
        request_id,
        approver,
        channel,
        verdict,
        reason,
        as_utc(at).isoformat(timespec="microseconds"),
        policy_version,
    )


@dataclass
class _Seen:
    """What the chain says about each request and decision, gathered while it is verified."""

    created: dict[str, _Created] = field(default_factory=dict)
    last_transition: dict[str, tuple[int, str]] = field(default_factory=dict)
    decisions: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    decision_seq: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def add(self, row: Mapping[Any, Any]) -> None:
        request_id, kind = row["request_id"], row["kind"]
        if request_id is None or not kind.startswith("request."):
            return
        if kind == "request.created" and request_id not in self.created:
            detail = json.loads(row["detail"])
            digest = sha256(row["arguments"] or "")
            self.created[request_id] = _Created(row["seq"], digest, row["agent"], row["tool"], row["upstream"], detail)
        if kind == "request.approved" and row["arguments"] is not None and request_id in self.created:
            # Approved with changes: from here on the row holds the approved arguments.
            self.created[request_id].arguments_sha256 = sha256(row["arguments"])
        if kind not in LEAVE_STATUS:
            self.last_transition[request_id] = (row["seq"], kind)
        if kind in DECISION_KINDS:
            detail = json.loads(row["detail"])
            decision = _decision_of(
                request_id,
                row["actor"],
                row["channel"],
                DECISION_KINDS[kind],
                reason=detail.get("reason"),
                at=row["at"],
                policy_version=detail.get("policy_version"),
            )
            self.decisions[decision] += 1
            self.decision_seq.setdefault(decision, row["seq"])

    async def disagreement(self, conn: AsyncConnection) -> str | None:
        """The first way the request and decision tables disagree with the chain; None when they agree."""
        unseen = set(self.created)
        after = ""
        while True:
            query = select(_requests).where(_requests.c.id > after).order_by(_requests.c.id).limit(1000)
            rows = (await conn.execute(query)).mappings().all()
            if not rows:
                break
            for row in rows:
                unseen.discard(row["id"])
                problem = self._request_problem(RequestView.from_row(row))
                if problem is not None:
                    return f"request {row['id']}: {problem}"
            after = rows[-1]["id"]
        if unseen:
            first = min(unseen, key=lambda r: self.created[r].seq)
            return f"event #{self.created[first].seq} created request {first}, which is not in the request table"
        return await self._decision_problem(conn)

    def _request_problem(self, view: RequestView) -> str | None:
        if sha256(view.arguments_json) != view.arguments_sha256:
            return "its arguments do not match its arguments_sha256 (the row was altered)"
        created = self.created.get(view.id)
        if created is None:
            return "the chain holds no request.created event for it"
        where = f"event #{created.seq}"
        if created.arguments_sha256 != view.arguments_sha256:
            return f"its arguments are not those recorded when it was created ({where})"
        for name, value in (("agent", view.agent), ("tool", view.tool), ("upstream", view.upstream)):
            if getattr(created, name) != value:
                return f"its {name} {value!r} is not the {getattr(created, name)!r} recorded in {where}"
        detail = created.detail
        if "policy_version" in detail and detail["policy_version"] != view.policy_version:
            return f"its policy version is not the one recorded in {where}"
        if "expires_at" in detail and datetime.fromisoformat(detail["expires_at"]) != view.expires_at:
            return f"its expiry {view.expires_at.isoformat()} is not the {detail['expires_at']} recorded in {where}"
        seq, kind = self.last_transition[view.id]
        implied = TRANSITIONS.get(kind)
        if implied is not None and implied != view.status:
            last = f"event #{seq}, {kind}"
            return f"it is {view.status.value}, but the chain's last word on it ({last}) makes it {implied.value}"
        return None

    async def _decision_problem(self, conn: AsyncConnection) -> str | None:
        rows = (await conn.execute(select(_decisions).order_by(_decisions.c.id))).mappings().all()
        stored: Counter[tuple[Any, ...]] = Counter()
        for row in rows:
            decision = _decision_of(
                row["request_id"],
                row["approver"],
                row["channel"],
                row["verdict"],
                reason=row["reason"],
                at=row["at"],
                policy_version=row["policy_version"],
            )
            stored[decision] += 1
            if stored[decision] > self.decisions[decision]:
                return (
                    f"decision #{row['id']} ({row['approver']} {row['verdict']} on {row['request_id']} via "
                    f"{row['channel']}) matches no decision event in the chain (the row was altered or added)"
                )
        missing = self.decisions - stored
        if missing:
            first = min(missing, key=lambda d: self.decision_seq[d])
            return f"event #{self.decision_seq[first]} records a decision that is not in the decision table"
        return None


async def verify_log(
    conn: AsyncConnection, key: bytes | None, *, expect: tuple[int | None, str] | None = None
) -> ChainReport:
    """The chain verified link by link, then the request and decision tables held against it."""
    seen = _Seen()
    report = await audit.verify(conn, key, expect=expect, each=seen.add)
    if not report.ok:
        return report
    problem = await seen.disagreement(conn)
    if problem is not None:
        return replace(report, ok=False, problem=problem, tables=True)
    return report
