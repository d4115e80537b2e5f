"""`countersign tools` against the paper broker: names, annotations and the policy's verdict for each."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.demo import DEMO_POLICY
from gateway.policy import parse_policy
from gateway.tool_report import verdict
from tests.harness import bound_socket


def write_config(folder: Path, upstream: str) -> Path:
    (folder / "policy.json").write_text(json.dumps(DEMO_POLICY))
    config = folder / "countersign.toml"
    config.write_text(
        '[policy]\nfile = "policy.json"\n\n'
        f"[[upstreams]]\n{upstream}\n\n"
        # The agents' secrets are not needed to list tools.
        '[[agents]]\nname = "alpha"\ntoken = "${AN_AGENT_TOKEN_THIS_COMMAND_DOES_NOT_NEED}"\n'
    )
    return config


def paper_broker(folder: Path) -> Path:
    command = json.dumps([sys.executable, "-m", "gateway.paper_broker"])
    return write_config(folder, f'name = "paper"\ncommand = {command}')


def rows(out: str) -> dict[str, list[str]]:
    """Table rows by tool name, plus each row's indented notes under the key 'NAME notes'."""
    found: dict[str, list[str]] = {}
    last = ""
    for line in out.splitlines():
        if line.startswith("    ") and last:
            found.setdefault(f"{last} notes", []).append(line.strip())
        elif line.startswith("ibkr_"):
            last = line.split()[0]
            found[last] = line.split()
        else:
            last = ""
    return found


def test_the_table_shows_each_tools_hints_and_what_the_policy_does_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["tools", "--config", str(paper_broker(tmp_path))])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0].split() == ["TOOL", "UPSTREAM", "RO", "DESTR", "IDEMP", "OPEN", "POLICY", "RULE"]
    table = rows(out)
    assert table["ibkr_get_portfolio"] == [
        "ibkr_get_portfolio", "paper", "yes", "no", "yes", "yes", "limited", 'tools["ibkr_get_*"]'
    ]  # fmt: skip
    assert table["ibkr_cancel_order"][:7] == ["ibkr_cancel_order", "paper", "no", "yes", "yes", "yes", "hold"]
    assert table["ibkr_cancel_order"][7] == 'tools["ibkr_cancel_order"].require_approval[0]'
    assert table["ibkr_global_cancel"][6:] == ["hide", "hide"]
    assert table["ibkr_place_order"][6:] == ["limited", 'tools["ibkr_place_order"]']
    assert table["ibkr_place_order notes"] == [
        'deny if args.order.totalQuantity gt 1000 (tools["ibkr_place_order"].deny_if[0])',
        'deny unless args.order.totalQuantity exists true (tools["ibkr_place_order"].require[0])',
        'hold if args.dry_run neq true (tools["ibkr_place_order"].require_approval[0])',
        "limit: at most 120 calls per minute per agent (all_tools.limits[0])",
    ]
    assert "deny refuses the call but the tool is still listed to agents" in out


def test_json_output_judges_by_another_policy_file_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = tmp_path / "draft.json"
    draft.write_text(json.dumps({"version": "1", "default": "deny", "tools": {"ibkr_get_*": {}}}))

    code = cli.main(["tools", "--config", str(paper_broker(tmp_path)), "--policy", str(draft), "--json"])
    out, err = capsys.readouterr()

    assert code == 0, err
    report = json.loads(out)
    assert report["policy"] == str(draft)
    [upstream] = report["upstreams"]
    assert (upstream["name"], upstream["error"]) == ("paper", None)
    tools: dict[str, Any] = {tool["name"]: tool for tool in upstream["tools"]}
    assert tools["ibkr_get_open_orders"]["annotations"] == {
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": True,
    }
    assert tools["ibkr_get_open_orders"]["policy"]["action"] == "allow"
    assert tools["ibkr_cancel_order"]["policy"] == {
        "action": "deny",
        "rule": "default",
        "depends_on_arguments": [],
        "limits": [],
    }


def test_an_upstream_that_cannot_be_reached_is_named_and_the_exit_status_is_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with bound_socket() as closed:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/mcp"
        config = write_config(tmp_path, f'name = "gone"\nurl = "{url}"\nconnect_timeout = "1s"')
        code = cli.main(["tools", "--config", str(config)])
    out, _ = capsys.readouterr()

    assert code == 1
    assert "upstream gone: not reached (" in out


@pytest.mark.parametrize(
    ("tool", "action", "rule"),
    [
        ("ibkr_transfer_funds", "deny", "default"),
        ("ibkr_global_cancel", "hide", "hide"),
        ("countersign_approval_wait", "hide", "reserved: the gateway's own tool of that name is offered instead"),
    ],
)
def test_the_verdict_for_tools_the_policy_refuses(tool: str, action: str, rule: str) -> None:
    decided = verdict(parse_policy(DEMO_POLICY), tool)
    assert (decided.action, decided.rule) == (action, rule)


def test_a_require_rule_reads_as_a_denial_unless_its_conditions_hold() -> None:
    policy = parse_policy(
        {
            "version": "1",
            "default": "allow",
            "all_tools": {"require": [{"conditions": [{"path": "args.account", "op": "exists", "value": True}]}]},
            "tools": {"wipe": {"deny_if": [{"conditions": [], "on_deny": "never"}]}},
        }
    )
    assert verdict(policy, "anything").depends == ("deny unless args.account exists true (all_tools.require[0])",)
    assert (verdict(policy, "wipe").action, verdict(policy, "wipe").rule) == ("deny", 'tools["wipe"].deny_if[0]')
