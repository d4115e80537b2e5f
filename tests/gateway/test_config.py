"""The configuration file: every documented key, `${ENV}` secrets, errors that name the bad key, and the demo."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from approvals.approvers import token_digest
from gateway.config import ConfigError, Settings, load_settings
from gateway.demo import DEMO_AGENT_TOKEN, DEMO_APPROVER, DEMO_APPROVER_TOKEN, DEMO_PASSWORD, demo_settings

FULL_CONFIG = """\
[server]
host = "0.0.0.0"
port = 9090
database_url = "${DATABASE_URL}"
public_url = "https://countersign.example.com/"

[policy]
file = "policies/trading.json"

[[upstreams]]
name = "ibkr"
url = "https://ibkr-mcp.internal/mcp"
headers = { Authorization = "Bearer ${IBKR_MCP_TOKEN}" }
prefix = "ibkr."

[[upstreams]]
name = "paper"
command = ["countersign", "paper-broker"]
env = { PAPER_SEED = "42" }

[[agents]]
name = "trading-agent"
token = "${AGENT_TOKEN}"

[[approvers]]
name = "alice"
email = "alice@example.com"
groups = ["traders", "ops"]
api_token = "${ALICE_API_TOKEN}"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
slack_user = "U012ABCDEF"

[slack]
bot_token = "${SLACK_BOT_TOKEN}"
signing_secret = "${SLACK_SIGNING_SECRET}"
channel = "#trading-approvals"
mode = "socket"
app_token = "xapp-1-A"
api_url = "http://127.0.0.1:9999/api/"
"""

ENV = {
    "DATABASE_URL": "postgresql://countersign:s3cret@db.internal/countersign",
    "IBKR_MCP_TOKEN": "ibkr-upstream-token",
    "AGENT_TOKEN": "agent-token-from-env",
    "ALICE_API_TOKEN": "alice-token-from-env",
    "SLACK_BOT_TOKEN": "xoxb-from-env",
    "SLACK_SIGNING_SECRET": "signing-from-env",
}


def write(tmp_path: Path, text: str, name: str = "countersign.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def bad(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ=environ or {})
    return caught.value


def test_every_documented_key_is_read_and_secrets_come_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL_CONFIG), environ=ENV)

    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9090
    assert settings.database_url == ENV["DATABASE_URL"]
    assert settings.server.base_url == "https://countersign.example.com"
    assert settings.policy_path == tmp_path / "policies" / "trading.json"

    ibkr, paper = settings.upstreams
    assert (ibkr.name, ibkr.url, ibkr.command, ibkr.prefix) == ("ibkr", "https://ibkr-mcp.internal/mcp", None, "ibkr.")
    assert ibkr.headers == {"Authorization": "Bearer ibkr-upstream-token"}
    assert (paper.command, paper.url, paper.env) == (("countersign", "paper-broker"), None, {"PAPER_SEED": "42"})

    [agent] = settings.agents
    assert agent.name == "trading-agent"
    assert agent.digest == token_digest("agent-token-from-env")

    [alice] = settings.approvers
    approver = alice.to_approver()
    assert approver.name == "alice"
    assert approver.email == "alice@example.com"
    assert approver.groups == ("traders", "ops")
    assert approver.slack_user == "U012ABCDEF"
    assert approver.api_token_sha256 == token_digest("alice-token-from-env")
    assert approver.password_hash is not None and approver.password_hash.startswith("$argon2id$")

    slack = settings.slack
    assert (slack.bot_token, slack.signing_secret) == ("xoxb-from-env", "signing-from-env")
    assert (slack.channel, slack.mode, slack.app_token) == ("#trading-approvals", "socket", "xapp-1-A")
    assert slack.api_url == "http://127.0.0.1:9999/api/"
    assert slack.enabled


def test_held_calls_are_bounded_by_default_under_a_60_second_client_and_none_lifts_the_bound(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[[agents]]\nname = "bot"\ntoken = "long-enough"\n'), environ={})
    # The shipped defaults: a pending result at 50 s, before the 60 s at which common clients give up,
    # and a keep-alive byte every 2 s, under httpx's default 5 s read timeout.
    assert (settings.server.default_max_hold, settings.server.keepalive_interval) == (50.0, 2.0)
    assert settings.agents[0].max_hold is None  # not set: the server's default applies

    text = """\
        [server]
        default_max_hold = "None"
        keepalive_interval = "1.5s"

        [[agents]]
        name = "patient"
        token = "long-enough"
        max_hold = "none"

        [[agents]]
        name = "hasty"
        token = "long-enough-too"
        max_hold = "20s"
        """
    settings = load_settings(write(tmp_path, text), environ={})
    assert (settings.server.default_max_hold, settings.server.keepalive_interval) == (math.inf, 1.5)
    assert [a.max_hold for a in settings.agents] == [math.inf, 20.0]


def test_secrets_never_appear_in_the_printed_settings(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL_CONFIG), environ=ENV)
    printed = repr(settings)
    for secret in ("agent-token-from-env", "alice-token-from-env", "xoxb-from-env", "signing-from-env"):
        assert secret not in printed


def test_a_relative_sqlite_database_is_kept_beside_the_config_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[server]\ndatabase_url = "sqlite:///data/countersign.db"\n'))
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'countersign.db'}"


def test_slack_secrets_left_out_of_the_file_are_read_from_the_well_known_variables(tmp_path: Path) -> None:
    path = write(tmp_path, '[slack]\nchannel = "#approvals"\n')
    settings = load_settings(path, environ={"SLACK_BOT_TOKEN": "xoxb-env", "SLACK_SIGNING_SECRET": "sig-env"})
    assert (settings.slack.bot_token, settings.slack.signing_secret) == ("xoxb-env", "sig-env")
    assert settings.slack.enabled


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("[server]\nprot = 8080\n", "server.prot", "unknown key"),
        ("[sever]\nport = 8080\n", "sever", "unknown key"),
        ("[server]\nport = 70000\n", "server.port", "65535"),
        ('[server]\ndatabase_url = "mysql://db/countersign"\n', "server.database_url", "SQLite or PostgreSQL"),
        ('[server]\ndatabase_url = "countersign.db"\n', "server.database_url", "sqlite:///countersign.db"),
        ('[server]\nprogress_interval = "soon"\n', "server.progress_interval", "invalid duration"),
        ('[server]\ndefault_max_hold = "forever"\n', "server.default_max_hold", '"none" for no bound'),
        ("[server]\ndefault_max_hold = 0\n", "server.default_max_hold", 'write "none"'),
        ("[server]\nkeepalive_interval = 0\n", "server.keepalive_interval", "greater than 0"),
        ('[[agents]]\nname = "bot"\ntoken = "long-enough"\nmax_hold = false\n', "agents[0].max_hold", '"none"'),
        (
            '[[upstreams]]\nname = "ibkr"\nurl = "http://x/mcp"\ncommand = ["ibkr-mcp"]\n',
            "upstreams[0]",
            "exactly one of `command`",
        ),
        (
            '[[upstreams]]\nname = "a"\nurl = "http://x/mcp"\n\n[[upstreams]]\nname = "b"\nurl = "ftp://x"\n',
            "upstreams[1]",
            "http://",
        ),
        ('[[upstreams]]\nname = "ibkr"\ncommand = "ibkr-mcp --stdio"\n', "upstreams[0].command", "list"),
        ('[upstreams]\nname = "ibkr"\nurl = "http://x/mcp"\n', "upstreams", "list"),
        ('[[agents]]\nname = "bot"\ntoken = "short"\n', "agents[0]", "too short"),
        ('[[approvers]]\nname = "alice smith"\n', "approvers[0].name", "spaces"),
        ('[[approvers]]\nname = "alice"\ngroups = "traders"\n', "approvers[0].groups", "list"),
        ('[[approvers]]\nname = "alice"\n\n[[approvers]]\nname = "alice"\n', "approvers[1].name", "used twice"),
        ('[slack]\nmode = "carrier-pigeon"\n', "slack.mode", "'http' or 'socket'"),
        ('[[agents]]\nname = "bot"\ntoken = "${AGENT_TOKEN}"\n', "agents[0].token", "AGENT_TOKEN is not set"),
        (
            '[[upstreams]]\nname = "ibkr"\nurl = "http://x/mcp"\nheaders = { Authorization = "Bearer ${IBKR}" }\n',
            "upstreams[0].headers.Authorization",
            "IBKR is not set",
        ),
    ],
)
def test_a_bad_file_is_refused_with_the_path_of_the_bad_key(tmp_path: Path, text: str, path: str, words: str) -> None:
    error = bad(tmp_path, text)
    assert error.path == path
    assert words in error.message
    assert str(error).startswith(f"{tmp_path / 'countersign.toml'}: {path}: ")


def test_a_file_that_is_not_toml_is_refused_with_the_line(tmp_path: Path) -> None:
    error = bad(tmp_path, "[server]\nport = = 8080\n")
    assert "not valid TOML" in str(error)
    assert "line 2" in str(error)


def test_a_missing_file_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file") as caught:
        load_settings(tmp_path / "nowhere.toml")
    assert str(tmp_path / "nowhere.toml") in str(caught.value)


def test_the_demo_settings_carry_the_fixed_demo_credentials(tmp_path: Path) -> None:
    settings: Settings = demo_settings(tmp_path / "demo", port=8181)

    [agent] = settings.agents
    assert agent.digest == token_digest(DEMO_AGENT_TOKEN) == token_digest("demo-agent")
    [approver] = (a.to_approver() for a in settings.approvers)
    assert approver.name == DEMO_APPROVER == "demo"
    assert approver.api_token_sha256 == token_digest(DEMO_APPROVER_TOKEN) == token_digest("demo-approver")
    assert "traders" in approver.groups, "the demo policy's cancel approval is for group:traders"
    assert approver.password_hash is not None
    assert DEMO_PASSWORD == "demo"
    assert PasswordHasher().verify(approver.password_hash, "demo")

    assert settings.server.port == 8181
    assert settings.policy_path.is_file()
    assert settings.database_url.startswith("sqlite")
    assert [u.name for u in settings.upstreams] == ["paper"]
