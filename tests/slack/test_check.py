"""`countersign slack check` against the fake Slack, and the Slack documentation kept honest."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.app import Gateway
from gateway.cli import main
from gateway.config import ConfigError, parse_settings
from gateway.config_channels import SlackSettings
from tests.slack.fake_slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.slack.stack import BOB, cancel_policy

DOCS = Path(__file__).resolve().parents[2] / "docs"


def write_config(tmp_path: Path, slack: dict[str, Any], *, public_url: str = "https://cs.example.com") -> Path:
    (tmp_path / "policy.json").write_text(json.dumps(cancel_policy(slack_channel="#risk-desk")))
    lines = [
        "[server]",
        f'public_url = "{public_url}"',
        "[policy]",
        'file = "policy.json"',
        "[[approvers]]",
        'name = "alice"',
        'email = "alice@example.com"',
        "[[approvers]]",
        'name = "bob"',
        f'slack_user = "{BOB.id}"',
        "[slack]",
        *(f"{key} = {json.dumps(value)}" for key, value in slack.items()),
    ]
    path = tmp_path / "countersign.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # The command runs its own event loop; the fake Slack keeps serving on this one meanwhile.
    code = await anyio.to_thread.run_sync(main, ["slack", "check", "--config", str(path)])
    return code, capsys.readouterr().out


async def test_a_complete_set_up_passes_every_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeSlack([BOB])
    async with fake.serving():
        slack = {"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET, "channel": "C0APPROVALS"}
        code, out = await run_check(write_config(tmp_path, {**slack, "api_url": fake.api_url}), capsys)
    assert code == 0, out
    assert "OK    bot token: authenticated as @countersign in Countersign Test" in out
    assert "OK    channel C0APPROVALS: #approvals" in out
    assert "OK    channel #risk-desk: #risk-desk (C0OVERRIDE)" in out, "the policy's channels are checked too"
    assert "OK    approver bob: slack_user U0BOB is @bob" in out
    assert "https://cs.example.com/slack/interactions" in out
    assert out.rstrip().endswith("Slack is ready (0 warning(s)).")


async def test_a_bad_token_is_named_with_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeSlack()
    async with fake.serving():
        slack = {"bot_token": "xoxb-wrong", "signing_secret": "s", "channel": "C0APPROVALS", "api_url": fake.api_url}
        code, out = await run_check(write_config(tmp_path, slack), capsys)
    assert code == 1
    assert "FAIL  bot token: auth.test failed: invalid_auth — the token is not valid" in out


async def test_missing_pieces_and_an_unknown_channel_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeSlack()
    async with fake.serving():
        slack = {"bot_token": BOT_TOKEN, "channel": "#nowhere", "mode": "socket", "api_url": fake.api_url}
        code, out = await run_check(write_config(tmp_path, slack, public_url=""), capsys)
    assert code == 1
    assert "FAIL  slack.app_token: Socket Mode needs an app-level token" in out
    assert "FAIL  channel #nowhere: no channel of that name is visible to the bot" in out
    assert "Slack is not ready" in out

    async with fake.serving():
        slack = {"bot_token": BOT_TOKEN, "channel": "C0APPROVALS", "api_url": fake.api_url}
        code, out = await run_check(write_config(tmp_path, slack, public_url=""), capsys)
    assert "FAIL  slack.signing_secret: HTTP mode verifies every click" in out
    assert "WARN  server.public_url: not set" in out


async def test_socket_mode_checks_the_app_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeSlack([BOB])
    async with fake.serving():
        slack = {"bot_token": BOT_TOKEN, "channel": "C0APPROVALS", "mode": "socket", "api_url": fake.api_url}
        code, out = await run_check(write_config(tmp_path, {**slack, "app_token": APP_TOKEN}), capsys)
        assert code == 0, out
        assert "OK    app token: Socket Mode connections can be opened" in out
        code, out = await run_check(write_config(tmp_path, {**slack, "app_token": "xapp-revoked"}), capsys)
    assert code == 1
    assert "FAIL  app token: apps.connections.open failed: invalid_auth" in out


def test_an_incomplete_slack_section_stops_the_gateway_from_starting(tmp_path: Path) -> None:
    (tmp_path / "policy.json").write_text(json.dumps(cancel_policy()))
    settings = parse_settings(
        {"slack": {"bot_token": BOT_TOKEN, "channel": "C0APPROVALS"}}, base_dir=str(tmp_path), environ={}
    )
    with pytest.raises(ConfigError, match=r"slack\.signing_secret"):
        Gateway(settings)


def test_every_slack_setting_is_documented() -> None:
    guide = (DOCS / "slack.md").read_text()
    for key in SlackSettings.model_fields:
        assert f"| `{key}` |" in guide, f"[slack] {key} is not in the settings table of docs/slack.md"
    assert "countersign slack check" in guide


@pytest.mark.parametrize(
    ("manifest", "socket"), [("slack-manifest-http.yaml", False), ("slack-manifest-socket.yaml", True)]
)
def test_the_app_manifests_ask_for_what_the_gateway_uses(manifest: str, socket: bool) -> None:
    text = (DOCS / manifest).read_text()
    assert manifest in (DOCS / "slack.md").read_text()
    for scope in ("chat:write", "users:read", "users:read.email", "channels:history", "groups:history"):
        assert re.search(rf"^\s+- {re.escape(scope)}$", text, re.MULTILINE), scope
    assert f"socket_mode_enabled: {'true' if socket else 'false'}" in text
    assert re.search(r"interactivity:\n\s+is_enabled: true", text)
    assert ("request_url: https://" in text) is not socket
    if not socket:
        assert re.search(r"request_url: \S+/slack/interactions$", text, re.MULTILINE)
