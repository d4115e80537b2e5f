"""The audit CSV export: no cell an agent wrote can run as a spreadsheet formula."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tests.harness import running_gateway
from tests.security.support import held_policy
from tests.web.support import browser_client, sign_in, web_config


async def test_the_audit_csv_neutralises_every_formula_prefix(tmp_path: Path, sqlite_url: str) -> None:
    names = [
        "=1+1",
        "+1+1",
        "-1+1",
        "@SUM(1)",
        " =1+1",
        "\t=1+1",
        "\n=1+1",
        "\r=1+1",
        "\uff1d1+1",
        "\uff0b1+1",
        "\uff0d1+1",
        "\uff20SUM(1)",
        "\u3000=1+1",
    ]
    async with (
        running_gateway(tmp_path, sqlite_url, policy=held_policy(), config=web_config()) as h,
        h.agent() as agent,
        browser_client(h.base_url) as web,
    ):
        for name in names:
            # Unknown tools are refused, and the refusal is audited under the name the agent gave.
            assert (await agent.call_tool(name, {})).is_error
        await sign_in(web, "alice")
        export = await web.get("/audit/export.csv")
        assert export.status_code == 200
        rows = list(csv.DictReader(io.StringIO(export.text)))
        tools = {row["tool"] for row in rows}
        for name in names:
            assert "'" + name in tools, f"{name!r} is exported as {sorted(t for t in tools if name.strip() in t)}"
        for row in rows:
            for column, cell in row.items():
                if column != "seq" and cell:
                    visible = cell.lstrip()
                    assert cell[0] == "'" or (cell == visible and visible[0] not in "=+-@\uff1d\uff0b\uff0d\uff20"), (
                        column,
                        cell,
                    )
