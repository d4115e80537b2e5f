"""docs/clients.md works when pasted: each snippet parses, names what exists, and is what `connect` prints."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.cli_connect import CLIENTS, Target, snippet

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "clients.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, re.S)
EXAMPLE = Target(url="http://127.0.0.1:8080/mcp", agent="alpha", token=None, config="/etc/countersign/countersign.toml")


def test_every_client_has_a_section_with_its_connect_command_and_the_snippet_it_prints() -> None:
    for client in CLIENTS:
        assert f"`countersign connect {client} --agent alpha`" in DOC, client
        assert snippet(client, EXAMPLE) in DOC, f"docs/clients.md does not show what `connect {client}` prints"


@pytest.mark.parametrize(("language", "code"), BLOCKS, ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(BLOCKS)])
def test_every_snippet_parses_and_names_what_exists(language: str, code: str) -> None:
    if language == "json":
        document = json.loads(code)
        for server in (document.get("mcpServers") or document.get("servers")).values():
            if "command" in server:  # a stdio server: our own command line, checked against the parser
                build_parser().parse_args(server["args"])
            else:
                assert server["url"].endswith("/mcp")
                assert server["headers"]["Authorization"].startswith("Bearer ")
    elif language == "toml":
        tomllib.loads(code)
    elif language == "python":
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
    elif language == "sh":
        for line in code.splitlines():
            if line.startswith("countersign "):
                build_parser().parse_args(shlex.split(line)[1:])
            elif line.startswith("node call_tool.mjs"):
                spec = json.loads(shlex.split(line)[2])
                assert spec["resetTimeoutOnProgress"] is True
    elif language == "js":
        assert code == (ROOT / "tests" / "node" / "call_tool.mjs").read_text()
    else:
        pytest.fail(f"docs/clients.md has a {language} block this test cannot check")


def test_the_typescript_program_in_the_docs_is_the_one_the_client_tests_run() -> None:
    assert ("js", (ROOT / "tests" / "node" / "call_tool.mjs").read_text()) in BLOCKS


def test_connect_fills_in_the_configured_gateway_and_keeps_the_token_out_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "countersign.toml"
    config.write_text(
        '[server]\npublic_url = "https://gw.example"\n'
        '[[agents]]\nname = "alpha"\ntoken = "alpha-secret-token"\n'
        '[[agents]]\nname = "bravo"\ntoken_sha256 = "' + "0" * 64 + '"\n'
    )
    assert main(["connect", "cursor", "--agent", "alpha", "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)["mcpServers"]["countersign"]
    assert shown == {"url": "https://gw.example/mcp", "headers": {"Authorization": "Bearer ${env:COUNTERSIGN_TOKEN}"}}

    assert main(["connect", "vscode", "--agent", "alpha", "--config", str(config), "--show-token"]) == 0
    vscode = json.loads(capsys.readouterr().out)
    assert vscode["servers"]["countersign"]["headers"]["Authorization"] == "Bearer alpha-secret-token"

    assert main(["connect", "python", "--agent", "alpha", "--config", str(config), "--show-token"]) == 0
    assert '"Bearer " + "alpha-secret-token"' in ast.unparse(ast.parse(capsys.readouterr().out)).replace("'", '"')

    assert main(["connect", "claude-desktop", "--agent", "bravo", "--config", str(config)]) == 0
    args = json.loads(capsys.readouterr().out)["mcpServers"]["countersign"]["args"]
    assert args[:4] == ["serve", "--stdio", "--agent", "bravo"] and args[5] == str(config.resolve())

    assert main(["connect", "cursor", "--agent", "nobody", "--config", str(config)]) == 2
    assert "no agent named 'nobody' in [[agents]] (alpha, bravo)" in capsys.readouterr().err
