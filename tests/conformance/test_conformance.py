"""The MCP conformance suite's server scenarios, directly against our conformance upstream and through
Countersign: every check that passes directly passes through the gateway.

Needs Node 22 and the suite under tests/conformance (`npm ci --prefix tests/conformance`; `.ci/run`
and `scripts/test` do it). Without them the tests skip and say why; in CI (COUNTERSIGN_REQUIRE
names `node22`) they fail instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance.compare import Check, compare, expected_failures, missing
from tests.conftest import skip_unless_present

ROOT = Path(__file__).resolve().parents[2]


def run_compare(*args: str) -> subprocess.CompletedProcess[str]:
    skip_unless_present("node22", missing())
    command = [sys.executable, "-m", "tests.conformance.compare", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)


def test_every_check_that_passes_directly_passes_through_countersign() -> None:
    done = run_compare()
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    total = re.search(r"^total\s+(\d+) ok\s+(\d+) failed.*?\s(\d+) ok\s+(\d+) failed", done.stdout, re.M)
    assert total, done.stdout
    direct_ok, direct_failed, gateway_ok, gateway_failed = map(int, total.groups())
    # The suite's server scenarios pass in full against the upstream, and so through the gateway.
    assert (direct_failed, gateway_failed) == (0, 0)
    assert direct_ok == gateway_ok >= 44
    # docs/relay.md prints these figures side by side.
    figures = f"**{direct_ok} passed, 0 failed** | **{gateway_ok} passed, 0 failed** |"
    assert figures in (ROOT / "docs" / "relay.md").read_text()
    for scenario in ("tools-call-elicitation", "tools-call-sampling", "prompts-get-with-args", "resources-subscribe"):
        assert re.search(rf"^{scenario}\s", done.stdout, re.M), f"{scenario} did not run"


def test_a_check_the_gateway_loses_fails_the_comparison(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": "1", "default": "allow", "prompts": {"hide": ["test_simple_prompt"]}}))
    done = run_compare("--scenario", "prompts-get-simple", "--policy", str(policy))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "LOST through the gateway: prompts-get-simple / prompts-get-simple: FAILURE" in done.stdout
    assert 'no prompt "test_simple_prompt" is available through this gateway' in done.stdout


DIRECT = {"server-sse-polling": {"server-sse-retry-field": Check("SUCCESS", "")}}
WARNED = {"server-sse-polling": {"server-sse-retry-field": Check("WARNING", "no retry field")}}


def test_an_expected_failure_excuses_only_the_check_it_names_and_a_stale_one_fails(tmp_path: Path) -> None:
    listed = tmp_path / "expected.toml"
    listed.write_text(
        '[[expected]]\nscenario = "server-sse-polling"\ncheck = "server-sse-retry-field"\nreason = "a reason"\n'
    )
    expected = expected_failures(listed)
    assert compare(DIRECT, WARNED, expected) == 0  # a warning where the direct run succeeded is a loss, excused
    assert compare(DIRECT, WARNED, {}) == 1
    assert compare(DIRECT, DIRECT, expected) == 1  # no longer fails: the entry must go


def test_an_expected_failure_without_a_reason_is_refused(tmp_path: Path) -> None:
    listed = tmp_path / "expected.toml"
    listed.write_text('[[expected]]\nscenario = "ping"\ncheck = "ping"\n')
    with pytest.raises(SystemExit, match=r"expected\[0\]: needs scenario, check and reason"):
        expected_failures(listed)
