"""The `countersign` command: approvals through a running gateway, init, policy check/explain, serve errors."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from argon2 import PasswordHasher

from approvals.approvers import token_digest
from gateway import cli
from gateway.config import ConfigError, load_settings
from gateway.demo import DEMO_POLICY
from tests.harness import ALICE_TOKEN, BOB_TOKEN, CAROL_TOKEN, held_call, running_gateway

DATA_POLICIES = Path(__file__).resolve().parents[1] / "data" / "policies"
CANCEL = {"orderId": 1001, "confirm": True}


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def run_beside_server(args: Sequence[str]) -> tuple[int, str, str]:
    """The CLI is synchronous; run it in a thread so the gateway keeps serving in this loop.

    Output is redirected rather than taken with capsys: uvicorn's log handlers keep the stderr they
    were created with, and capsys closes its stream when the test ends.
    """
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return cli.main(list(args))

    code = await anyio.to_thread.run_sync(call)
    return code, out.getvalue(), err.getvalue()


# ---- approvals


async def test_approvals_list_show_and_approve_release_the_waiting_agents_call(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        connect = ["--url", h.base_url, "--token", ALICE_TOKEN]
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome):
            code, out, err = await run_beside_server(["approvals", "list", *connect])
            assert code == 0, err
            header, row, summary = out.splitlines()
            assert header.split() == ["ID", "STATUS", "TOOL", "AGENT", "EXPIRES", "(UTC)", "ARGUMENTS"]
            assert row.split()[:4] == [request["id"], "pending", "ibkr_cancel_order", "alpha"]
            assert '{"confirm":true,"orderId":1001}' in row
            assert summary.strip() == request["summary"]
            assert summary.strip().startswith("Waiting for approval by group:traders until ")

            code, out, err = await run_beside_server(["approvals", "show", request["id"], *connect])
            assert code == 0, err
            assert out.startswith(f"{request['id']}  PENDING")
            assert f"now        {request['summary']}" in out
            assert "why held   Cancelling a live order needs a human." in out
            assert "approvers  group:traders (quorum 1)" in out
            assert '"orderId": 1001' in out
            assert "request.created" in out

            code, out, err = await run_beside_server(
                ["approvals", "approve", request["id"], "--reason", "checked with the desk", *connect]
            )
            assert code == 0, err
            decided, now = out.strip().splitlines()
            assert decided == "approved by alice: checked with the desk"
            assert now == "Approved by alice; forwarding it to paper for the waiting agent."

        result = outcome["result"]
        assert not result.is_error, text(result)
        assert result.structured_content is not None and result.structured_content["orderId"] == 1001
        assert h.book.cancel_calls == 1

        code, out, _ = await run_beside_server(["approvals", "list", *connect])
        assert (code, out.strip()) == (0, "no requests")
        code, out, _ = await run_beside_server(["approvals", "list", "--status", "all", "--json", *connect])
        assert code == 0
        [listed] = json.loads(out)["approvals"]
        assert (listed["id"], listed["status"], listed["decided_by"]) == (request["id"], "executed", "alice")


async def test_approvals_show_list_and_approve_say_when_an_approved_call_waits_for_its_agent(
    tmp_path: Path, sqlite_url: str
) -> None:
    document = json.loads(json.dumps(DEMO_POLICY))
    document["tools"]["ibkr_cancel_order"]["approval"]["max_hold"] = "0.5s"
    async with running_gateway(tmp_path, sqlite_url, policy=document) as h, h.agent() as agent:
        connect = ["--url", h.base_url, "--token", ALICE_TOKEN]
        pending = await agent.call_tool("ibkr_cancel_order", CANCEL)
        assert text(pending).startswith("[APPROVAL PENDING]"), text(pending)
        [request] = await h.pending()
        assert request["agent_waiting"] is False

        code, out, err = await run_beside_server(["approvals", "approve", request["id"], *connect])
        assert code == 0, err
        decided, now = out.strip().splitlines()
        assert decided == "approved by alice"
        assert now.startswith("Approved by alice; it runs when the agent comes back, until ")
        assert now.endswith(" UTC.")

        code, out, err = await run_beside_server(["approvals", "show", request["id"], *connect])
        assert code == 0, err
        assert out.startswith(f"{request['id']}  APPROVED\n  now        {now}\n")

        code, out, err = await run_beside_server(["approvals", "list", "--status", "approved", *connect])
        assert code == 0, err
        _, row, summary = out.splitlines()
        assert row.split()[:2] == [request["id"], "approved"]
        assert summary.strip() == now
        assert h.book.cancel_calls == 0, "nothing ran: the agent is away"


async def test_approvals_reject_reads_the_url_and_token_from_the_environment_and_tells_the_agent_why(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        monkeypatch.setenv("COUNTERSIGN_URL", h.base_url)
        monkeypatch.setenv("COUNTERSIGN_API_TOKEN", BOB_TOKEN)
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, outcome):
            code, out, err = await run_beside_server(
                ["approvals", "reject", request["id"], "--reason", "that order protects a position"]
            )
            assert code == 0, err
            decided, now = out.strip().splitlines()
            assert decided == "rejected by bob: that order protects a position"
            assert now == "Rejected by bob: that order protects a position. The call was not executed."

        assert (
            text(outcome["result"])
            == "[APPROVAL REJECTED] Rejected by bob: that order protects a position. The call was not executed."
        )
        assert h.book.cancel_calls == 0


async def test_approvals_finds_the_gateway_through_the_config_files_public_url_without_the_gateways_secrets(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        config = tmp_path / "countersign.toml"
        # The gateway's own secrets are not the approver's business: the CLI must not need them.
        config.write_text(
            f'[server]\npublic_url = "{h.base_url}"\n\n'
            '[[agents]]\nname = "alpha"\ntoken = "${AGENT_SECRET_ONLY_THE_GATEWAY_HAS}"\n'
        )
        monkeypatch.delenv("AGENT_SECRET_ONLY_THE_GATEWAY_HAS", raising=False)
        monkeypatch.delenv("COUNTERSIGN_URL", raising=False)
        monkeypatch.setenv("COUNTERSIGN_API_TOKEN", ALICE_TOKEN)

        code, out, err = await run_beside_server(["approvals", "list", "--config", str(config)])

        assert (code, out.strip()) == (0, "no requests"), err


async def test_approvals_errors_say_what_the_gateway_answered_and_exit_non_zero(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        url = ["--url", h.base_url]
        async with held_call(h, "ibkr_cancel_order", CANCEL) as (request, _):
            code, _, err = await run_beside_server(
                ["approvals", "approve", request["id"], *url, "--token", CAROL_TOKEN]
            )
            assert code == 1
            assert err.startswith("error: 403 Forbidden: carol may not decide request")

            code, _, err = await run_beside_server(
                ["approvals", "approve", request["id"], *url, "--token", ALICE_TOKEN]
            )
            assert code == 0, err

        code, _, err = await run_beside_server(
            ["approvals", "reject", request["id"], "--reason", "late", *url, "--token", BOB_TOKEN]
        )
        assert code == 1
        assert err.startswith(f"error: 409 Conflict: request {request['id']} is already ")
        assert "by alice at " in err

        code, _, err = await run_beside_server(["approvals", "show", "apr_nope", *url, "--token", BOB_TOKEN])
        assert (code, err.strip()) == (1, "error: 404 Not Found: no approval request with id 'apr_nope'")

        code, _, err = await run_beside_server(["approvals", "list", *url, "--token", "wrong-token"])
        assert code == 1
        assert err.startswith("error: 401 Unauthorized: ")


def test_approvals_without_a_token_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COUNTERSIGN_API_TOKEN", raising=False)
    code, _, err = run(capsys, "approvals", "list", "--url", "http://127.0.0.1:9")
    assert code == 2
    assert "--token or COUNTERSIGN_API_TOKEN" in err


def test_approvals_against_a_gateway_that_is_not_running_says_it_cannot_reach_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.harness import bound_socket

    with bound_socket() as closed:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        code, _, err = run(capsys, "approvals", "list", "--url", url, "--token", ALICE_TOKEN)
    assert code == 1
    assert err.startswith(f"error: cannot reach {url}")


# ---- init


def test_init_writes_a_starter_config_and_policy_that_load_and_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "fresh"
    code, out, err = run(capsys, "init", "--dir", str(folder))
    assert code == 0, err
    assert f"wrote {folder / 'countersign.toml'}" in out
    assert f"wrote {folder / 'policy.json'}" in out

    config_text = (folder / "countersign.toml").read_text()
    assert config_text.count("\n#") > 10, "the starter file explains itself in comments"

    with pytest.raises(ConfigError) as missing:
        load_settings(folder / "countersign.toml", environ={})
    assert missing.value.path == "agents[0].token"
    assert "COUNTERSIGN_AGENT_TOKEN" in missing.value.message

    settings = load_settings(folder / "countersign.toml", environ={"COUNTERSIGN_AGENT_TOKEN": "a-long-agent-secret"})
    assert settings.policy_path == folder / "policy.json"
    assert settings.database_url == f"sqlite:///{folder / 'countersign.db'}"
    assert [a.name for a in settings.agents] == ["trading-agent"]
    [approver] = settings.approvers
    assert "traders" in approver.groups, "the starter policy holds cancels for group:traders"
    token = out.split("API token (shown once; the file keeps only its SHA-256): ", 1)[1].split()[0]
    assert len(token) >= 24, "init generates a real API token"
    assert approver.to_approver().api_token_sha256 == token_digest(token)
    assert token not in config_text, "the token itself is a secret and stays out of the file"

    code, out, err = run(capsys, "policy", "check", str(settings.policy_path))
    assert code == 0, err
    assert "valid" in out
    assert "warning" not in err


def test_init_does_not_overwrite_existing_files_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "init", "--dir", str(tmp_path))[0] == 0
    (tmp_path / "countersign.toml").write_text("# mine\n")

    code, _, err = run(capsys, "init", "--dir", str(tmp_path))
    assert code == 1
    assert "already exist" in err and "--force" in err
    assert (tmp_path / "countersign.toml").read_text() == "# mine\n"

    assert run(capsys, "init", "--dir", str(tmp_path), "--force")[0] == 0
    assert (tmp_path / "countersign.toml").read_text() != "# mine\n"


def test_two_inits_generate_different_approver_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"COUNTERSIGN_AGENT_TOKEN": "a-long-agent-secret"}
    digests = []
    for name in ("one", "two"):
        assert run(capsys, "init", "--dir", str(tmp_path / name))[0] == 0
        digests.append(load_settings(tmp_path / name / "countersign.toml", environ=env).approvers[0].api_token_sha256)
    assert digests[0] != digests[1]


# ---- policy check / explain


def test_policy_check_accepts_a_valid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(DEMO_POLICY))
    code, out, err = run(capsys, "policy", "check", str(path))
    assert code == 0
    assert out.startswith(f"{path}: valid")
    assert err == ""


@pytest.mark.parametrize(
    ("document", "path", "words"),
    [
        ({"version": "1", "default": "maybe"}, "default", 'expected "allow" or "deny"'),
        (
            {"version": "1", "default": "deny", "tools": {"x": {"require_aproval": []}}},
            'tools["x"].require_aproval',
            "unknown key",
        ),
        (
            {
                "version": "1",
                "default": "deny",
                "tools": {"x": {"deny_if": [{"conditions": [{"path": "args.a", "op": "bigger", "value": 1}]}]}},
            },
            'tools["x"].deny_if[0].conditions[0].op',
            "unknown op 'bigger'",
        ),
        (
            {"version": "1", "default": "deny", "tools": {"x": {"approval": {"approvers": ["group:"]}}}},
            'tools["x"].approval.approvers[0]',
            "needs a group name",
        ),
        (
            {"version": "1", "default": "deny", "tools": {"x": {"approval": {"timeout": "soon"}}}},
            'tools["x"].approval.timeout',
            "invalid duration",
        ),
    ],
)
def test_policy_check_refuses_a_bad_policy_with_the_path_of_the_bad_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], document: dict[str, Any], path: str, words: str
) -> None:
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(document))
    code, out, err = run(capsys, "policy", "check", str(file))
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: {file}: {path}: ")
    assert words in err


def test_policy_check_refuses_a_file_that_is_not_json_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "policy.json"
    file.write_text('{"version": "1",\n  "default": deny}\n')
    code, _, err = run(capsys, "policy", "check", str(file))
    assert code == 1
    assert "invalid JSON at line 2" in err


def test_policy_check_warns_when_a_deny_if_message_asks_for_approval(capsys: pytest.CaptureFixture[str]) -> None:
    file = DATA_POLICIES / "policylayer-ibkr-cancel-order.json"
    code, out, err = run(capsys, "policy", "check", str(file))
    assert code == 0, "a warning is not an error"
    assert "valid" in out and "with warnings" in out
    assert err.startswith(f'warning: {file}: tools["ibkr_cancel_order"].deny_if[0]: ')
    assert "require_approval" in err

    assert run(capsys, "policy", "check", "--strict", str(file))[0] == 1


def test_policy_check_warns_about_rules_an_agent_skips_and_reads_the_tools_schemas_with_tools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = {
        "deny_if": [{"conditions": [{"path": "args.order.totalQuantity", "op": "gt", "value": 1000}]}],
        "require_approval": [{"conditions": [{"path": "args.dry_run", "op": "eq", "value": False}]}],
    }
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "deny", "tools": {"ibkr_place_order": rules}}))
    schema = {
        "type": "object",
        "properties": {"order": {"type": "object"}, "dry_run": {"type": "boolean", "default": True}},
        "required": ["order"],
    }
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"tools": [{"name": "ibkr_place_order", "inputSchema": schema}]}))

    code, out, err = run(capsys, "policy", "check", str(policy))
    assert code == 0 and "with warnings" in out
    assert f'warning: {policy}: tools["ibkr_place_order"].deny_if[0].conditions[0]: an agent skips' in err
    assert 'tools["ibkr_place_order"].require_approval[0].conditions[0]' in err

    code, out, err = run(capsys, "policy", "check", "--strict", "--tools", str(tools), str(policy))
    assert code == 1
    assert "deny_if[0].conditions[0]" in err
    assert "require_approval" not in err, "the schema gives dry_run a default, so it is always there"

    (tmp_path / "bad.json").write_text('{"tools": [{"name": "x"}]}')
    code, _, err = run(capsys, "policy", "check", "--tools", str(tmp_path / "bad.json"), str(policy))
    assert code == 2
    assert "tools[0] needs a string 'name' and an object 'inputSchema'" in err


def test_policy_explain_with_tools_evaluates_left_out_fields_with_the_schemas_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(DEMO_POLICY))
    schema = {"type": "object", "properties": {"dry_run": {"type": "boolean", "default": True}}}
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "ibkr_place_order", "inputSchema": schema}]))
    arguments = '{"order": {"totalQuantity": 5}}'

    assert "decision: hold" in run(capsys, "policy", "explain", str(policy), "ibkr_place_order", arguments)[1]
    code, out, _ = run(capsys, "policy", "explain", "--tools", str(tools), str(policy), "ibkr_place_order", arguments)
    assert code == 0
    assert "decision: allow" in out


@pytest.mark.parametrize(
    ("tool", "arguments", "lines"),
    [
        (
            "ibkr_cancel_order",
            '{"orderId": 1001, "confirm": true}',
            [
                "decision: hold",
                'rule: tools["ibkr_cancel_order"].require_approval[0]',
                "reason: Cancelling a live order needs a human.",
                "  approvers: group:traders",
                "  timeout: 15m",
            ],
        ),
        (
            "ibkr_place_order",
            '{"order": {"totalQuantity": 5000}}',
            [
                "decision: deny",
                'rule: tools["ibkr_place_order"].deny_if[0]',
                "message: Orders above 1000 shares are not allowed.",
            ],
        ),
        (
            "ibkr_place_order",
            '{"dry_run": true, "order": {"totalQuantity": 5}}',
            ["decision: allow", 'rule: tools["ibkr_place_order"]'],
        ),
        ("ibkr_get_portfolio", "{}", ["decision: allow", 'tool: ibkr_get_portfolio (matches tools["ibkr_get_*"])']),
        ("ibkr_global_cancel", "{}", ["decision: hidden", "rule: hide"]),
        ("ibkr_transfer_funds", "{}", ["decision: deny", "rule: default"]),
    ],
)
def test_policy_explain_prints_the_decision_and_the_rule_that_made_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tool: str, arguments: str, lines: list[str]
) -> None:
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(DEMO_POLICY))
    code, out, err = run(capsys, "policy", "explain", str(file), tool, arguments)
    assert code == 0, err
    printed = out.splitlines()
    for line in lines:
        assert line in printed, f"{line!r} not in:\n{out}"


def test_policy_explain_refuses_arguments_that_are_not_a_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "policy.json"
    file.write_text(json.dumps(DEMO_POLICY))
    code, _, err = run(capsys, "policy", "explain", str(file), "ibkr_cancel_order", "{orderId: 1001}")
    assert code == 2
    assert "ARGS-JSON is not valid JSON" in err
    code, _, err = run(capsys, "policy", "explain", str(file), "ibkr_cancel_order", "[1001]")
    assert code == 2
    assert "must be a JSON object" in err


# ---- serve and the rest


def test_serve_with_a_bad_config_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "countersign.toml"
    config.write_text("[server]\nport = 8080\nprot = 8081\n")
    code, out, err = run(capsys, "serve", "--config", str(config))
    assert code == 2
    assert (
        err.strip() == f"error: {config}: server.prot: unknown key (check the spelling against docs/configuration.md)"
    )
    assert out == ""


def test_serve_with_an_invalid_policy_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.json").write_text('{"version": "1", "default": "maybe"}')
    config = tmp_path / "countersign.toml"
    config.write_text(f'[server]\ndatabase_url = "sqlite:///{tmp_path / "cs.db"}"\n[policy]\nfile = "policy.json"\n')
    code, _, err = run(capsys, "serve", "--config", str(config))
    assert code == 2
    assert err.strip() == f'error: {tmp_path / "policy.json"}: default: expected "allow" or "deny", not \'maybe\''


def test_hash_password_prints_an_argon2_hash_of_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "hash-password", "--password", "correct horse")
    assert code == 0
    assert PasswordHasher().verify(out.strip(), "correct horse")
