"""
Before/after: mtlsd at an earlier commit against the working tree, side by
side, for the figures an optimisation claims.

    python bench/ab.py [--before REV] [--rounds N] [--n CONNECTIONS]

Checks REV (default HEAD) out into a temporary git worktree and starts two
daemons as run.py starts mtlsd (`--forward` to the C echo backend, pinned to
the first CPU, the load on the second): one importing mtlsd from that
worktree (PYTHONPATH), one from this checkout.  Then, in interleaved rounds
(A B A B ...), the server CPU per full handshake, per resumed handshake and
per usable connection, with the same load generator.  Prints the medians and
the after/before ratios as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from run import (  # noqa: E402  (bench/ is not a package)
    BENCH,
    Server,
    Settings,
    ecdsaPKI,
    log,
    measureBulk,
    measureHandshakes,
    measureLatency,
    measureMemory,
    startBackend,
    stopProcess,
)


def bulkCPU(server: Server, settings: Settings) -> dict[str, Any]:
    result = measureBulk(server, settings)
    return {"us": result["cpuPerGiB"], "note": f"{result['mbps']:.0f} MB/s"}


def latency(server: Server, settings: Settings) -> dict[str, Any]:
    return {"us": measureLatency(server, settings)["p50"], "note": ""}


def memory(server: Server, settings: Settings) -> dict[str, Any]:
    result = measureMemory(server, settings)  # on a fresh server, stopped after
    server.start()
    return {"us": result["perConn"], "note": result["note"]}


ROWS = {
    "full": ("Full handshake: server CPU µs", partial(measureHandshakes, data=False)),
    "resumed": (
        "Resumed handshake: server CPU µs",
        partial(measureHandshakes, data=False, resume=True),
    ),
    "usable": ("Usable connection: server CPU µs", partial(measureHandshakes, data=True)),
    "bulk": ("Bulk, 256 MiB each way: server CPU s per GiB", bulkCPU),
    "latency": ("64 B round trip, p50 µs (client side)", latency),
    "memory": ("Memory per idle connection (2,000 held), KiB", memory),
}


def main() -> int:
    parser = argparse.ArgumentParser(description="mtlsd before/after, side by side")
    parser.add_argument("--before", default="HEAD", help="the earlier revision (default HEAD)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=300, help="connections per cell and round")
    parser.add_argument(
        "--rows", default="full,resumed,usable", help=f"some of {','.join(ROWS)}, comma-separated"
    )
    args = parser.parse_args()
    repository = BENCH.parent
    cpus = sorted(os.sched_getaffinity(0))
    serverPin = ["taskset", "-c", str(cpus[0])] if len(cpus) > 1 else []
    clientPin = ["taskset", "-c", str(cpus[1])] if len(cpus) > 1 else []
    work = Path(tempfile.mkdtemp(prefix="mtlsd-ab-"))
    tree = work / "before"
    subprocess.run(["git", "-C", str(repository), "worktree", "add", "--detach", str(tree),
                    args.before], check=True, capture_output=True)  # fmt: skip
    backend = None
    servers: dict[str, Server] = {}
    try:
        pki = ecdsaPKI(work / "pki")
        backend, backendPort, _ = startBackend(work, clientPin)
        before = dict(os.environ, PYTHONPATH=str(tree))
        for label, env in (("before", before), ("after", None)):
            servers[label] = Server("mtlsd", pki, label, work, backendPort, serverPin, env=env)
            servers[label].start()
        settings = Settings(args.rounds, 0, args.n, 256 << 20, 2000, 2000, 0, clientPin)
        rows = {name: ROWS[name] for name in args.rows.split(",")}
        values: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}")
            for row, (_, measure) in rows.items():
                for label, server in servers.items():
                    result = measure(server, settings)
                    values.setdefault((row, label), []).append(result["us"])
                    log(f"  {row} {label}: {result['us']:,.0f} {result['note']}")
        described = subprocess.run(["git", "-C", str(repository), "describe", "--always",
                                    "--dirty"], capture_output=True, text=True).stdout.strip()  # fmt: skip
        print(f"## before ({args.before}) / after ({described}), {args.rounds} interleaved rounds "
              f"of {args.n} connections, medians\n")  # fmt: skip
        print("| Metric | before | after | after/before |\n| --- | --- | --- | --- |")
        for row, (title, _) in rows.items():
            a = statistics.median(values[(row, "before")])
            b = statistics.median(values[(row, "after")])
            print(f"| {title} ↓ | {a:,.2f} | {b:,.2f} | {b / a:.2f} |")
        return 0
    finally:
        for server in servers.values():
            server.stop()
        stopProcess(backend)
        subprocess.run(["git", "-C", str(repository), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
