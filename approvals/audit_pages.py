"""One page of the audit history as the audit page shows it: its events, its links and its count.

Reading a page is a few statements (`approvals.history.AuditHistory`): the time range as sequence
numbers, the search's window, the page itself, and a count. Each is bounded, so a page load costs
about the same whatever the filters and however many events there are:

- a page is keyset-paged: 51 events below (or above) a sequence number;
- a text search narrowed by other filters examines at most `AuditHistory.scan` candidates per load
  (`AuditHistory.window`); a page that is not full there names the event it searched down to, and
  its "search older" link continues from that event (or "search newer", going the other way);
- a count stops at a cap; a windowed search is counted on its first page, in its window there ("N
  matching events from the newest down to event #X"); a first page that holds every match is its
  own count.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from approvals.history import SCAN, AuditHistory, EventFilters
from approvals.views import AuditEventView

PAGE_SIZE = 50


@dataclass(frozen=True)
class EventPage:
    """A page of events, newest first, and where its links lead (None: no such link)."""

    events: list[AuditEventView] = field(default_factory=list)
    # None: not counted (a later window of a search: its first page counts the newest window).
    total: int | None = 0
    # Counting stopped at the cap: there are more than `cap` matches.
    capped: bool = False
    # The page's "newer" link (`after=`) and "older" link (`before=`).
    newer: int | None = None
    older: int | None = None
    # The search stopped at this event without filling the page (window): the link there searches on.
    searched_to: int | None = None
    searched_older: bool = True
    # The count covers the events from this one up to the newest only (the top window of a search).
    counted_from: int | None = None
    scan: int = SCAN
    # Not counted with the page: the count is read after it (`count_matches`), the page shows meanwhile.
    deferred: bool = False


async def read_page(
    history: AuditHistory,
    filters: EventFilters,
    *,
    before: int | None = None,
    after: int | None = None,
    cap: int,
    size: int = PAGE_SIZE,
    defer_count: bool = False,
) -> EventPage:
    """The page of `filters` below `before` (or above `after`), its links and its count (to `cap` + 1).

    `defer_count`: a count that takes a statement of its own is left to `count_matches`, read after the page.
    """
    scan = history.scan
    bounded = await history.bounded(filters)
    if bounded is None:
        return EventPage(scan=scan)
    going_newer = after is not None and before is None
    edge = await history.window(bounded, before_seq=before, after_seq=after if going_newer else None)
    within = _within(bounded, edge, newer=going_newer)
    events = await history.search_events(
        **within, before_seq=before, after_seq=after if going_newer else None, limit=size + 1
    )
    full = len(events) > size
    if going_newer:
        assert after is not None
        events = events[1:] if full else events
        newer = events[0].seq if full else edge
        older: int | None = events[-1].seq if events else after + 1
    else:
        events = events[:size]
        older = events[-1].seq if full else edge
        newer = None if before is None else events[0].seq if events else before - 1
    page = EventPage(
        events,
        total=None,
        newer=newer,
        older=older,
        searched_to=None if full else edge,
        searched_older=not going_newer,
        scan=scan,
    )
    first = before is None and after is None
    if first and not full:
        # Every match there is on this page: that is the count (of the window, when the search stopped at one).
        return replace(page, total=len(events), counted_from=edge)
    if edge is not None and not first:
        # A later window of a search: counting the top window again would double the load's work.
        return page
    if defer_count:
        return replace(page, deferred=True)
    top = edge if first else None
    total = await history.count_events(**_within(bounded, top, newer=False), cap=cap + 1)
    return replace(page, total=min(total, cap), capped=total > cap, counted_from=top)


async def count_matches(history: AuditHistory, filters: EventFilters, *, cap: int) -> EventPage:
    """The count a first page shows (to `cap` + 1), on its own: a search's in its newest window (no events)."""
    bounded = await history.bounded(filters)
    if bounded is None:
        return EventPage(scan=history.scan)
    top = await history.window(bounded)
    total = await history.count_events(**_within(bounded, top, newer=False), cap=cap + 1)
    return EventPage(total=min(total, cap), capped=total > cap, counted_from=top, scan=history.scan)


def _within(filters: EventFilters, edge: int | None, *, newer: bool) -> EventFilters:
    """`filters` narrowed to the window that ends at `edge` (its oldest event, or its newest going newer)."""
    if edge is None:
        return filters
    if newer:
        top = filters.get("seq_to")
        return {**filters, "seq_to": edge if top is None else min(top, edge)}
    bottom = filters.get("seq_from")
    return {**filters, "seq_from": edge if bottom is None else max(bottom, edge)}
