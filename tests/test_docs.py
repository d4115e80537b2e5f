"""The documentation is part of the product: every setting, policy field and CLI command is documented."""

from __future__ import annotations

import argparse
import json
import re
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
    from gateway import policy

    text = (DOCS / "policy.md").read_text()
    names = {
        *policy._TOP_LEVEL_KEYS,
        *policy._TOOL_KEYS,
        *policy._APPROVAL_KEYS,
        *policy._LIMIT_KEYS,
        *policy._CONDITION_KEYS,
        *policy.OPS,
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
