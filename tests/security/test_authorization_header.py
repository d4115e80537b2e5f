"""One Authorization header, read the same way by the approver API and by /mcp."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.harness import AGENT_TOKEN, ALICE_TOKEN, running_gateway


async def test_a_request_with_two_authorization_headers_is_refused_by_the_api_and_by_mcp(
    tmp_path: Path, sqlite_url: str
) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "two-headers", "version": "1"},
        },
    }
    mcp_headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(base_url=h.base_url) as http:
        for first, second in (("Bearer not-a-token", None), (None, "Bearer not-a-token")):
            api_pair = [
                ("Authorization", first or f"Bearer {ALICE_TOKEN}"),
                ("Authorization", second or f"Bearer {ALICE_TOKEN}"),
            ]
            response = await http.get("/api/approvals", headers=api_pair)
            assert response.status_code == 401, api_pair
            assert "exactly one Authorization header" in response.json()["detail"]

            mcp_pair = [
                ("Authorization", first or f"Bearer {AGENT_TOKEN}"),
                ("Authorization", second or f"Bearer {AGENT_TOKEN}"),
            ]
            response = await http.post("/mcp", json=initialize, headers=[*mcp_headers.items(), *mcp_pair])
            assert response.status_code == 401, mcp_pair
            assert "exactly one Authorization header" in response.json()["detail"]

        # One header still works on both.
        assert (await http.get("/api/approvals", headers={"Authorization": f"Bearer {ALICE_TOKEN}"})).status_code == 200
        one = await http.post(
            "/mcp", json=initialize, headers={**mcp_headers, "Authorization": f"Bearer {AGENT_TOKEN}"}
        )
        assert one.status_code == 200
