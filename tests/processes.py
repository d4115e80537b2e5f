"""`countersign serve` as real processes: started with a configuration file, stopped, or killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2

from tests.harness import bound_socket


def countersign_command() -> list[str]:
    """The installed console script beside this interpreter, or the module when it is not installed."""
    script = Path(sys.executable).with_name("countersign")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with bound_socket() as probe:
        port: int = probe.getsockname()[1]
        return port


def toml(sections: Mapping[str, Any]) -> str:
    """A TOML document from {"server": {...}, "upstreams": [{...}, ...]}: tables and arrays of tables."""
    lines: list[str] = []
    for name, body in sections.items():
        for table in body if isinstance(body, list) else [body]:
            lines.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in table.items())
            lines.append("")
    return "\n".join(lines)


@dataclass
class Served:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no clean-up, as when a machine or a container dies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def wait_until(self, path: str, *, status: int = 200, within: float = 60) -> httpx2.Response:
        """Poll `path` until it answers `status`; fails with the log if the process exits first."""
        async with httpx2.AsyncClient(timeout=2, trust_env=False) as http:
            with anyio.fail_after(within):
                while True:
                    if self.process.poll() is not None:
                        raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()}")
                    with suppress(httpx2.TransportError):
                        response = await http.get(f"{self.url}{path}")
                        if response.status_code == status:
                            return response
                    await anyio.sleep(0.05)


@contextmanager
def serving(
    folder: Path, name: str, config: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """`countersign serve --config FILE` in its own folder; stopped (if still alive) when the block ends."""
    home = folder / name
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    document = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": port}}
    path = home / "countersign.toml"
    path.write_text(toml(document))
    log = home / "serve.log"
    environment = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*countersign_command(), "serve", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
            cwd=home,
        )
    served = Served(name, port, process, log)
    with ExitStack() as stack:
        stack.callback(served.stop)
        yield served
