"""Benchmark the audit page and its export through the running gateway, at 1,000,000 events.

Fills a fresh database with a realistic month of audit events (the mix of `bench_audit.py`: reads,
refusals, rate limits and held cancels with their whole story), chained and keyed as a gateway
writes them but inserted in bulk (PostgreSQL: COPY, then VACUUM ANALYZE), the newest a minute
ago. Then it starts `countersign serve` on that database, signs in to the web pages as an
approver, and measures:

- filtered pages of `/audit` (each filter in turn, rounds interleaved): p50 / p95 / max per filter
  and over all of them, plus the first (cold) load, which also reads the filter menus;
- the activity chart (`/audit/activity`) for the same filters;
- a full CSV and JSON export, streamed and read to the end: time, rows, bytes, and the gateway's
  RSS growth while it ran (VmRSS sampled every 20 ms, and VmHWM).

Run from the repository root:
    .venv/bin/python bench/bench_audit_page.py [--events 1000000] [--rounds 20] [--database-url URL]
Without --database-url it uses a SQLite file in a temporary directory; with one, a fresh database
`cs_bench_<random>` is created on that server and dropped at the end.
"""

from __future__ import annotations

import argparse
import html
import itertools
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx2
from argon2 import PasswordHasher
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_audit import BENCH_KEY, RARE_ORDER, traffic  # type: ignore[import-not-found]  # noqa: E402
from bench_audit_measure import ServerCpu, cpu_ms, export  # type: ignore[import-not-found]  # noqa: E402
from bench_gateway import (  # type: ignore[import-not-found]  # noqa: E402
    Proc,
    create_pg_database,
    drop_pg_database,
    free_port,
    percentile,
    start_process,
    toml_value,
    wait_healthy,
)

from approvals import audit  # noqa: E402
from approvals.audit_index import AuditTextIndexer  # noqa: E402
from approvals.db import Database  # noqa: E402
from approvals.models import AuditEvent  # noqa: E402

_table = AuditEvent.__table__  # type: ignore[attr-defined]
SPAN = timedelta(days=30)
CHUNK = 20_000
PASSWORD = "bench-password"
COLUMNS = [c.name for c in _table.columns]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- filling


async def fill(db: Database, total: int, seed: int) -> datetime:
    """Append `total` events spread over the 30 days up to a minute ago; returns the newest one's time."""
    rng = random.Random(seed)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    start = end - SPAN
    step = SPAN / total
    key = db.audit_key
    last: tuple[int, str, bool] | None = None
    seq = 0
    started = time.perf_counter()
    events = traffic(rng)
    for offset in range(0, total, CHUNK):
        batch = []
        for event in itertools.islice(events, min(CHUNK, total - offset)):
            seq += 1
            batch.append((event, start + step * seq))
        # Chained and hashed as the gateway's own appends are (approvals.audit.chain_rows).
        rows = audit.chain_rows(last, batch, key)
        last = (rows[-1]["seq"], rows[-1]["hash"], key is not None)
        async with db.write() as conn:
            if db.is_sqlite:
                await conn.execute(_table.insert(), rows)
            else:
                raw = await conn.get_raw_connection()
                records = [tuple(r[c] for c in COLUMNS) for r in rows]
                await raw.driver_connection.copy_records_to_table("audit_event", records=records, columns=COLUMNS)
        if (offset // CHUNK) % 10 == 9:
            log(f"  {offset + CHUNK:,} events")
    if not db.is_sqlite:
        # What autovacuum does to a table a month old: statistics, and the visibility map index-only scans need.
        async with db.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM ANALYZE audit_event")
    log(f"filled {total:,} events in {time.perf_counter() - started:.0f}s")
    if db.is_sqlite:
        # What the gateway's indexer (approvals.audit_index) would have done as the events came.
        started = time.perf_counter()
        indexed = await AuditTextIndexer(db, batch=CHUNK).catch_up()
        log(f"indexed {indexed:,} events for search in {time.perf_counter() - started:.0f}s")
    return end


async def filled(db: Database) -> datetime | None:
    """The newest event's time in a database filled by an earlier run (`--reuse`); None when it is empty."""
    async with db.read() as conn:
        newest = (await conn.execute(select(func.max(_table.c.at)))).scalar_one()
    if newest is None:
        return None
    return newest if newest.tzinfo else newest.replace(tzinfo=UTC)


# ---- the gateway


def config(workdir: Path, port: int, database_url: str) -> Path:
    policy = workdir / "policy.json"
    policy.write_text('{"version": "1", "default": "allow", "tools": {}}')
    password_hash = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    sections: list[tuple[str, dict[str, Any]]] = [
        ("[server]", {"host": "127.0.0.1", "port": port, "database_url": database_url}),
        ("[audit]", {"key": BENCH_KEY.decode()}),
        ("[policy]", {"file": str(policy)}),
        ("[web]", {"session_secret": "bench-session-secret-0123456789abcdef", "failed_signin_delay": 0}),
        ("[[approvers]]", {"name": "alice", "groups": ["audit"], "password_hash": password_hash}),
    ]
    path = workdir / "countersign.toml"
    path.write_text(
        "\n".join(
            header + "\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in body.items()) for header, body in sections
        )
    )
    return path


async def signed_in(base_url: str) -> httpx2.AsyncClient:
    client = httpx2.AsyncClient(base_url=base_url, timeout=600.0, trust_env=False)
    form = await client.get("/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, form.text[:500]
    response = await client.post(
        "/signin",
        data={"name": "alice", "password": PASSWORD, "csrf_token": html.unescape(token.group(1)), "next": "/audit"},
    )
    assert response.status_code == 303, response.text[:500]
    return client


# ---- measuring


def filters(newest: datetime, total: int) -> list[tuple[str, dict[str, str]]]:
    day = (newest - SPAN / 2).strftime("%Y-%m-%d")
    older = str(total * 7 // 8)
    return [
        ("no filter", {}),
        ("tool=ibkr_cancel_order", {"tool": "ibkr_cancel_order"}),
        ("agent=hedger", {"agent": "hedger"}),
        ("outcome=rejected", {"outcome": "rejected"}),
        ("outcome=failed (rare)", {"outcome": "failed"}),
        ("approver=alice", {"approver": "alice"}),
        ("one day", {"since": day, "until": day}),
        ("tool+outcome+day", {"tool": "ibkr_cancel_order", "outcome": "approved", "since": day, "until": day}),
        ("request id", {"request": "apr_bench0000777"}),
        ("agent=hedger, deep page", {"agent": "hedger", "before": str(total // 4)}),
        ("text 'AAPL'", {"q": "AAPL"}),
        (f"text '{RARE_ORDER}' (one match)", {"q": str(RARE_ORDER)}),
        ("text 'AAPL' + agent=hedger", {"q": "AAPL", "agent": "hedger"}),
        ("text 'AAPL', one day", {"q": "AAPL", "since": day, "until": day}),
        ("text 'cancel' + outcome=approved", {"q": "cancel", "outcome": "approved"}),
        ("text 'cancel' + outcome=approved, older", {"q": "cancel", "outcome": "approved", "before": older}),
        ("text 'cancel' + agent=hedger", {"q": "cancel", "agent": "hedger"}),
        (f"text '{RARE_ORDER}' + agent=hedger", {"q": str(RARE_ORDER), "agent": "hedger"}),
        ("text 'AAPL', deep page", {"q": "AAPL", "before": str(total // 4)}),
        ("text 'AAPL', newer page", {"q": "AAPL", "after": str(total // 2)}),
        ("text 'PY' (two characters: no index)", {"q": "PY"}),
        ("outcome=approved, newer page", {"outcome": "approved", "after": str(total // 2)}),
        ("last week", {"since": (newest - timedelta(days=7)).strftime("%Y-%m-%d")}),
    ]


async def timed_get(client: httpx2.AsyncClient, path: str, params: dict[str, str]) -> float:
    t0 = time.perf_counter()
    response = await client.get(path, params=params)
    elapsed = (time.perf_counter() - t0) * 1000
    assert response.status_code == 200, f"{path} {params}: {response.status_code} {response.text[:300]}"
    return elapsed


Cases = Sequence[tuple[str, dict[str, str]]]


@dataclass
class Target:
    """A running gateway the pages are loaded from: this checkout's, or a baseline's (`--baseline`)."""

    name: str
    client: httpx2.AsyncClient
    gateway: Proc


async def pages(targets: list[Target], path: str, cases: Cases, rounds: int, server: ServerCpu | None) -> None:
    """Each case `rounds` times from each target, the targets alternated load by load (order swapped each round)."""
    t0 = time.perf_counter()
    for target in targets:
        cold = await timed_get(target.client, path, {})
        cold_note = " (cold: the filter menus are read)" if path == "/audit" else ""
        print(f"\n{path} [{target.name}]: first load{cold_note} {cold:.1f} ms")
    times = {(t.name, label): [] for t in targets for label, _ in cases}  # type: dict[tuple[str, str], list[float]]
    cpu = {key: 0.0 for key in times}
    db_cpu = {key: 0.0 for key in times}
    for n in range(rounds):
        for label, params in cases:
            for target in targets if n % 2 == 0 else list(reversed(targets)):
                key = (target.name, label)
                c0, s0 = cpu_ms(target.gateway.pid), (await server() if server else 0.0)
                times[key].append(await timed_get(target.client, path, params))
                cpu[key] += (cpu_ms(target.gateway.pid) - c0) / rounds
                db_cpu[key] += ((await server() if server else 0.0) - s0) / rounds
    width = max(len(label) for label, _ in cases)
    server_head = f"  {'PG CPU ms':>9}" if server else ""
    head = f"{'p50 ms':>8}  {'p95 ms':>8}  {'max ms':>8}  {'gw CPU ms':>9}{server_head}"
    print(f"{'filter'.ljust(width)}  " + "  |  ".join(f"{t.name}: {head}" for t in targets))
    for label, _ in cases:
        cells = []
        for target in targets:
            key = (target.name, label)
            values = times[key]
            p50, p95 = percentile(values, 50), percentile(values, 95)
            server_cell = f"  {db_cpu[key]:9.1f}" if server else ""
            cells.append(f"{target.name}: {p50:8.1f}  {p95:8.1f}  {max(values):8.1f}  {cpu[key]:9.1f}{server_cell}")
        print(f"{label.ljust(width)}  " + "  |  ".join(cells))
    for target in targets:
        print(f"[{target.name}]")
        report({label: times[(target.name, label)] for label, _ in cases}, width)
    print(f"({rounds} rounds of {len(cases)} filters x {len(targets)} gateways in {time.perf_counter() - t0:.1f}s)")


def report(times: dict[str, list[float]], width: int) -> None:
    indexed = [v for label, values in times.items() if not label.startswith("text") for v in values]
    every = [v for values in times.values() for v in values]
    if indexed:
        print(f"{'all but text search'.ljust(width)}  {percentile(indexed, 50):8.1f}  {percentile(indexed, 95):8.1f}")
    print(f"{'all'.ljust(width)}  {percentile(every, 50):8.1f}  {percentile(every, 95):8.1f}")


async def in_process(url: str, cases: Cases, rounds: int) -> None:
    """The queries `/audit` makes for each filter (`bounded`, a page, its count), timed in this process."""
    from starlette.datastructures import QueryParams

    from approvals.approvers import ApproverDirectory
    from approvals.audit_pages import read_page
    from approvals.service import ApprovalService
    from gateway.web.audit_views import COUNT_CAP, TEXT_COUNT_CAP, AuditQuery, page_bound

    db = Database(url, audit_key=BENCH_KEY)
    history = ApprovalService(db, ApproverDirectory([])).history
    times: dict[str, list[float]] = {label: [] for label, _ in cases}
    cpu = {label: 0.0 for label, _ in cases}
    try:
        for _ in range(rounds):
            for label, params in cases:
                query, given = AuditQuery.from_params(QueryParams(params)), QueryParams(params)
                before, after = page_bound(given, "before"), page_bound(given, "after")
                c0, t0 = time.process_time(), time.perf_counter()
                cap, defer = (TEXT_COUNT_CAP if query.q else COUNT_CAP), bool(query.q) and not db.is_sqlite
                await read_page(history, query.filters(), before=before, after=after, cap=cap, defer_count=defer)
                times[label].append((time.perf_counter() - t0) * 1000)
                cpu[label] += (time.process_time() - c0) * 1000 / rounds
    finally:
        await db.dispose()
    width = max(len(label) for label, _ in cases)
    print(f"\nthe same queries in process (read_page: bounded, window, page, count): {rounds} rounds")
    print(f"{'filter'.ljust(width)}  {'p50 ms':>8}  {'p95 ms':>8}  {'max ms':>8}  {'CPU ms':>8}")
    for label, values in times.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        print(f"{label.ljust(width)}  {p50:8.1f}  {p95:8.1f}  {max(values):8.1f}  {cpu[label]:8.1f}")
    report(times, width)


async def main_async(args: argparse.Namespace) -> None:
    procs: list[Proc] = []
    pg_name: str | None = None
    with tempfile.TemporaryDirectory(prefix="cs-bench-audit-page-") as tmp:
        workdir = Path(tmp)
        if args.reuse:
            url = args.reuse
        elif args.database_url:
            pg_name, url = await create_pg_database(args.database_url)
        else:
            url = f"sqlite:///{workdir / 'countersign.db'}"
        try:
            db = Database(url, audit_key=BENCH_KEY)
            try:
                await db.create_schema()
                newest = await filled(db) if args.reuse else None
                if newest is None:
                    log(f"database: {'SQLite file' if db.is_sqlite else 'PostgreSQL'}; filling {args.events:,} events")
                    newest = await fill(db, args.events, args.seed)
                else:
                    log("database: reusing its events")
            finally:
                await db.dispose()
            cases = filters(newest, args.events)
            if not args.http:
                await in_process(url, cases, args.rounds)
                print(f"(load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
                return
            started: list[tuple[str, str, Proc]] = []
            checkouts = [("this", REPO)] + ([("base", args.baseline)] if args.baseline else [])
            for name, checkout in checkouts:
                port = free_port()
                python = sys.executable if checkout == REPO else str(checkout / ".venv" / "bin" / "python")
                (workdir / name).mkdir()
                cfg = config(workdir / name, port, url)
                argv = [python, "-m", "gateway.cli", "serve", "--config", str(cfg)]
                # Run from the checkout itself: `python -m` imports the package in its working directory first.
                proc = start_process(f"gateway-{name}", argv, workdir, procs, cwd=checkout)
                base_url = f"http://127.0.0.1:{port}"
                await wait_healthy(proc, f"{base_url}/healthz", lambda _: True, within=120)
                started.append((name, base_url, proc))
            # Signed in once every gateway serves: a gateway starting ends the web sessions before it.
            targets = [Target(name, await signed_in(base_url), proc) for name, base_url, proc in started]
            client, gateway = targets[0].client, targets[0].gateway
            try:
                backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
                rss = gateway.rss_kib() / 1024
                print(f"\naudit page with {args.events:,} events ({backend}), gateway RSS {rss:.0f} MiB")
                server = None if url.startswith("sqlite") else ServerCpu(url)
                try:
                    await pages(targets, "/audit", cases, args.rounds, server)
                    if server is not None:  # the count a PostgreSQL search loads after its page
                        counted = [(label, p) for label, p in cases if "q" in p and {"before", "after"}.isdisjoint(p)]
                        await pages(targets[:1], "/audit/count", counted, args.rounds, server)
                    if args.activity:
                        activity = [(label, p) for label, p in cases if "before" not in p]
                        await pages(targets, "/audit/activity", activity, args.rounds, server)
                finally:
                    if server is not None:
                        await server.close()
                await in_process(url, cases, args.rounds)
                print(f"(load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
                if not args.exports:
                    return
                print()
                await export(client, gateway, "csv", {"tool": "ibkr_cancel_order"})
                await export(client, gateway, "csv", {})
                await export(client, gateway, "json", {})
            finally:
                for target in targets:
                    await target.client.aclose()
        finally:
            for proc in procs:
                proc.stop()
            if pg_name is not None:
                await drop_pg_database(args.database_url, pg_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20, help="page loads per filter (20)")
    parser.add_argument("--database-url", help="a PostgreSQL server to create a fresh database on (default: SQLite)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--reuse",
        metavar="URL",
        help="a database URL (sqlite:///file or postgresql://…/name) filled by an earlier run, kept afterwards;"
        " filled first when empty. Lets two checkouts be measured on the same events",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout (with its own .venv) whose gateway serves the same database beside this one's;"
        " page loads alternate between the two",
    )
    parser.add_argument("--no-activity", dest="activity", action="store_false", help="skip /audit/activity")
    parser.add_argument("--no-http", dest="http", action="store_false", help="the in-process queries only")
    parser.add_argument("--no-exports", dest="exports", action="store_false", help="pages only")
    args = parser.parse_args()
    args.baseline = args.baseline and Path(args.baseline).resolve()
    anyio.run(main_async, args)


if __name__ == "__main__":
    main()
