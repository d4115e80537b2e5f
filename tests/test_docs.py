"""The documentation is part of the product: every setting, policy field and CLI command is documented."""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.cli import build_parser
from gateway.config import Settings

DOCS = Path(__file__).resolve().parents[1] / "docs"


def all_docs() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))


def documented_keys(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_0-9]+)`", text))


def settings_sections() -> list[tuple[str, type[BaseModel]]]:
    sections = []
    for name, field in Settings.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            sections.append((name, inner))
    return sections


@pytest.mark.parametrize(("section", "model"), settings_sections(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_configuration_key_is_documented(section: str, model: type[BaseModel]) -> None:
    keys = documented_keys(all_docs())
    missing = [name for name in model.model_fields if name not in keys]
    assert not missing, f"[{section}] keys missing from docs/: {missing}"


def test_every_cli_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    missing = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    command = f"{prefix} {name}"
                    if f"`{command}" not in text:
                        missing.append(command)
                    walk(sub, command)

    walk(build_parser(), "countersign")
    assert not missing, f"commands missing from docs/cli.md: {missing}"


def test_every_policy_field_and_op_is_documented() -> None:
    from gateway import policy_document, policy_model

    text = (DOCS / "policy.md").read_text()
    names = {
        *policy_document._TOP_LEVEL_KEYS,
        *policy_document._TOOL_KEYS,
        *policy_document._APPROVAL_KEYS,
        *policy_document._LIMIT_KEYS,
        *policy_document._CONDITION_KEYS,
        *policy_model.OPS,
    }
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, f"policy fields/ops missing from docs/policy.md: {missing}"


def test_the_readme_names_the_two_set_up_commands_near_the_top() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    head = readme[:2000]
    assert "scripts/demo" in head and "scripts/test" in head
    for script in ("demo", "test"):
        assert (DOCS.parent / "scripts" / script).stat().st_mode & 0o111, f"scripts/{script} is not executable"


def test_the_policy_reference_leads_with_the_demo_policy_and_it_has_no_rule_an_agent_can_skip() -> None:
    from gateway.demo import DEMO_POLICY
    from gateway.policy import parse_policy
    from gateway.policy_report import lint_policy

    text = (DOCS / "policy.md").read_text()
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])

    assert example == DEMO_POLICY
    policy = parse_policy(example)
    assert lint_policy(policy) == []
    for hostile in ({"dry_run": "false"}, {"dry_run": 0}, {}, {"dry_run": None}):
        call = {"order": {"totalQuantity": 10}, **hostile}
        assert policy.evaluate("ibkr_place_order", call).action == "hold", call
    for quantity in ("5000", "10", None, [5000]):
        call = {"order": {"totalQuantity": quantity}, "dry_run": True}
        assert policy.evaluate("ibkr_place_order", call).action == "deny", call
    assert policy.evaluate("ibkr_place_order", {"order": {}, "dry_run": True}).action == "deny"
    assert policy.evaluate("ibkr_place_order", {"order": {"totalQuantity": 10}, "dry_run": True}).action == "allow"


# ---- audit event kinds

CODE = [DOCS.parent / "approvals", DOCS.parent / "gateway"]


def _parameters(trees: list[ast.Module]) -> dict[str, list[list[str]]]:
    """Each function name defined in the code, with the parameters (in order, without self) of each
    function of that name: a call is matched against all of them."""
    found: dict[str, list[list[str]]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args)]
                found.setdefault(node.name, []).append([n for n in names if n not in ("self", "cls")])
    # A function imported under another name (`from m import request_event as _event`) is called by that name.
    aliases = [a for tree in trees for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    for alias in aliases:
        if alias.asname and alias.name in found:
            found.setdefault(alias.asname, []).extend(found[alias.name])
    return found


_CONSTANTS: dict[str, str] = {}


def _texts(node: ast.expr) -> list[str]:
    """The strings an expression can be: a literal, or an f-string's literal prefix followed by `*`
    when the rest is computed (`f"request.{outcome}"` -> `request.*`), expanding `a if c else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return [_CONSTANTS[node.id]]
    if isinstance(node, ast.IfExp):
        return _texts(node.body) + _texts(node.orelse)
    if isinstance(node, ast.JoinedStr):
        results = [""]
        for part in node.values:
            pieces = _texts(part.value) if isinstance(part, ast.FormattedValue) else _texts(part)
            if not pieces:
                return [r + "*" for r in results]
            results = [r + p for r in results for p in pieces]
        return results
    return []


def emitted_event_kinds() -> set[str]:
    """Every audit event kind the code writes: strings given as an event's `kind` (by keyword or to a
    parameter named `kind`), or as an `outcome` that names a kind (`policy.loaded`, passed on as one)."""
    trees = [ast.parse(path.read_text(), str(path)) for folder in CODE for path in sorted(folder.rglob("*.py"))]
    parameters = _parameters(trees)
    # Module-level string constants (`MODAL_OPENED = "decision.reason_asked"`) passed as a kind.
    for tree in trees:
        for node in tree.body:
            value = node.value if isinstance(node, ast.Assign) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                assert isinstance(node, ast.Assign)
                _CONSTANTS.update({t.id: value.value for t in node.targets if isinstance(t, ast.Name)})
    kinds: set[str] = set()
    for tree in trees:
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            bound = [pair for params in parameters.get(name, []) for pair in zip(params, call.args, strict=False)]
            bound += [(k.arg, k.value) for k in call.keywords if k.arg]
            for parameter, value in bound:
                if parameter in ("kind", "outcome"):
                    kinds.update(t for t in _texts(value) if re.fullmatch(r"[a-z]+\.[a-z_]+|[a-z]+\.\*", t))
    return kinds


def documented_event_kinds() -> set[str]:
    table = [line for line in (DOCS / "audit.md").read_text().splitlines() if line.startswith("| `")]
    return {kind for line in table for kind in re.findall(r"`([a-z]+\.[a-z_]+)`", line.split("|")[1])}


def test_the_code_is_seen_to_emit_the_kinds_of_each_family() -> None:
    kinds = emitted_event_kinds()
    for kind in ("call.allowed", "call.hidden", "call.gateway", "request.detached", "policy.loaded", "slack.failed"):
        assert kind in kinds, f"the scan of the code misses {kind}: {sorted(kinds)}"
    assert "request.*" in kinds, "decisions and results are written as f'request.{...}'"


def test_every_audit_event_kind_the_code_writes_is_in_the_table_in_docs_audit_md() -> None:
    documented = documented_event_kinds()
    emitted = emitted_event_kinds()
    missing = sorted(k for k in emitted if not k.endswith("*") and k not in documented)
    assert not missing, f"event kinds missing from the table in docs/audit.md: {missing}"
    prefixes = [k[:-1] for k in emitted if k.endswith("*")]
    for prefix in prefixes:
        assert any(d.startswith(prefix) for d in documented), f"no {prefix}… kind in docs/audit.md"
    stale = sorted(k for k in documented - emitted if not k.startswith(tuple(prefixes)))
    assert not stale, f"docs/audit.md lists kinds the code never writes: {stale}"


# ---- the quickstart's commands run as written


def quickstart_commands() -> list[list[str]]:
    """The `.venv/bin/countersign …` lines of the quickstart's shell blocks, as argument lists."""
    text = (DOCS / "quickstart.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line, comments=True)[1:] for line in lines if line.startswith(".venv/bin/countersign ")]


def test_the_quickstart_names_the_command_where_scripts_demo_installs_it() -> None:
    text = (DOCS / "quickstart.md").read_text()
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL))
    bare = [line for line in blocks.splitlines() if line.strip().startswith("countersign ")]
    assert not bare, f"bare `countersign` is not on PATH after scripts/demo: {bare}"
    assert ".venv/bin/countersign" in (DOCS.parent / "scripts" / "demo").read_text()
    assert len(quickstart_commands()) >= 7


def test_every_quickstart_command_parses_and_the_offline_ones_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    monkeypatch.chdir(tmp_path)
    for argv in quickstart_commands():
        build_parser().parse_args(argv)  # an argparse error exits the test
        if argv[0] in ("init", "policy"):
            assert main(argv) == 0, f"countersign {' '.join(argv)}: {capsys.readouterr().err}"


# ---- the deployment guide shows the load balancer configuration the replica tests run


def test_the_deployment_guide_shows_the_haproxy_configuration_the_replica_tests_run_verbatim() -> None:
    shipped = (DOCS.parent / "deploy" / "haproxy.cfg").read_text()
    guide = (DOCS / "deploy.md").read_text()
    shown = re.findall(r"```haproxy\n(.*?)```", guide, flags=re.DOTALL)
    assert shown == [shipped], "docs/deploy.md must include deploy/haproxy.cfg, unchanged, in one haproxy block"
    from tests.replicas.cluster import HAPROXY_CONFIG, REPLICAS

    assert DOCS.parent / "deploy" / "haproxy.cfg" == HAPROXY_CONFIG
    assert re.findall(r"^\s*server (\S+)", shipped, flags=re.MULTILINE) == list(REPLICAS)
    readme = (DOCS.parent / "README.md").read_text()
    assert "(docs/deploy.md)" in readme
