"""
Profile mtlsd under load with py-spy: where its CPU goes per connection.

    python bench/profile.py [--mode full|resumed|bulk] [--seconds 20]

Starts the C echo backend and `twistd -n mtlsd --forward` (pinned to the
first CPU, as in run.py) under `py-spy record` (sampling at 200 Hz, native
frames included), drives it from the second CPU with bench/loadgen.py
(`full`: full handshakes with a 1-byte echo each; `resumed`: the same,
resuming one session; `bulk`: one connection echoing bytes) for the given
time, then prints the functions with the largest share of samples, inclusive
and self, as markdown.  Needs py-spy (in the `dev` extra) and root or
ptrace permission.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import (  # noqa: E402  (bench/ is not a package)
    LOADGEN,
    Server,
    ecdsaPKI,
    freePort,
    portOpen,
    startBackend,
    stopProcess,
    venvTool,
)


def frameName(frame: str) -> str:
    """
    C{function (file.py:line)} as py-spy writes it, shortened to
    C{function (file.py)}.
    """
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({Path(where).name})" if where else name


def summarise(raw: Path, top: int) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [frameName(f) for f in stack.split(";")[1:]]  # [0] is the process
        total += n
        for name in set(frames):
            inclusive[name] += n
        if frames:
            own[frames[-1]] += n
    lines = [f"{total} samples", "", "| inclusive % | self % | function |", "| --- | --- | --- |"]
    for name, n in inclusive.most_common(top):
        lines.append(f"| {100 * n / total:.1f} | {100 * own[name] / total:.1f} | `{name}` |")
    lines += ["", "| self % | function |", "| --- | --- |"]
    for name, n in own.most_common(top):
        lines.append(f"| {100 * n / total:.1f} | `{name}` |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="py-spy profile of mtlsd under load")
    parser.add_argument("--mode", choices=["full", "resumed", "bulk"], default="full")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    spy = venvTool("py-spy") or shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not installed (pip install -e '.[dev]')")
    cpus = sorted(os.sched_getaffinity(0))
    serverPin = ["taskset", "-c", str(cpus[0])] if len(cpus) > 1 else []
    clientPin = ["taskset", "-c", str(cpus[1])] if len(cpus) > 1 else []
    work = Path(tempfile.mkdtemp(prefix="mtlsd-profile-"))
    backend = daemon = None
    try:
        pki = ecdsaPKI(work / "pki")
        backend, backendPort, _ = startBackend(work, clientPin)
        server = Server("mtlsd", pki, "profile", work, backendPort, serverPin)
        server.port = freePort()
        raw = work / "profile.txt"
        daemon = subprocess.Popen(
            serverPin + server.command(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not portOpen(server.port):
            if time.monotonic() > deadline or daemon.poll() is not None:
                sys.exit("mtlsd did not start")
            time.sleep(0.1)
        common = [
            sys.executable, str(LOADGEN), "--port", str(server.port), "--ca", str(pki.ca),
            "--cert", str(pki.clientCert), "--key", str(pki.clientKey),
            "--time-limit", str(args.seconds + 5),
        ]  # fmt: skip
        if args.mode == "bulk":
            load = [*common[:2], "bulk", *common[2:], "--bytes", str(64 << 30)]
        else:
            load = [*common[:2], "handshakes", *common[2:], "--n", "1000000", "--data"]
            load += ["--resume"] if args.mode == "resumed" else []
        # The load starts first; py-spy attaches to the running daemon, so
        # its start-up is not in the profile.
        generator = subprocess.Popen(
            clientPin + load,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(2)
        subprocess.run(
            [spy, "record", "--rate", "200", "--native", "--format", "raw", "--output", str(raw),
             "--duration", str(int(args.seconds)), "--pid", str(daemon.pid)],
            capture_output=True, timeout=args.seconds + 60, check=True,
        )  # fmt: skip
        os.killpg(generator.pid, signal.SIGKILL)
        generator.wait()
        print(f"## py-spy: mtlsd, {args.mode}, {args.seconds:.0f} s, server on CPU {cpus[0]}\n")
        print(summarise(raw, args.top))
        return 0
    finally:
        stopProcess(daemon)
        stopProcess(backend)
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
