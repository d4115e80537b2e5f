"""What `bench_audit_page.py` measures beside page times: CPU per process, and an export's memory."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from bench_gateway import Proc, _plain_pg  # type: ignore[import-not-found]


def cpu_ms(pid: int) -> float:
    """A process's CPU time so far (user + system, all its threads), in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


class ServerCpu:
    """The CPU time of the PostgreSQL backends serving one database (the server runs on this machine)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin: Any = None

    async def __call__(self) -> float:
        import asyncpg  # type: ignore[import-untyped]

        if self.admin is None:
            plain = _plain_pg(self.url)
            self.admin = await asyncpg.connect(plain.render_as_string(hide_password=False), timeout=10)
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        total = 0.0
        for row in rows:
            with contextlib.suppress(FileNotFoundError):  # a backend that has just gone
                total += cpu_ms(row["pid"])
        return total

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()


async def export(client: httpx2.AsyncClient, gateway: Proc, kind: str, params: dict[str, str]) -> None:
    before, hwm_before = gateway.rss_kib(), gateway.hwm_kib()
    peak = before
    done = anyio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gateway.rss_kib())
            await anyio.sleep(0.02)

    rows = size = 0
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        async with client.stream("GET", f"/audit/export.{kind}", params=params) as response:
            assert response.status_code == 200, response.status_code
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                rows += chunk.count(b"\n")
        done.set()
    elapsed = time.perf_counter() - t0
    label = f"export.{kind}" + (f" {params}" if params else " (everything)")
    print(
        f"{label:<40} {elapsed:6.1f} s  {rows:>9,} lines  {size / 2**20:7.1f} MiB  "
        f"RSS {before / 1024:.0f} -> peak {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.1f}), "
        f"VmHWM +{(gateway.hwm_kib() - hwm_before) / 1024:.1f} MiB"
    )
