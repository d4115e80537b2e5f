"""Hostile query strings and bodies get a 400 that names what was wrong, never a 500."""

from __future__ import annotations

from pathlib import Path

from tests.harness import held_call, running_gateway
from tests.web.support import browser_client, sign_in, web_config


async def test_out_of_range_pages_dates_and_deeply_nested_bodies_get_a_400_that_names_the_problem(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with (
        running_gateway(tmp_path, sqlite_url, config=web_config()) as h,
        browser_client(h.base_url) as web,
        held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, _),
    ):
        await sign_in(web, "alice")
        for path, parameter in (
            ("/audit?before=" + "9" * 40, "before"),
            ("/audit?after=99999999999999999999", "after"),
            ("/audit?until=9999-12-31", "until"),
            ("/audit/export.csv?until=9999-12-31", "until"),
            ("/audit/export.json?since=9999-12-31T23:59:59-14:00", "since"),
        ):
            response = await web.get(path)
            assert response.status_code == 400, (path, response.status_code)
            assert parameter in response.text, path

        api = h.api()
        for depth, problem in ((100_000, "larger than"), (20_000, "nested")):
            deep = '{"reason": ' + "[" * depth + "]" * depth + "}"
            response = await api.post(
                f"/api/approvals/{request['id']}/reject", content=deep, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, depth
            assert problem in response.json()["detail"], depth
        shown = await api.get(f"/api/approvals/{request['id']}")
        assert shown.json()["status"] == "pending", "a refused body decides nothing"
        await api.post(f"/api/approvals/{request['id']}/reject", json={"reason": "done"})
