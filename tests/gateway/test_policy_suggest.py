"""`countersign policy suggest`: a starter policy from real servers' annotations that `policy check` accepts."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import mcp_types as types
import pytest

from gateway import cli
from gateway.paper_book import PaperBook
from gateway.paper_broker import build_http_app
from gateway.policy_suggest import suggest_one
from tests.conftest import skip_unless_present
from tests.gateway.test_cli import run_beside_server
from tests.gateway.test_stdio import countersign_command
from tests.harness import serve_asgi

FILESYSTEM_SERVER = Path(__file__).resolve().parents[1] / "node" / "node_modules" / ".bin" / "mcp-server-filesystem"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def broker_config(folder: Path) -> Path:
    program, prefix = countersign_command()
    config = folder / "countersign.toml"
    command = json.dumps([program, *prefix, "paper-broker"])
    config.write_text(f'[[upstreams]]\nname = "paper"\ncommand = {command}\nconnect_timeout = "20s"\n')
    return config


def test_suggest_against_the_paper_broker_writes_a_policy_that_policy_check_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "starter.json"
    code, said, err = run(capsys, "policy", "suggest", "--config", str(broker_config(tmp_path)), "-o", str(out))
    assert code == 0, err
    document = json.loads(out.read_text())
    assert document["default"] == "deny"
    tools = document["tools"]
    assert tools["ibkr_get_portfolio"] == {} and tools["ibkr_preview_order"] == {}
    for held in ("ibkr_place_order", "ibkr_cancel_order", "ibkr_global_cancel"):
        assert tools[held]["require_approval"][0]["conditions"] == [], held
    assert "allow   ibkr_get_portfolio (paper): readOnlyHint true" in said
    assert "hold    ibkr_place_order (paper): readOnlyHint false, destructiveHint true" in said

    code, checked, err = run(capsys, "policy", "check", str(out), "--strict")
    assert code == 0, err
    assert "valid" in checked

    # It never overwrites a file unless told to.
    code, _, err = run(capsys, "policy", "suggest", "--config", str(broker_config(tmp_path)), "-o", str(out))
    assert code == 2 and "--force" in err


async def test_suggest_reads_a_server_given_by_its_url(tmp_path: Path) -> None:
    async with serve_asgi(build_http_app(PaperBook())) as broker_url:
        code, policy_text, reasons = await run_beside_server(["policy", "suggest", "--upstream", f"{broker_url}/mcp"])
    assert code == 0, reasons
    tools = json.loads(policy_text)["tools"]
    assert tools["ibkr_get_open_orders"] == {} and "require_approval" in tools["ibkr_cancel_order"]
    assert "allow   ibkr_get_open_orders (127.0.0.1): readOnlyHint true" in reasons


def test_suggest_against_the_reference_filesystem_server_lists_additive_writes_for_a_human(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problem = None
    if shutil.which("node") is None:
        problem = "node is not installed"
    elif not FILESYSTEM_SERVER.is_file():
        problem = "@modelcontextprotocol/server-filesystem is not installed (npm ci --prefix tests/node)"
    skip_unless_present("node", problem)
    (tmp_path / "files").mkdir()
    server = shlex.join(["node", str(FILESYSTEM_SERVER), str(tmp_path / "files")])
    code, policy_text, reasons = run(capsys, "policy", "suggest", "--upstream", server)
    assert code == 0, reasons
    tools = json.loads(policy_text)["tools"]
    assert tools["read_text_file"] == {} and tools["list_directory"] == {}
    assert "require_approval" in tools["write_file"] and "require_approval" in tools["move_file"]
    # create_directory changes things but says it destroys nothing: refused until a human decides.
    [undecided] = tools["create_directory"]["deny_if"]
    assert undecided["conditions"] == [] and undecided["on_deny"].startswith("Not decided yet")
    assert "decide  create_directory (mcp-server-filesystem): readOnlyHint false, destructiveHint false" in reasons

    out = tmp_path / "filesystem.json"
    out.write_text(policy_text)
    code, _, err = run(capsys, "policy", "check", str(out))
    assert code == 0, err


def test_an_upstream_that_cannot_be_reached_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no-such-server")
    code, out, err = run(capsys, "policy", "suggest", "--upstream", missing, "--timeout", "5")
    assert code == 1 and out == ""
    assert "no-such-server" in err and "not reached" in err


def test_absent_hints_take_the_specs_defaults_so_a_silent_tool_is_held() -> None:
    silent = types.Tool(name="do_things", input_schema={"type": "object"})
    chosen = suggest_one(silent, "up")
    assert chosen.choice == "hold"
    assert "readOnlyHint false (not declared: the default)" in chosen.why
    assert "destructiveHint true (not declared: the default)" in chosen.why
    # destructiveHint means nothing for a tool that only reads.
    reader = types.Tool(
        name="peek",
        input_schema={"type": "object"},
        annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=True),
    )
    assert suggest_one(reader, "up").choice == "allow"
    adder = types.Tool(
        name="append",
        input_schema={"type": "object"},
        annotations=types.ToolAnnotations(destructive_hint=False),
    )
    assert suggest_one(adder, "up").choice == "decide"
