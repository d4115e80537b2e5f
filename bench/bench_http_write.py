"""The HTTP hop alone: uvicorn's default protocol beside the gateway's (`gateway.http_protocol`).

Run from the repository root:  .venv/bin/python bench/bench_http_write.py [--blocks 20] [--per-block 500]

Two uvicorn servers (uvloop, the same ASGI app answering every POST with a 1.5 KB JSON body, head and
body sent one after the other as the gateway's lean path does) are called over one keep-alive
connection each by a plain socket client, in alternating blocks. Per server: latency p50/mean, the
server process's CPU per request (/proc) and how many reads the client needed per response.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SERVER = r"""
import sys, uvicorn
from gateway.http_protocol import GatheringHTTPProtocol
body = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"' + b"x" * 1400 + b'"}]}}'
head = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": body})
protocol = GatheringHTTPProtocol if sys.argv[2] == "gathering" else "auto"
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop", http=protocol)
"""
REQUEST = b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def one(sock: socket.socket) -> tuple[float, int]:
    """One request: seconds to the whole response, and the reads it took."""
    started = time.perf_counter()
    sock.sendall(REQUEST)
    got, reads = b"", 0
    while True:
        got += sock.recv(65536)
        reads += 1
        head, sep, rest = got.partition(b"\r\n\r\n")
        if sep:
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            if len(rest) >= length:
                return time.perf_counter() - started, reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=20, help="blocks per server (20)")
    parser.add_argument("--per-block", type=int, default=500, help="requests per block (500)")
    args = parser.parse_args()
    kinds = ("default", "gathering")
    servers = {}
    try:
        for kind in kinds:
            port = free_port()
            argv = [sys.executable, "-c", SERVER, str(port), kind]
            servers[kind] = (subprocess.Popen(argv, cwd=REPO), connect(port))
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu = dict.fromkeys(kinds, 0.0)
        reads = dict.fromkeys(kinds, 0)
        for kind in kinds:
            for _ in range(100):
                one(servers[kind][1])
        for block in range(args.blocks):
            for kind in kinds if block % 2 == 0 else reversed(kinds):
                proc, sock = servers[kind]
                cpu0 = cpu_seconds(proc.pid)
                for _ in range(args.per_block):
                    took, count = one(sock)
                    times[kind].append(took)
                    reads[kind] += count
                cpu[kind] += cpu_seconds(proc.pid) - cpu0
        for kind in kinds:
            ms = sorted(t * 1000 for t in times[kind])
            n = len(ms)
            print(
                f"{kind:<10} n={n}  p50 {ms[n // 2]:.3f} ms  mean {statistics.fmean(ms):.3f} ms  "
                f"server CPU/request {cpu[kind] * 1e6 / n:.0f} us  client reads/response {reads[kind] / n:.2f}"
            )
    finally:
        for proc, sock in servers.values():
            sock.close()
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
