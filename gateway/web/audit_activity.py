"""The audit page's activity chart: calls and decisions over time by outcome, for the page's filters.

The counts come from one grouped query (`approvals.activity`); this module picks the time range,
turns the counts into stacked bars (plain SVG drawn by the template, no script) and a table that
says the same in words. The page loads it after itself (htmx), so a slow range never delays the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from approvals.activity import SERIES, Activity, AuditActivity
from gateway.web.audit_views import OUTCOMES, AuditQuery
from gateway.web.auth import Viewer
from gateway.web.pages import WebContext

# Without a "from", the chart shows the week up to "until" (or now): long enough to see a pattern, short
# enough to read each day.
DEFAULT_SPAN = timedelta(days=7)
# The drawing's own units; the SVG is stretched to the width of the page, so only proportions matter.
WIDTH = 1000
HEIGHT = 200
GAP = 0.15  # of each bar's slot, left empty between bars


@dataclass(frozen=True)
class Segment:
    outcome: str
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    start: datetime
    end: datetime
    x: float
    width: float
    total: int
    counts: dict[str, int]  # every counted outcome, zeros included (the table's row)
    segments: tuple[Segment, ...]

    def words(self) -> str:
        parts = [f"{s.count} {OUTCOMES.get(s.outcome, s.outcome)}" for s in self.segments]
        return ", ".join(parts) if parts else "nothing"


@dataclass(frozen=True)
class Chart:
    activity: Activity
    bars: tuple[Bar, ...]
    top: int  # the count the top of the drawing stands for
    ticks: tuple[int, ...]  # counts with a grid line

    def y_of(self, count: int) -> float:
        return HEIGHT - HEIGHT * count / self.top

    @property
    def labels(self) -> tuple[datetime, datetime, datetime]:
        """Where the time axis is labelled: its start, middle and end."""
        buckets = self.activity.buckets
        return buckets.start, buckets.edge(buckets.count // 2), buckets.end


def nice_top(largest: int) -> int:
    """The count the chart's top stands for: a round number at least `largest` (and at least 1).

    Round means 1, 2, 3, 4, 5, 6 or 8 times a power of ten, so the tallest bar fills most of the height.
    """
    step = 1
    while True:
        for factor in (1, 2, 3, 4, 5, 6, 8):
            if step * factor >= largest:
                return step * factor
        step *= 10


def chart(activity: Activity) -> Chart:
    buckets = activity.buckets
    slot = WIDTH / buckets.count
    columns = [activity.at(i) for i in range(buckets.count)]
    top = nice_top(max((sum(c.values()) for c in columns), default=0))
    bars: list[Bar] = []
    for index, counts in enumerate(columns):
        # Stacked from the bottom in the order of SERIES: calls first, then what approvers decided.
        segments: list[Segment] = []
        base = 0
        for outcome, count in counts.items():
            if count:
                y = HEIGHT - HEIGHT * (base + count) / top
                segments.append(Segment(outcome, count, y, HEIGHT * count / top))
                base += count
        bars.append(
            Bar(
                start=buckets.edge(index),
                end=buckets.edge(index + 1),
                x=index * slot + slot * GAP / 2,
                width=slot * (1 - GAP),
                total=base,
                counts=counts,
                segments=tuple(segments),
            )
        )
    # A grid line halfway up when half the top is a whole number.
    ticks = (top // 2, top) if top % 2 == 0 else (top,)
    return Chart(activity, tuple(bars), top, ticks)


def moment_words(moment: datetime, width: timedelta) -> str:
    """A bucket edge as the axis shows it: the day alone when buckets are whole days."""
    if width >= timedelta(days=1):
        return f"{moment:%Y-%m-%d}"
    return f"{moment:%Y-%m-%d %H:%M}"


def width_words(width: timedelta) -> str:
    seconds = int(width.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{unit}" if n == 1 else f"{n} {unit}s"
    return f"{seconds} seconds"


class ActivityViews:
    def __init__(self, web: WebContext) -> None:
        self.web = web
        self.activity = AuditActivity(web.service.db)

    async def fragment(self, request: Request, viewer: Viewer) -> Response:
        query = AuditQuery.from_params(request.query_params)
        if query.errors:
            return Response("; ".join(query.errors), status_code=400, media_type="text/plain")
        until = query.until or self.web.service.clock()
        since = query.since or until - DEFAULT_SPAN
        context: dict[str, object] = {
            "query": query,
            "since": since,
            "until": until,
            "range": f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC",
            "chart": None,
            "note": None,
        }
        if since >= until:
            context["note"] = "The time range is empty: “from” is not before “until”."
        elif query.outcome and query.outcome not in SERIES:
            label = OUTCOMES.get(query.outcome, query.outcome)
            context["note"] = f"The activity chart counts calls and decisions; “{label}” is neither."
        else:
            series = (query.outcome,) if query.outcome else SERIES
            activity = await self.activity.count(start=since, end=until, series=series, **query.filters())
            context["chart"] = chart(activity)
            context["step"] = width_words(activity.buckets.width)
            # Each outcome in the legend narrows the page to it (already narrowed: no links).
            links = {} if query.outcome else {o: f"/audit?{query.query_string(outcome=o)}" for o in series}
            context["links"] = links
        context["geometry"] = {"width": WIDTH, "height": HEIGHT}
        context["outcomes"] = OUTCOMES
        context["moment_words"] = moment_words
        return self.web.render("partials/audit_activity.html", viewer, context)
