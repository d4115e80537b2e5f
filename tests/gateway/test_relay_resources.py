"""Prompts, resources and completion relayed from an upstream, in both eras, under the policy and audited."""

from __future__ import annotations

from pathlib import Path

import mcp_types as types
import pytest
from mcp import MCPError

from gateway.policy import PolicyError, parse_policy
from tests.gateway.relay_harness import audit_rows, relay_gateway, relay_upstream
from tests.harness import agent_client

POLICY = {
    "version": "1",
    "default": "allow",
    "prompts": {"hide": ["internal_*"], "deny": ["wipe_plan"]},
    "resources": {"hide": ["memo://secret/*"], "deny": ["memo://big"]},
}
ERAS = ["legacy", "auto"]


@pytest.mark.parametrize("mode", ERAS)
async def test_prompts_are_listed_fetched_hidden_and_denied_by_policy_and_every_fetch_is_audited(
    tmp_path: Path, mode: str
) -> None:
    async with relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", POLICY) as (base, gateway):
        async with agent_client(base, mode=mode) as agent:
            assert agent.server_capabilities.prompts is not None
            names = [p.name for p in (await agent.list_prompts()).prompts]
            assert names == ["greet", "wipe_plan"]

            fetched = await agent.get_prompt("greet", {"name": "Ada"})
            assert isinstance(fetched.messages[0].content, types.TextContent)
            assert fetched.messages[0].content.text == "Hello, Ada!"

            with pytest.raises(MCPError) as denied:
                await agent.get_prompt("wipe_plan")
            assert "[POLICY DENIED]" in denied.value.message
            with pytest.raises(MCPError) as hidden:
                await agent.get_prompt("internal_notes")
            with pytest.raises(MCPError) as unknown:
                await agent.get_prompt("no_such_prompt")
            # A hidden prompt is refused exactly as one that does not exist.
            assert hidden.value.code == unknown.value.code
            assert hidden.value.message.replace("internal_notes", "X") == unknown.value.message.replace(
                "no_such_prompt", "X"
            )

        rows = await audit_rows(gateway, "prompt.get")
        assert [(r.outcome, r.detail["prompt"], r.detail["rule"]) for r in rows] == [
            ("allowed", "greet", "prompts.default"),
            ("denied", "wipe_plan", "prompts.deny[0]"),
            ("denied", "internal_notes", "prompts.hide[0]"),
            ("denied", "no_such_prompt", "unknown"),
        ]
        assert rows[0].agent == "alpha" and rows[0].upstream == "memo"
        assert rows[0].arguments == '{"name":"Ada"}'
        assert rows[0].detail["bytes"] > 0


@pytest.mark.parametrize("mode", ERAS)
async def test_resources_and_templates_are_listed_read_hidden_and_denied_and_every_read_is_audited(
    tmp_path: Path, mode: str
) -> None:
    async with relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", POLICY) as (base, gateway):
        async with agent_client(base, mode=mode) as agent:
            uris = [r.uri for r in (await agent.list_resources()).resources]
            assert uris == ["memo://notes/monday", "memo://big"]
            templates = [t.uri_template for t in (await agent.list_resource_templates()).resource_templates]
            assert templates == ["memo://notes/{day}"]

            listed = await agent.read_resource("memo://notes/monday")
            from_template = await agent.read_resource("memo://notes/tuesday")
            assert [c.text for c in (*listed.contents, *from_template.contents)] == ["buy milk", "call the bank"]  # type: ignore[union-attr]

            with pytest.raises(MCPError) as denied:
                await agent.read_resource("memo://big")
            assert "[POLICY DENIED]" in denied.value.message
            with pytest.raises(MCPError) as hidden:
                await agent.read_resource("memo://secret/key")
            assert "vault" not in hidden.value.message

        rows = await audit_rows(gateway, "resource.read")
        assert [(r.outcome, r.detail["uri"]) for r in rows] == [
            ("allowed", "memo://notes/monday"),
            ("allowed", "memo://notes/tuesday"),
            ("denied", "memo://big"),
            ("denied", "memo://secret/key"),
        ]
        # The audit row records the size, never the content.
        assert rows[0].detail["bytes"] > 0 and "buy milk" not in str(rows[0].detail)


@pytest.mark.parametrize("mode", ERAS)
async def test_an_upstream_prefix_namespaces_prompts_and_resources_and_completion_reaches_the_owner(
    tmp_path: Path, mode: str
) -> None:
    upstreams = [relay_upstream("memo", prefix="memo.")]
    allow_all = {"version": "1", "default": "allow"}
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", allow_all, upstreams) as (base, _),
        agent_client(base, mode=mode) as agent,
    ):
        assert "memo.greet" in [p.name for p in (await agent.list_prompts()).prompts]
        assert "memo.memo://notes/monday" in [r.uri for r in (await agent.list_resources()).resources]
        read = await agent.read_resource("memo.memo://notes/tuesday")
        assert read.contents[0].uri == "memo.memo://notes/tuesday"
        assert (await agent.get_prompt("memo.greet", {"name": "Bo"})).messages[0].content.text == "Hello, Bo!"  # type: ignore[union-attr]

        ref = types.PromptReference(type="ref/prompt", name="memo.greet")
        assert (await agent.complete(ref, {"name": "name", "value": "Al"})).completion.values == ["Alice", "Alfred"]
        template = types.ResourceTemplateReference(type="ref/resource", uri="memo.memo://notes/{day}")
        assert (await agent.complete(template, {"name": "day", "value": "t"})).completion.values == ["tuesday"]


async def test_a_default_deny_policy_refuses_prompts_and_resources_it_does_not_allow(tmp_path: Path) -> None:
    policy = {"version": "1", "default": "deny", "prompts": {"allow": ["greet"]}}
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", policy) as (base, _),
        agent_client(base) as agent,
    ):
        assert (await agent.get_prompt("greet", {"name": "A"})).messages
        with pytest.raises(MCPError, match="default deny"):
            await agent.read_resource("memo://notes/monday")


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        ({"prompts": {"allow": "greet"}}, "prompts.allow", "expected a list"),
        ({"resources": {"show": []}}, "resources.show", "unknown key 'show'"),
        ({"resources": {"default": "hold"}}, "resources.default", 'expected "allow" or "deny"'),
        ({"prompts": {"hide": [""]}}, "prompts.hide[0]", "non-empty string"),
    ],
)
def test_a_bad_prompts_or_resources_block_is_refused_naming_the_field(
    block: dict[str, object], path: str, words: str
) -> None:
    with pytest.raises(PolicyError) as refused:
        parse_policy({"version": "1", "default": "allow", **block})
    assert refused.value.path == path and words in refused.value.message
