"""Dev mode (no agent tokens) only where nobody else can reach it, and never as a configured agent."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_settings

DEV_CONFIG = """
    [server]
    dev_mode = true
    host = "{host}"
    database_url = "sqlite:///{db}"

    [[agents]]
    name = "{agent}"
    token = "a-long-enough-token"
"""


def dev_config(tmp_path: Path, *, host: str = "127.0.0.1", agent: str = "alpha") -> Path:
    path = tmp_path / f"dev-{host}-{agent}.toml"
    path.write_text(textwrap.dedent(DEV_CONFIG.format(host=host, agent=agent, db=tmp_path / "cs.db")))
    return path


def test_dev_mode_is_refused_with_an_agent_named_dev_or_on_an_address_others_can_reach(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load_settings(dev_config(tmp_path), environ={}).server.dev_mode

    with pytest.raises(ConfigError) as named_dev:
        load_settings(dev_config(tmp_path, agent="dev"), environ={})
    assert named_dev.value.path == "agents[0].name"
    assert "dev_mode" in named_dev.value.message

    for host in ("0.0.0.0", "::", "192.0.2.10", "gateway.example.com"):
        with pytest.raises(ConfigError) as exposed:
            load_settings(dev_config(tmp_path, host=host), environ={})
        assert "loopback" in exposed.value.message and repr(host) in exposed.value.message, host

    # `serve --host` changes the address after the file was read; it is refused all the same.
    assert main(["serve", "--config", str(dev_config(tmp_path)), "--host", "0.0.0.0"]) == 2
    assert "dev_mode" in capsys.readouterr().err
