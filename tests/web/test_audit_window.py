"""A text search narrowed by other filters looks through a bounded window of candidates per page load.

The page then says where it stopped, and its "Search older" (or "Search newer") link goes on from
there: followed to the end, the links find exactly the events that match, none twice, none skipped,
on SQLite (candidates: the text's matches in the trigram index) and PostgreSQL (candidates: the
outcome's own events, walked newest first).
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx2

from approvals.audit import Event
from tests.harness import Harness, running_gateway
from tests.web.support import browser_client, sign_in, web_config

SCAN = 20


def found(page: str) -> list[int]:
    return [int(seq) for seq in re.findall(r'<tr id="event-(\d+)">', page)]


def link(page: str, rel: str) -> str | None:
    match = re.search(rf'href="(/audit\?[^"]+)" rel="{rel}"', page)
    return None if match is None else match.group(1).replace("&amp;", "&")


async def recorded(h: Harness) -> dict[int, int]:
    """300 events: "needle" in every even one, approvals every odd one; both only in numbers 51 and 251.

    Returns each event's number by its sequence number. A window of 20 candidates holds neither of the
    two matches on the first page, on either database (24 candidates of each kind are newer than 251).
    """
    events = [
        Event(
            kind="call.allowed" if n % 2 == 0 else "request.approved",
            outcome="allowed" if n % 2 == 0 else "approved",
            message=f"needle {n}" if n % 2 == 0 or n in (51, 251) else f"thread {n}",
            agent="alpha",
            actor=None if n % 2 == 0 else "bob",
        )
        for n in range(300)
    ]
    seqs = await h.gateway.db.append_events([(e, datetime.now(UTC)) for e in events])
    await h.gateway.audit_index.catch_up()  # SQLite: the window is of the index's matches (newer ones are few)
    h.service.history.scan = SCAN
    h.service.history.estimates.rare = -1  # PostgreSQL: walk the outcome's events whatever the text
    return {seq: n for seq, n in zip(seqs, range(300), strict=True)}


async def follow(web: httpx2.AsyncClient, first: str, rel: str) -> tuple[list[int], list[httpx2.Response]]:
    pages, seen, url = [], [], first
    while url is not None:
        page = await web.get(url)
        assert page.status_code == 200
        pages.append(page)
        seen += found(page.text)
        url = link(page.text, rel)
        assert len(pages) < 40, "the links end"
    return seen, pages


async def test_search_older_goes_on_from_where_a_page_stopped_and_finds_every_match_once(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        number = await recorded(h)
        first = await web.get("/audit", params={"q": "NEEDLE", "outcome": "approved"})
        assert found(first.text) == []
        assert "No match so far." in first.text and 'id="searched-to"' in first.text
        assert "No events match these filters." not in first.text
        # Counted where it looked: no match in the newest window.
        assert 'id="result-count">0 matching events' in first.text and 'id="counted-from"' in first.text
        older = link(first.text, "next")
        assert older is not None and "Search older" in first.text
        edge = int(re.search(r"before=(\d+)", older).group(1))  # type: ignore[union-attr]
        assert f"Searched down to event #{edge}" in first.text

        seen, pages = await follow(web, older, "next")
        assert [number[seq] for seq in seen] == [251, 51], "newest first, each once"
        assert len(pages) > 2, "more than one window was needed"
        assert "Search older" not in pages[-1].text and 'id="searched-to"' not in pages[-1].text
        # A later window is not counted again (its first page counts the newest window).
        assert "counted on its first page" in pages[0].text

        # Going newer from the oldest page finds the rest of the two, then stops at the newest.
        back = link(pages[-1].text, "prev")
        assert back is not None
        newer, _ = await follow(web, back, "prev")
        assert sorted(number[seq] for seq in found(pages[-1].text) + newer) == [51, 251]

        # The export is not windowed: every match, at once.
        exported = await web.get("/audit/export.csv", params={"q": "needle", "outcome": "approved"})
        assert [number[int(r["seq"])] for r in csv.DictReader(io.StringIO(exported.text))] == [251, 51]


async def test_a_search_whose_window_holds_the_page_pages_on_as_usual(tmp_path: Path, database_url: str) -> None:
    async with running_gateway(tmp_path, database_url, config=web_config()) as h, browser_client(h.base_url) as web:
        await sign_in(web, "alice")
        number = await recorded(h)
        h.service.history.scan = 200
        # "needle" among alpha's events: every text match is one (a full page, no window note).
        page = await web.get("/audit", params={"q": "needle", "agent": "alpha"})
        expected = [n for n in range(299, -1, -1) if n % 2 == 0 or n in (51, 251)]
        assert [number[s] for s in found(page.text)] == expected[:50]
        assert 'id="searched-to"' not in page.text and "Older →" in page.text
        if not database_url.startswith("sqlite"):
            # PostgreSQL counts a search from event rows: the page loads its count after itself.
            deferred = re.search(r'id="result-count" hx-get="([^"]+)"', page.text)
            assert deferred is not None and "Counting matching events" in page.text
            count = await web.get(deferred.group(1).replace("&amp;", "&"))
            # The newest window of 200 alpha events holds 101 matches (100 even numbers and 251).
            assert 'id="result-count">101 matching events' in count.text and 'id="counted-from"' in count.text
        else:
            assert 'id="result-count">152 matching events</p>' in page.text
        seen, _ = await follow(web, f"/audit?q=needle&agent=alpha&before={found(page.text)[-1]}", "next")
        assert [number[s] for s in found(page.text) + seen] == expected
