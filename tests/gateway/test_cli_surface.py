"""The `countersign` command as its docs describe it: help everywhere, the paper broker, config discovery."""

from __future__ import annotations

import io
import re
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from gateway import cli
from gateway.demo import banner, command_name, demo_settings
from tests.harness import ALICE_TOKEN, bound_socket, running_gateway, wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_invocations() -> list[str]:
    """Every `countersign …` invocation in the command table of docs/cli.md."""
    return re.findall(r"^\| `(countersign [^`]+)` \|", (DOCS / "cli.md").read_text(), flags=re.MULTILINE)


def command_words(invocation: str) -> list[str]:
    """The command and subcommand of an invocation: the words before its first option or placeholder."""
    words = []
    for word in invocation.split()[1:]:
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        words.append(word)
    return words


def help_of(words: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*words, "--help"])
    captured = capsys.readouterr()
    assert exited.value.code == 0, f"countersign {' '.join(words)} --help: {captured.err}"
    return captured.out


def test_docs_cli_md_lists_the_commands_this_test_walks() -> None:
    assert len(documented_invocations()) >= 14
    assert any(i.startswith("countersign paper-broker [--http PORT]") for i in documented_invocations())


@pytest.mark.parametrize("invocation", documented_invocations())
def test_every_documented_invocation_has_help_listing_the_options_its_docs_name(
    invocation: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(command_words(invocation), capsys)
    for option in re.findall(r"--[a-z][a-z-]*", invocation):
        assert option in text, f"{option} is documented for `{invocation}` but not in its --help"


def test_every_option_of_every_command_says_what_it_does() -> None:
    undocumented = []

    def walk(parser: cli.argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, cli.argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                undocumented.append(f"{path} {action.option_strings or action.dest}")

    walk(cli.build_parser(), "countersign")
    assert not undocumented, f"options without help text: {undocumented}"


# ---- the paper broker


async def test_paper_broker_with_http_serves_its_tools_to_an_mcp_client() -> None:
    with bound_socket() as probe:
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "gateway.cli", "paper-broker", "--http", str(port)]
    async with await anyio.open_process(command) as process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(20):
                first_line = (await process.stdout.receive()).decode()
            url = f"http://127.0.0.1:{port}/mcp"
            assert first_line.strip() == f"paper broker: {url}"

            async def accepts() -> bool:
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                except OSError:
                    return False
                return True

            await wait_for(accepts, within=20)
            async with Client(url) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
            assert {"ibkr_get_open_orders", "ibkr_cancel_order"} <= names
        finally:
            process.terminate()
            with anyio.fail_after(20):
                await process.wait()


async def test_paper_broker_with_no_trading_refuses_to_trade_over_stdio() -> None:
    server = StdioServerParameters(command=sys.executable, args=["-m", "gateway.cli", "paper-broker", "--no-trading"])
    async with Client(server) as client:
        result = await client.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})
    assert result.is_error
    assert result.structured_content is not None
    assert result.structured_content["error"]["type"] == "TRADING_DISABLED"
    text = " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
    assert "TRADING_DISABLED" in text


# ---- one way to find the configuration; only the secrets a command uses


async def run_cli(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI in a thread (it runs its own event loop) while the gateway serves in this one."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return cli.main(args)

    code = await anyio.to_thread.run_sync(call)
    return code, out.getvalue(), err.getvalue()


async def test_approvals_run_beside_countersign_toml_reads_it_as_serve_does_and_needs_none_of_its_secrets(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        port = h.base_url.rsplit(":", 1)[1]
        folder = tmp_path / "ops"
        folder.mkdir()
        (folder / "countersign.toml").write_text(
            f'[server]\nport = {port}\ndatabase_url = "postgresql://cs:${{DB_PASSWORD}}@db/cs"\n\n'
            '[[agents]]\nname = "alpha"\ntoken = "${AGENT_TOKEN_ONLY_THE_GATEWAY_HAS}"\n\n'
            '[[approvers]]\nname = "alice"\napi_token = "${ALICE_TOKEN_ONLY_THE_GATEWAY_HAS}"\n'
        )
        for name in ("COUNTERSIGN_URL", "COUNTERSIGN_CONFIG", "DB_PASSWORD", "AGENT_TOKEN_ONLY_THE_GATEWAY_HAS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(folder)

        code, out, err = await run_cli(["approvals", "list", "--token", ALICE_TOKEN])

    assert (code, out.strip()) == (0, "no requests"), err


def test_slack_check_needs_only_slacks_own_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "countersign.toml"
    config.write_text(
        '[server]\ndatabase_url = "postgresql://cs:${DB_PASSWORD}@db/cs"\npublic_url = "https://cs.example.com"\n\n'
        '[[upstreams]]\nname = "ibkr"\nurl = "http://127.0.0.1:8000/mcp"\n'
        'headers = { Authorization = "Bearer ${IBKR_TOKEN}" }\n\n'
        '[[agents]]\nname = "alpha"\ntoken = "${AGENT_TOKEN_SLACK_DOES_NOT_USE}"\n\n'
        '[[approvers]]\nname = "alice"\nslack_user = "U0ALICE"\napi_token = "${ALICE_TOKEN}"\n'
    )
    (tmp_path / "policy.json").write_text('{"version": "1", "default": "deny"}')

    code = cli.main(["slack", "check", "--config", str(config)])
    captured = capsys.readouterr()

    assert "environment variable" not in captured.err, captured.err
    assert code == 1, "an incomplete Slack set-up is reported as findings, not as a configuration error"
    assert "FAIL  slack.bot_token: set the bot token" in captured.out


def test_policy_check_says_valid_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "policy.json"
    file.write_text('{"version": "1", "default": "deny", "hide": ["x"], "tools": {"a": {}, "b_*": {}}}')

    code = cli.main(["policy", "check", str(file)])

    assert (code, capsys.readouterr().out) == (0, f'{file}: valid (default "deny", 2 tool entries, 1 hidden)\n')


def test_the_demo_banner_prints_commands_that_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(sys.executable).parent / "countersign"
    if not script.exists():
        pytest.skip(f"no countersign script beside {sys.executable} (not installed with pip)")
    # After scripts/demo the script's folder (.venv/bin) is not on PATH: print a path that runs it.
    monkeypatch.setenv("PATH", str(tmp_path))
    text = banner(demo_settings(tmp_path / "demo"))
    command = command_name()
    assert command != "countersign" and Path(command).resolve() == script.resolve()
    assert f"  {command} approvals list --url http://127.0.0.1:8080 --token demo-approver" in text

    # With the venv activated, the bare name is this very command.
    monkeypatch.setenv("PATH", str(script.parent))
    assert command_name() == "countersign"


def test_init_says_what_the_starter_policy_does_with_tools_it_does_not_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.policy import load_policy
    from gateway.tool_report import verdict

    assert cli.main(["init", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    comment = (tmp_path / "countersign.toml").read_text()
    for text in (out, comment):
        assert 'DENIES EVERY TOOL IT DOES NOT NAME ("default": "deny")'.lower() in text.lower()
        assert "still listed to agents" in text
    assert f"tools --config {tmp_path / 'countersign.toml'}" in out

    # What the comment claims is what the written policy does.
    policy = load_policy(tmp_path / "policy.json")
    assert verdict(policy, "some_tool_nobody_named").action == "deny"
    assert verdict(policy, "ibkr_global_cancel").action == "hide"
    assert verdict(policy, "ibkr_cancel_order").action == "hold"
    assert verdict(policy, "ibkr_get_open_orders").action in ("allow", "limited")
    assert any(d.startswith("hold if args.dry_run neq true") for d in verdict(policy, "ibkr_place_order").depends)
    assert any(
        "at most 10 calls per minute per agent" in limit for limit in verdict(policy, "ibkr_preview_order").limits
    )
