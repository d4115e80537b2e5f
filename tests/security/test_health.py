"""/healthz: a status for anyone, the deployment's details for approvers."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.harness import AGENT_TOKEN, ALICE_TOKEN, running_gateway


async def test_healthz_shows_details_only_to_an_approver(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(base_url=h.base_url) as http:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Bearer {AGENT_TOKEN}"}):
            response = await http.get("/healthz", headers=headers)
            assert response.status_code == 200
            assert response.json() == {"status": "ok"}, headers

        details = (await http.get("/healthz", headers={"Authorization": f"Bearer {ALICE_TOKEN}"})).json()
        assert details["status"] == "ok" and details["database"] == "ok"
        assert [u["name"] for u in details["upstreams"]] == ["paper"]
