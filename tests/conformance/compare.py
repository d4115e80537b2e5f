"""Run the MCP conformance suite's server scenarios directly and through Countersign, side by side.

    python -m tests.conformance.compare [--output DIR]

Starts the project's conformance upstream (`tests/conformance/upstream.py`) and a `countersign
serve` in front of it with an allow-all policy, runs every server scenario of
`@modelcontextprotocol/conformance` (installed by `npm ci --prefix tests/conformance`, with the
Node 22 it needs) against both, and prints one line per scenario. It exits 1 when a check passes
directly and does not pass through the gateway, unless `expected-failures.toml` names that check
with the protocol's reason; and when an entry there no longer fails, so the file stays true.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

from tests.processes import countersign_command, free_port, toml

HERE = Path(__file__).resolve().parent
NODE = HERE / "node_modules" / "node" / "bin" / "node"
SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EXPECTED = HERE / "expected-failures.toml"
ALLOW_ALL: dict[str, object] = {"version": "1", "default": "allow"}
# Worst first: a check that appears several times in a scenario counts as its worst outcome.
RANK = {"FAILURE": 0, "WARNING": 1, "SUCCESS": 2, "INFO": 3}


def missing() -> str | None:
    """Why the suite cannot run here, or None."""
    if not NODE.is_file():
        return f"Node 22 is not installed at {NODE} (npm ci --prefix tests/conformance)"
    if not SUITE.is_file():
        return f"the conformance suite is not installed at {SUITE} (npm ci --prefix tests/conformance)"
    return None


@dataclass(frozen=True)
class Check:
    status: str
    message: str


Results = dict[str, dict[str, Check]]  # scenario -> check id -> its worst outcome


def read_results(folder: Path) -> Results:
    """The suite's `server-<scenario>-<timestamp>/checks.json` files, per scenario and check."""
    results: Results = {}
    for checks in sorted(folder.glob("server-*/checks.json")):
        named = re.match(r"server-(.+)-\d{4}-\d\d-\d\dT", checks.parent.name)
        scenario = named.group(1) if named else checks.parent.name
        found = results.setdefault(scenario, {})
        for entry in json.loads(checks.read_text()):
            status = str(entry.get("status"))
            if status == "INFO":
                continue
            seen = found.get(entry["id"])
            if seen is None or RANK.get(status, 0) < RANK.get(seen.status, 0):
                found[entry["id"]] = Check(status, str(entry.get("errorMessage") or ""))
    return results


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, *, ok: set[int], within: float = 60) -> None:
    deadline = time.monotonic() + within
    with httpx2.Client(timeout=2, trust_env=False) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"{url}: the process exited with {process.returncode}:\n{log.read_text()}")
            try:
                if http.get(url).status_code in ok:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {within:.0f}s:\n{log.read_text()}")


@contextmanager
def started(command: list[str], log: Path, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def targets(work: Path, policy: dict[str, object]) -> Iterator[dict[str, str]]:
    """The upstream and a gateway in front of it (under `policy`), running; their /mcp URLs."""
    upstream_port, gateway_port = free_port(), free_port()
    root = HERE.parents[1]
    with ExitStack() as stack:
        upstream_log = work / "upstream.log"
        upstream = stack.enter_context(
            started(
                [sys.executable, "-m", "tests.conformance.upstream", "--port", str(upstream_port)], upstream_log, root
            )
        )
        direct = f"http://127.0.0.1:{upstream_port}/mcp"
        wait_for(direct, upstream, upstream_log, ok={200, 400, 405, 406})
        (work / "policy.json").write_text(json.dumps(policy))
        config = {
            "server": {"host": "127.0.0.1", "port": gateway_port, "dev_mode": True, "database_url": "sqlite:///cs.db"},
            "policy": {"file": "policy.json"},
            "upstreams": [{"name": "conformance", "url": direct}],
        }
        (work / "countersign.toml").write_text(toml(config))
        gateway_log = work / "gateway.log"
        gateway = stack.enter_context(
            started([*countersign_command(), "serve", "--config", "countersign.toml"], gateway_log, work)
        )
        wait_for(f"http://127.0.0.1:{gateway_port}/readyz", gateway, gateway_log, ok={200})
        yield {"direct": direct, "gateway": f"http://127.0.0.1:{gateway_port}/mcp"}


def run_suite(url: str, output: Path, scenario: str | None) -> None:
    """Every server scenario (`--suite all`), or one; the suite's own exit code is not ours: we compare."""
    which = ["--scenario", scenario] if scenario else ["--suite", "all"]
    command = [str(NODE), str(SUITE), "server", *which, "--url", url, "--output-dir", str(output)]
    done = subprocess.run(command, capture_output=True, cwd=output.parent, timeout=300, check=False)
    if not any(output.glob("server-*/checks.json")):
        raise SystemExit(f"the suite wrote no results for {url}:\n{done.stdout.decode()}\n{done.stderr.decode()}")


def expected_failures(path: Path = EXPECTED) -> dict[tuple[str, str], str]:
    """(scenario, check) -> the protocol's reason it may pass directly and not through a gateway."""
    if not path.is_file():
        return {}
    entries = tomllib.loads(path.read_text()).get("expected", [])
    named: dict[tuple[str, str], str] = {}
    for index, entry in enumerate(entries):
        where = f"{path.name}: expected[{index}]"
        if not all(isinstance(entry.get(key), str) and entry[key].strip() for key in ("scenario", "check", "reason")):
            raise SystemExit(f"{where}: needs scenario, check and reason (non-empty strings)")
        named[(entry["scenario"], entry["check"])] = entry["reason"]
    return named


def tally(checks: dict[str, Check]) -> str:
    passed = sum(c.status == "SUCCESS" for c in checks.values())
    failed = sum(c.status == "FAILURE" for c in checks.values())
    warned = sum(c.status == "WARNING" for c in checks.values())
    return f"{passed:>2} ok {failed:>2} failed" + (f" {warned} warned" if warned else "")


def compare(direct: Results, gateway: Results, expected: dict[tuple[str, str], str]) -> int:
    """Print both side by side; the number of unexpected losses and stale expectations."""
    width = max(len(s) for s in direct | gateway) + 2
    print(f"{'scenario':<{width}}{'directly':<26}{'through Countersign':<26}")
    losses: list[str] = []
    excused: set[tuple[str, str]] = set()
    for scenario in sorted(direct.keys() | gateway.keys()):
        here, there = direct.get(scenario, {}), gateway.get(scenario, {})
        mark = ""
        for check, outcome in sorted(here.items()):
            through = there.get(check, Check("MISSING", "the check did not run through the gateway"))
            if outcome.status != "SUCCESS" or through.status == "SUCCESS":
                continue
            key = (scenario, check)
            if key in expected:
                excused.add(key)
                mark = mark or "  (expected)"
                continue
            mark = "  <-- lost"
            losses.append(f"{scenario} / {check}: {through.status}: {through.message}")
        print(f"{scenario:<{width}}{tally(here):<26}{tally(there):<26}{mark}")
    all_direct = {f"{s}/{c}": v for s, checks in direct.items() for c, v in checks.items()}
    all_gateway = {f"{s}/{c}": v for s, checks in gateway.items() for c, v in checks.items()}
    print(f"{'total':<{width}}{tally(all_direct):<26}{tally(all_gateway):<26}")
    for key in sorted(excused):
        print(f"expected: {key[0]} / {key[1]}: {expected[key]}")
    stale = sorted(set(expected) - excused)
    for scenario, check in stale:
        print(f"STALE expected failure (it no longer fails through the gateway): {scenario} / {check}")
    for loss in losses:
        print(f"LOST through the gateway: {loss}")
    return len(losses) + len(stale)


def main() -> int:
    parser = argparse.ArgumentParser(description="The MCP conformance suite, directly and through Countersign.")
    parser.add_argument("--output", type=Path, help="keep the suite's results and the logs here")
    parser.add_argument("--scenario", help="run only this server scenario (default: all of them)")
    parser.add_argument("--policy", type=Path, help="the gateway's policy document (default: allow everything)")
    args = parser.parse_args()
    problem = missing()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    with ExitStack() as stack:
        work = args.output.resolve() if args.output else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        policy: dict[str, object] = json.loads(args.policy.read_text()) if args.policy else ALLOW_ALL
        with targets(work, policy) as urls:
            for name, url in urls.items():
                run_suite(url, work / name, args.scenario)
        results = {name: read_results(work / name) for name in urls}
        bad = compare(results["direct"], results["gateway"], expected_failures())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
