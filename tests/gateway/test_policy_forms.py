"""PolicyLayer's short forms (`action`, `reason`, `rate_limit`) and the identity and world checks of the
policy CLI: what loads, what it means to an agent's MCP client, and what `countersign policy` says."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from gateway import cli
from gateway.policy import PolicyError, parse_policy
from tests.harness import bound_socket, running_gateway

SHORT_FORMS = {
    "version": "1",
    "default": "deny",
    "tools": {
        "ibkr_get_portfolio": {"action": "allow", "rate_limit": {"max": 2, "window": 60}},
        "ibkr_get_open_orders": {"action": "allow"},
        "ibkr_cancel_order": {"action": "deny", "reason": "Cancels are made by the desk, not by agents."},
    },
}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_a_deny_with_a_reason_refuses_with_that_reason_and_a_rate_limit_counts_per_session(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=SHORT_FORMS) as h:
        async with h.agent() as agent:
            refused = await agent.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})
            assert text(refused) == "[POLICY DENIED] Cancels are made by the desk, not by agents."
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
            for _ in range(2):
                assert not (await agent.call_tool("ibkr_get_portfolio", {})).is_error
            limited = await agent.call_tool("ibkr_get_portfolio", {})
            assert limited.is_error
            assert text(limited).startswith(
                "[RATE LIMITED] ibkr_get_portfolio: at most 2 calls per 60 seconds per session"
            )
        # Another session of the same agent has a quota of its own.
        async with h.agent() as again:
            assert not (await again.call_tool("ibkr_get_portfolio", {})).is_error
        assert h.book.cancel_calls == 0


def test_the_short_forms_mean_the_long_ones() -> None:
    policy = parse_policy(SHORT_FORMS)
    cancel = policy.evaluate("ibkr_cancel_order", {"orderId": 1})
    assert (cancel.action, cancel.rule) == ("deny", 'tools["ibkr_cancel_order"].action')
    [limit] = policy.evaluate("ibkr_get_portfolio", {}).limits
    assert (limit.max, limit.window_seconds, limit.scope) == (2, 60.0, "session")
    assert limit.describe() == "at most 2 calls per 60 seconds per session"
    assert policy.evaluate("ibkr_get_open_orders", {}).action == "allow"
    # Without a reason, the refusal names the rule.
    bare = parse_policy({"version": "1", "default": "allow", "tools": {"x": {"action": "deny"}}})
    assert bare.evaluate("x", {}).message == 'denied by policy rule tools["x"].action'


@pytest.mark.parametrize(
    ("tool", "path", "words"),
    [
        ({"action": "hold"}, 'tools["x"].action', 'expected "allow" or "deny"'),
        ({"action": "allow", "reason": "why"}, 'tools["x"].reason', 'is the message of "action": "deny"'),
        ({"action": "deny", "reason": ""}, 'tools["x"].reason', "non-empty string"),
        ({"rate_limit": {"max": 10}}, 'tools["x"].rate_limit.window', "missing"),
        ({"rate_limit": {"max": 10, "window": "1m"}}, 'tools["x"].rate_limit.window', "number of seconds"),
        ({"rate_limit": {"max": 0, "window": 60}}, 'tools["x"].rate_limit.max', "whole number >= 1"),
        ({"rate_limit": {"max": 1, "window": 60, "per": "agent"}}, 'tools["x"].rate_limit.per', "unknown key"),
        (
            {"deny_if": [{"conditions": [{"path": "agent.groups", "op": "eq", "value": "ops"}]}]},
            'tools["x"].deny_if[0].conditions[0].op',
            "op 'eq' cannot test agent.groups; use contains",
        ),
        (
            {"deny_if": [{"conditions": [{"path": "agent.name", "op": "eq", "value": 7}]}]},
            'tools["x"].deny_if[0].conditions[0].value',
            "agent.name is compared with an agent name",
        ),
        (
            {"deny_if": [{"conditions": [{"path": "agent.role", "op": "eq", "value": "x"}]}]},
            'tools["x"].deny_if[0].conditions[0].path',
            "'agent.name' or 'agent.groups'",
        ),
        (
            {"require_approval": [{"conditions": [], "approval": {"agent_reason": "required"}}]},
            'tools["x"].require_approval[0].approval.agent_reason',
            "belongs to the tool's approval block",
        ),
        (
            {"require_approval": [{"conditions": [], "approval": {"quorum": 0}}]},
            'tools["x"].require_approval[0].approval.quorum',
            "whole number >= 1",
        ),
    ],
)
def test_a_bad_short_form_or_identity_rule_is_refused_with_its_path(
    tool: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy({"version": "1", "default": "deny", "tools": {"x": tool}})
    assert raised.value.path == path
    assert words in raised.value.message


def test_a_policylayer_deny_whose_reason_asks_for_a_human_is_pointed_at_require_approval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "policy.json"
    file.write_text(
        json.dumps(
            {**SHORT_FORMS, "tools": {"ibkr_cancel_order": {"action": "deny", "reason": "Requires human approval."}}}
        )
    )
    code, _, err = run(capsys, "policy", "check", str(file))
    assert code == 0, err
    assert 'tools["ibkr_cancel_order"].action: "action": "deny" refuses every call, yet its reason' in err
    assert "write a require_approval rule" in err


def test_policy_explain_judges_a_named_agent_and_shows_the_approvers_its_rule_chose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "policy.json"
    rule = {"conditions": [{"path": "agent.groups", "op": "contains", "value": "interns"}], "reason": "Interns ask."}
    file.write_text(
        json.dumps(
            {
                "version": "1",
                "default": "allow",
                "tools": {
                    "send": {
                        "require_approval": [{**rule, "approval": {"approvers": ["mentor"], "timeout": "5m"}}],
                        "approval": {"approvers": ["group:ops"], "timeout": "1h"},
                    }
                },
            }
        )
    )
    code, out, _ = run(capsys, "policy", "explain", str(file), "send", "--agent", "kim", "--group", "interns")
    assert code == 0
    assert "decision: hold" in out and "agent: kim (groups: interns)" in out
    assert "  approvers: mentor" in out and "  timeout: 5m" in out
    code, out, _ = run(capsys, "policy", "explain", str(file), "send", "--agent", "lee")
    assert "decision: allow" in out


def write_world(folder: Path, policy: dict[str, Any], unreachable_url: str) -> Path:
    (folder / "policy.json").write_text(json.dumps(policy))
    broker = json.dumps([sys.executable, "-m", "gateway.paper_broker"])
    config = folder / "countersign.toml"
    config.write_text(
        '[policy]\nfile = "policy.json"\n\n'
        f'[[upstreams]]\nname = "paper"\ncommand = {broker}\n\n'
        f'[[upstreams]]\nname = "gone"\nurl = "{unreachable_url}"\nconnect_timeout = "1s"\nprefix = "gone_"\n\n'
        '[[agents]]\nname = "alpha"\ntoken = "agent-token-alpha"\ngroups = ["traders"]\n\n'
        '[[approvers]]\nname = "alice"\ngroups = ["traders"]\n'
    )
    return config


def test_policy_check_with_the_config_names_tools_approvers_and_groups_that_do_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = {
        "version": "1",
        "default": "deny",
        "hide": ["ibkr_global_cancel", "ibkr_withdraw_everything"],
        "tools": {
            "ibkr_get_*": {},
            "ibkr_cancel_ordr": {"action": "deny"},
            "ibkr_transfer_*": {},
            "ibkr_cancel_order": {
                "deny_if": [{"conditions": [{"path": "agent.groups", "op": "contains", "value": "interns"}]}],
                "require_approval": [
                    {
                        "conditions": [{"path": "agent.name", "op": "eq", "value": "alpha"}],
                        "approval": {"approvers": ["dave"]},
                    }
                ],
                "approval": {"approvers": ["alice", "group:nobody"]},
            },
        },
    }
    with bound_socket() as closed:
        config = write_world(tmp_path, policy, f"http://127.0.0.1:{closed.getsockname()[1]}/mcp")
        code, out, err = run(capsys, "policy", "check", "--config", str(config))
        strict, _, _ = run(capsys, "policy", "check", "--strict", "--config", str(config))
    assert code == 0, err
    assert strict == 1
    assert out.startswith(f"{tmp_path / 'policy.json'}: valid") and "with warnings" in out
    warnings = {line.split(": ", 3)[2]: line.split(": ", 3)[3] for line in err.splitlines()}
    assert warnings["upstreams[gone]"].startswith("not reached (")
    assert (
        warnings['tools["ibkr_cancel_ordr"]']
        == "no upstream offers a tool named 'ibkr_cancel_ordr' (not reached: gone)"
    )
    assert warnings['tools["ibkr_transfer_*"]'] == "the pattern matches no upstream's tool (not reached: gone)"
    assert "no upstream offers a tool named 'ibkr_withdraw_everything'" in warnings["hide[1]"]
    assert warnings['tools["ibkr_cancel_order"].approval.approvers[1]'].startswith(
        "no configured approver is in group 'nobody'"
    )
    assert warnings['tools["ibkr_cancel_order"].require_approval[0].approval.approvers[0]'].startswith(
        "no approver named 'dave' is configured"
    )
    assert warnings['tools["ibkr_cancel_order"].deny_if[0].conditions[0]'].startswith(
        "no configured agent in group 'interns'"
    )
    # What exists is not mentioned: the paper broker's tools, alice, traders, alpha.
    assert "ibkr_get_" not in err and "'alice'" not in err and "'alpha'" not in err
    assert 'tools["ibkr_cancel_order"]:' not in err


def test_policy_check_needs_a_file_or_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "policy", "check")
    assert code == 2
    assert "name the policy FILE, or give --config" in err


def test_only_refusals_that_no_argument_can_change_count_as_outright() -> None:
    from gateway.identity import AgentIdentity

    policy = parse_policy(
        {
            "version": "1",
            "default": "deny",
            "hide": ["secret"],
            "tools": {
                "trade": {
                    "require": [{"conditions": [{"path": "agent.groups", "op": "contains", "value": "traders"}]}]
                },
                "big": {"deny_if": [{"conditions": [{"path": "args.qty", "op": "gt", "value": 10}]}]},
                "mixed": {
                    "deny_if": [
                        {
                            "conditions": [
                                {"path": "agent.name", "op": "eq", "value": "bot"},
                                {"path": "args.live", "op": "eq", "value": True},
                            ]
                        }
                    ]
                },
                "off": {"action": "deny"},
            },
        }
    )
    bot, trader = AgentIdentity("bot"), AgentIdentity("tess", ("traders",))
    assert [tool for tool in ("secret", "unlisted", "off", "trade") if policy.refuses_outright(tool, bot)] == [
        "secret",
        "unlisted",
        "off",
        "trade",
    ]
    assert not policy.refuses_outright("trade", trader)
    # An argument can let these through.
    assert not policy.refuses_outright("big", bot)
    assert not policy.refuses_outright("mixed", bot)


def test_countersign_tools_says_what_list_only_callable_leaves_out() -> None:
    from gateway.tool_report import as_table

    listed = as_table(parse_policy({**SHORT_FORMS, "list_only_callable": True}), [])
    assert "with list_only_callable, so does a deny that no argument can change" in listed
    assert "still listed to agents" in as_table(parse_policy(SHORT_FORMS), [])
