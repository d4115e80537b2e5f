"""The audit history: every call and transition, filtered, paged by sequence number, exported, verified.

Paging is keyset (`before`/`after` a sequence number) rather than OFFSET, so the thousandth page of
a 100,000-row history costs what the first does. Exports stream the whole filtered history in
batches and never hold it in memory.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from approvals.audit import ChainReport
from approvals.audit_pages import EventPage, count_matches, read_page
from approvals.history import EventFilters
from approvals.service import ApprovalService
from approvals.views import AuditEventView
from gateway.web.auth import Viewer
from gateway.web.pages import WebContext

EXPORT_BATCH = 1000
# A page's count stops at ten thousand ("More than 10,000 matching events"): counting further read up to
# 100,000 index entries per page load (50-90 ms at a million events) for a figure nobody pages through;
# the export gives every event.
COUNT_CAP = 10_000
# A text search is counted to a thousand: past that, PostgreSQL checks each trigram match in its row (about
# 35 ms a thousand over a million events, cold), where the page itself needs only the newest 51.
TEXT_COUNT_CAP = 1_000
CHAIN_TTL = 60.0
FACETS_TTL = 60.0

# Outcomes in the order an auditor thinks of them, with the words the filter menu shows.
OUTCOMES: dict[str, str] = {
    "allowed": "allowed",
    "denied": "denied",
    "limited": "rate limited",
    "held": "held for approval",
    "approval": "approval (quorum not yet met)",
    "approved": "approved",
    "rejected": "rejected",
    "refused": "decision refused",
    "asked": "reason asked in Slack",
    "expired": "expired",
    "cancelled": "cancelled",
    "executing": "executing",
    "executed": "executed",
    "failed": "failed",
    "outcome_unknown": "outcome unknown",
    "repeated": "repeated call",
}

EXPORT_COLUMNS = (
    "seq",
    "at",
    "kind",
    "outcome",
    "agent",
    "tool",
    "upstream",
    "request_id",
    "actor",
    "channel",
    "message",
    "arguments",
    "detail",
    "hash",
)


class QueryError(ValueError):
    pass


def parse_moment(text: str, *, end: bool) -> datetime | None:
    """A date or date-time typed or picked in the form, read as UTC unless it says otherwise.

    `end` makes the bound cover the whole unit given: "until 2025-06-01" includes that day.
    """
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 else text)
    except ValueError:
        raise QueryError(f"{text!r} is not a date or time; use YYYY-MM-DD or YYYY-MM-DD HH:MM (UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        if end:
            if len(text) == 10:
                moment += timedelta(days=1)
            elif len(text) <= 16:
                moment += timedelta(minutes=1)
            elif "." not in text:
                moment += timedelta(seconds=1)
        return moment.astimezone(UTC)
    except OverflowError:
        # 9999-12-31 is a valid date, but the day after it (or its UTC time) is past what a datetime holds.
        raise QueryError(f"{text!r} is beyond the last date this history can search (9999-12-30)") from None


@dataclass(frozen=True)
class AuditQuery:
    tool: str = ""
    agent: str = ""
    outcome: str = ""
    approver: str = ""
    request: str = ""
    q: str = ""
    since_text: str = ""
    until_text: str = ""
    since: datetime | None = None
    until: datetime | None = None
    errors: tuple[str, ...] = field(default=())

    @classmethod
    def from_params(cls, params: QueryParams) -> AuditQuery:
        def text(name: str, limit: int = 200) -> str:
            return (params.get(name) or "").strip()[:limit]

        errors: list[str] = []
        bounds: list[datetime | None] = []
        for name, end in (("since", False), ("until", True)):
            try:
                bounds.append(parse_moment(text(name, 40), end=end))
            except QueryError as exc:
                errors.append(f"{name}: {exc}")
                bounds.append(None)
        return cls(
            tool=text("tool"),
            agent=text("agent"),
            outcome=text("outcome"),
            approver=text("approver"),
            request=text("request"),
            q=text("q", 500),
            since_text=text("since", 40),
            until_text=text("until", 40),
            since=bounds[0],
            until=bounds[1],
            errors=tuple(errors),
        )

    def filters(self) -> EventFilters:
        return {
            "tool": self.tool or None,
            "agent": self.agent or None,
            "outcome": self.outcome or None,
            "actor": self.approver or None,
            "request_id": self.request or None,
            "since": self.since,
            "until": self.until,
            "text": self.q or None,
        }

    def params(self) -> list[tuple[str, str]]:
        pairs = [
            ("tool", self.tool),
            ("agent", self.agent),
            ("outcome", self.outcome),
            ("approver", self.approver),
            ("request", self.request),
            ("since", self.since_text),
            ("until", self.until_text),
            ("q", self.q),
        ]
        return [(k, v) for k, v in pairs if v]

    def query_string(self, **extra: str | int) -> str:
        pairs = [*self.params(), *((k, str(v)) for k, v in extra.items())]
        return str(QueryParams(pairs))

    @property
    def active(self) -> bool:
        return bool(self.params())

    def describe(self) -> dict[str, str]:
        return dict(self.params())


@dataclass
class Facets:
    """The filter menus' values. DISTINCT over 100,000 rows costs PostgreSQL a few hundred ms, and the
    values change rarely, so they are shared for a minute."""

    service: ApprovalService
    values: dict[str, list[str]] = field(default_factory=dict)
    _loaded: float = float("-inf")

    async def current(self) -> dict[str, list[str]]:
        if time.monotonic() - self._loaded > FACETS_TTL:
            self.values = await self.service.history.event_facets()
            self._loaded = time.monotonic()
        return self.values


@dataclass
class ChainStatus:
    """The last full verification, shared for a minute: walking 100,000 links takes a second or two."""

    service: ApprovalService
    report: ChainReport | None = None
    checked_at: datetime | None = None
    _checked: float = float("-inf")
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def current(self, *, fresh: bool = False) -> tuple[ChainReport, datetime]:
        async with self._lock:
            if fresh or self.report is None or time.monotonic() - self._checked > CHAIN_TTL:
                self.report = await self.service.history.verify()
                self.checked_at = datetime.now(UTC)
                self._checked = time.monotonic()
            assert self.checked_at is not None
            return self.report, self.checked_at


# Sequence numbers are stored as 64-bit integers; a larger bound would overflow the database driver.
MAX_SEQ = 2**63 - 1


def page_bound(params: QueryParams, name: str) -> int | None:
    """The `before`/`after` sequence number of a page link; QueryError when it is not one."""
    value = params.get(name)
    if value is None or not value.strip():
        return None
    value = value.strip()
    # Digits only, and few enough of them to compare before converting (int() of a huge string is slow).
    if not value.isascii() or not value.isdigit() or len(value) > len(str(MAX_SEQ)) or int(value) > MAX_SEQ:
        raise QueryError(f"{name}: {value[:40]!r} is not an event number (a whole number up to {MAX_SEQ})")
    return int(value)


# Characters a spreadsheet reads as the start of a formula: the ASCII ones and their full-width forms,
# which some spreadsheets fold to ASCII before parsing.
_FORMULA_STARTS = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")


def _spreadsheet_safe(value: str) -> str:
    """A cell that no spreadsheet runs as a formula: a leading apostrophe on anything that could start one.

    Agents write the arguments. Spreadsheets skip leading spaces, tabs and line breaks before
    looking for `=`, so a cell is neutralised when it starts with whitespace or a control character
    at all, or when its first visible character starts a formula.
    """
    if not value:
        return value
    first = value[0]
    if first.isspace() or not first.isprintable() or value.lstrip()[:1] in _FORMULA_STARTS:
        return "'" + value
    return value


def event_record(event: AuditEventView) -> dict[str, Any]:
    # Read field by field: dataclasses.asdict deep-copies every detail, which was most of an export's time.
    record = {k: getattr(event, k) for k in EXPORT_COLUMNS}
    record["at"] = event.at.isoformat()
    return record


class AuditViews:
    def __init__(self, web: WebContext) -> None:
        self.web = web
        self.service = web.service
        self.chain = ChainStatus(web.service)
        self.facets = Facets(web.service)

    async def page(self, request: Request, viewer: Viewer) -> Response:
        query = AuditQuery.from_params(request.query_params)
        before = after = None
        try:
            before = page_bound(request.query_params, "before")
            after = page_bound(request.query_params, "after")
        except QueryError as exc:
            query = replace(query, errors=(*query.errors, str(exc)))
        facets = await self.facets.current()
        outcomes = dict(OUTCOMES)
        for outcome in facets.get("outcome", []):
            outcomes.setdefault(outcome, outcome)
        cap = TEXT_COUNT_CAP if query.q else COUNT_CAP
        listed = EventPage()
        if not query.errors:
            history = self.service.history
            # A text search on PostgreSQL reads event rows to count (no index answers it alone): after the page.
            defer = bool(query.q) and not history.db.is_sqlite
            listed = await read_page(history, query.filters(), before=before, after=after, cap=cap, defer_count=defer)
        link = "/audit?{}".format
        return await self.web.page(
            "audit.html",
            viewer,
            {
                "active": "audit",
                "query": query,
                "events": listed.events,
                "listed": listed,
                "facets": facets,
                "outcomes": outcomes,
                "total": listed.total,
                "total_capped": listed.capped,
                "count_cap": cap,
                "newer_link": None if listed.newer is None else link(query.query_string(after=listed.newer)),
                "older_link": None if listed.older is None else link(query.query_string(before=listed.older)),
                "first_page_link": f"/audit?{query.query_string()}" if (before or after) else None,
                "export_csv": f"/audit/export.csv?{query.query_string()}",
                "export_json": f"/audit/export.json?{query.query_string()}",
                "activity_url": f"/audit/activity?{query.query_string()}",
                "count_url": f"/audit/count?{query.query_string()}",
            },
            status_code=400 if query.errors else 200,
        )

    async def count(self, request: Request, viewer: Viewer) -> Response:
        """The matching events' count, alone: what a page whose count was deferred loads after itself (htmx)."""
        query = AuditQuery.from_params(request.query_params)
        if query.errors:
            return Response("; ".join(query.errors), status_code=400, media_type="text/plain")
        cap = TEXT_COUNT_CAP if query.q else COUNT_CAP
        counted = await count_matches(self.service.history, query.filters(), cap=cap)
        context = {"listed": counted, "total": counted.total, "total_capped": counted.capped, "count_cap": cap}
        return self.web.render("partials/audit_count.html", viewer, context)

    async def chain_status(self, request: Request, viewer: Viewer) -> Response:
        report, checked_at = await self.chain.current(fresh=request.query_params.get("fresh") == "1")
        return self.web.render("partials/audit_chain.html", viewer, {"report": report, "checked_at": checked_at})

    async def _batches(self, query: AuditQuery) -> AsyncIterator[list[AuditEventView]]:
        filters = await self.service.history.bounded(query.filters())
        if filters is None:
            return
        before: int | None = None
        while True:
            batch = await self.service.history.search_events(**filters, before_seq=before, limit=EXPORT_BATCH)
            if not batch:
                return
            yield batch
            before = batch[-1].seq

    async def export_csv(self, request: Request, viewer: Viewer) -> Response:
        query = AuditQuery.from_params(request.query_params)
        if query.errors:
            return Response("; ".join(query.errors), status_code=400, media_type="text/plain")

        async def rows() -> AsyncIterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(EXPORT_COLUMNS)
            async for batch in self._batches(query):
                for event in batch:
                    record = event_record(event)
                    record["detail"] = json.dumps(record["detail"], sort_keys=True, ensure_ascii=False)
                    writer.writerow(
                        [
                            v if isinstance(v, int) else _spreadsheet_safe("" if v is None else str(v))
                            for v in record.values()
                        ]
                    )
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
            yield buffer.getvalue()

        return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers=_attachment("csv"))

    async def export_json(self, request: Request, viewer: Viewer) -> Response:
        query = AuditQuery.from_params(request.query_params)
        if query.errors:
            return Response("; ".join(query.errors), status_code=400, media_type="text/plain")

        async def body() -> AsyncIterator[str]:
            head = {
                "exported_at": datetime.now(UTC).isoformat(),
                "exported_by": viewer.name,
                "filter": query.describe(),
            }
            yield json.dumps(head, ensure_ascii=False)[:-1] + ', "events": ['
            first = True
            async for batch in self._batches(query):
                parts = [json.dumps(event_record(e), ensure_ascii=False) for e in batch]
                yield ("\n" if first else ",\n") + ",\n".join(parts)
                first = False
            yield "\n]}\n"

        return StreamingResponse(body(), media_type="application/json", headers=_attachment("json"))


def _attachment(extension: str) -> dict[str, str]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return {"Content-Disposition": f'attachment; filename="countersign-audit-{stamp}.{extension}"'}
