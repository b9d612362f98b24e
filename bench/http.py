"""
Benchmark mtlsd's HTTP forwarding mode (`--forward-http`) against HAProxy in
`mode http`, both terminating mutual TLS and adding the client's certificate
as a Client-Cert header (RFC 9440) in front of the same plaintext backend.

    python bench/http.py [--rounds N] [--seconds S] [--connections C] [--json FILE] [--keep]

It installs what it is missing (haproxy, a C compiler, OpenSSL's headers,
with apt-get), makes its own PKI with `mtlsd pki init`, builds the C backend
(bench/httpd.c) and the C load generator (bench/httpload.c), starts both
proxies on 127.0.0.1 (pinned to the first CPU; the load generator and the
backend on the second), checks that the backend sees the client's
certificate through each, then measures small keep-alive GETs in interleaved
rounds and prints one markdown table of medians.  If mtlsd's requests/s are
under half HAProxy's it also profiles mtlsd under the same load with py-spy.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

# This file's name is the standard library's http package's, and Python put
# bench/ first on sys.path: import the real package before anything asks for
# it (then it is the one in sys.modules), and only then bench/ for run.py.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
import http.client  # noqa: E402, F401

sys.path.insert(0, str(Path(__file__).parent))

from run import (  # noqa: E402  (bench/ is not a package)
    BENCH,
    CLK_TCK,
    HOST,
    PKI,
    Metric,
    Server,
    cpuSeconds,
    ecdsaPKI,
    errorNote,
    firstLine,
    lastLine,
    loadAverage,
    log,
    negotiated,
    readLine,
    record,
    run,
    stopProcess,
    venvTool,
)

IMPLS = ("mtlsd", "haproxy")
TITLES = {"mtlsd": "mtlsd --forward-http", "haproxy": "HAProxy mode http"}
TARGET = 0.5  # the issue's: mtlsd's requests/s at least half HAProxy's


# --- tools -----------------------------------------------------------------------


def ensureTools() -> None:
    """
    Install haproxy, a C compiler and OpenSSL's headers with apt-get if any is
    missing (apt-get update first).  Raises if something is still missing.
    """
    wanted = {
        "haproxy": shutil.which("haproxy") is not None,
        "gcc": (shutil.which("cc") or shutil.which("gcc")) is not None,
        "libssl-dev": Path("/usr/include/openssl/ssl.h").exists(),
        "util-linux": shutil.which("taskset") is not None,
    }
    missing = [pkg for pkg, present in wanted.items() if not present]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {' '.join(missing)} and cannot apt-get install (not root?)")
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], timeout=600, env=env)
    p = run(["apt-get", "install", "-y", "-q", *missing], timeout=900, env=env)
    if p.returncode != 0:
        raise RuntimeError("apt-get install failed: " + lastLine(p.stderr))


def build(work: Path) -> tuple[Path, Path]:
    """
    Compile bench/httpd.c and bench/httpload.c into C{work}.
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    built = []
    for name, libs in [("httpd", []), ("httpload", ["-lssl", "-lcrypto"])]:
        binary = work / name
        p = run([compiler, "-O2", "-o", str(binary), str(BENCH / f"{name}.c"), *libs])
        if p.returncode != 0:
            raise RuntimeError(f"cc {name}.c failed: {lastLine(p.stderr)}")
        built.append(binary)
    return built[0], built[1]


# --- the servers -----------------------------------------------------------------------


class HTTPProxy(Server):
    """
    mtlsd with --forward-http, or HAProxy in mode http, in front of the HTTP
    backend (run.py's Server: start, stop, pid; another command).
    """

    def command(self) -> list[str]:
        p = self.pki
        if self.impl == "mtlsd":
            twistd = venvTool("twistd") or "twistd"
            return [
                twistd, "-n", "--pidfile=", f"--logfile={self.logPath}",
                "mtlsd", "--port", str(self.port), "--interface", HOST,
                "--cert", str(p.serverCert), "--key", str(p.serverKey),
                "--client-certs", str(p.ca),
                "--forward-http", f"tcp:{HOST}:{self.backendPort}",
                "--reload-interval", "0",
            ]  # fmt: skip
        cfg = self.work / f"haproxy-{self.label}.cfg"
        cfg.write_text(haproxyConfig(self.port, p, self.backendPort))
        return [shutil.which("haproxy") or "haproxy", "-f", str(cfg), "-db"]


def haproxyConfig(port: int, p: PKI, backendPort: int) -> str:
    return (
        "global\n"
        "    nbthread 1\n\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 5s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n\n"
        "frontend f\n"
        f"    bind {HOST}:{port} ssl crt {p.serverPem} ca-file {p.ca} verify required\n"
        "    http-request set-header Client-Cert :%[ssl_c_der,base64]:\n"
        "    default_backend b\n\n"
        "backend b\n"
        "    http-reuse always\n"
        f"    server s {HOST}:{backendPort}\n"
    )


def startBackend(binary: Path, pin: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        pin + [str(binary), "0"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        return proc, int(readLine(proc, 30))
    except BaseException:
        stopProcess(proc)
        raise


# --- checks ------------------------------------------------------------------------


def clientContext(p: PKI, certificate: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(p.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if certificate:
        ctx.load_cert_chain(str(p.clientCert), str(p.clientKey))
    return ctx


def get(server: Server, request: bytes, certificate: bool = True) -> tuple[int, bytes]:
    """
    One request on a fresh connection: the answer's status and body.
    """
    with socket.create_connection((HOST, server.port), timeout=10) as raw:
        ctx = clientContext(server.pki, certificate)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    raise EOFError("closed before an answer")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    raise EOFError("closed in the body")
                body += chunk
            return int(lines[0].split()[1]), body


def checkClientCert(server: Server) -> str:
    """
    Send GET /headers (with a forged Client-Cert) and check the head that the
    backend received: one Client-Cert, exactly the client's certificate.
    """
    der = ssl.PEM_cert_to_DER_cert(server.pki.clientCert.read_text())
    expected = b":" + base64.b64encode(der) + b":"
    sent = [b"host", b"client-cert"]
    request = b"GET /headers HTTP/1.1\r\nHost: localhost\r\nClient-Cert: :Zm9yZ2Vk:\r\n\r\n"
    try:
        status, body = get(server, request)
    except (OSError, ssl.SSLError, ValueError, IndexError) as e:
        raise RuntimeError(f"GET /headers failed: {e}") from e
    if status != 200:
        raise RuntimeError(f"GET /headers answered {status}")
    headers = []
    for line in body.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers.append((name.strip().lower(), value.strip()))
    values = [v for n, v in headers if n == b"client-cert"]
    if values != [expected]:
        raise RuntimeError(
            f"the backend saw Client-Cert {[v[:40] for v in values]}, not the client's DER"
        )
    added = sorted({n.decode() for n, _ in headers if n not in sent})
    return (
        "the backend received one `Client-Cert`, the client certificate's DER in base64 "
        f"({len(der)} B; a forged one replaced); added besides: "
        + (", ".join(f"`{n}`" for n in added) or "nothing")
    )


def refusesAnonymous(server: Server) -> str:
    try:
        status, _ = get(server, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", certificate=False)
        return f"no (answered {status})"
    except (ssl.SSLError, ConnectionError, EOFError):
        return "yes"
    except OSError as e:
        return f"? ({e})"


# --- measurements --------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int
    seconds: float
    warmup: float
    connections: int
    httpload: Path
    backend: subprocess.Popen[str]
    clientPin: list[str]


def httpload(
    server: Server, settings: Settings, connections: int, seconds: float | None = None
) -> subprocess.Popen[str]:
    p = server.pki
    cmd = settings.clientPin + [
        str(settings.httpload), "--port", str(server.port), "--ca", str(p.ca),
        "--cert", str(p.clientCert), "--key", str(p.clientKey),
        "--connections", str(connections), "--seconds", str(seconds or settings.seconds),
        "--warmup", str(settings.warmup),
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def expect(proc: subprocess.Popen[str], word: str, timeout: float) -> None:
    line = readLine(proc, timeout).strip()
    if line != word:
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = ""
        raise RuntimeError(f"load generator: {lastLine(err) or line or 'ended'}")


def rest(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """
    The rest of what C{proc} prints, once it has exited.  (Not communicate():
    it reads the pipe's descriptor and would miss what readLine's buffered
    reads already took.)
    """
    proc.wait(timeout)
    assert proc.stdout is not None and proc.stderr is not None
    return proc.stdout.read(), proc.stderr.read()


def measure(server: Server, settings: Settings, connections: int) -> dict[str, Any]:
    """
    One httpload run: its figures, with the server's CPU (and the backend's)
    read from /proc when the measured interval starts and ends.
    """
    proc = httpload(server, settings, connections)
    limit = settings.warmup + settings.seconds + 60
    try:
        expect(proc, "start", limit)
        server0, backend0 = cpuSeconds(server.pid), cpuSeconds(settings.backend.pid)
        expect(proc, "end", limit)
        server1, backend1 = cpuSeconds(server.pid), cpuSeconds(settings.backend.pid)
        out, err = rest(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {lastLine(err)}")
    result = json.loads(out.strip().splitlines()[-1])
    n, wall = result["requests"], result["wall"]
    if n == 0:
        raise RuntimeError(errorNote(result["errors"]) or "no request answered")
    note = errorNote(result["errors"])
    if result["alive_at_end"] != connections:
        note = f"{connections - result['alive_at_end']} connections lost" + (
            f"; {note}" if note else ""
        )
    return {
        "rps": n / wall,
        "p50": result["p50_us"],
        "p99": result["p99_us"],
        "us": (server1 - server0) / n * 1e6,
        "busy": 100 * (server1 - server0) / wall,
        "cpu1": 100 * (result["client_cpu"] + backend1 - backend0) / wall,
        "note": note,
    }


def makeMetrics(settings: Settings) -> dict[str, Metric]:
    c = settings.connections
    metrics = [
        Metric("rps", f"Requests/s, {c} keep-alive connections ↑", 0),
        Metric("p50", "Latency p50, 1 connection, µs ↓", 0),
        Metric("p99", "Latency p99, 1 connection, µs ↓", 0),
        Metric("us", f"Server CPU µs per request, {c} connections ↓", 1),
        Metric("us1", "Server CPU µs per request, 1 connection ↓", 1),
        Metric("p50many", f"Latency p50, {c} connections, µs ↓", 0),
        Metric("busy", f"Server CPU busy %, {c} connections (100 = server-bound)", 0, False),
        Metric("cpu1", f"CPU 1 busy % (load generator + backend), {c} connections", 0, False),
    ]
    return {m.key: m for m in metrics}


def oneRound(metrics: dict[str, Metric], server: Server, settings: Settings) -> None:
    many = {"rps": "rps", "us": "us", "p50": "p50many", "busy": "busy", "cpu1": "cpu1"}
    record(metrics, server.impl, many, partial(measure, server, settings, settings.connections))
    one = {"p50": "p50", "p99": "p99", "us": "us1"}
    record(metrics, server.impl, one, partial(measure, server, settings, 1))


# --- profile ---------------------------------------------------------------------------


def profile(server: Server, settings: Settings, seconds: float, work: Path) -> str:
    """
    py-spy (200 Hz, native frames, pinned beside the load generator) on mtlsd
    under the throughput load; the summary as bench/profile.py prints it.
    """
    spy = venvTool("py-spy") or shutil.which("py-spy")
    if spy is None:
        return "py-spy is not installed (pip install -e '.[dev]')"
    spec = importlib.util.spec_from_file_location("bench_profile", BENCH / "profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = work / "py-spy.txt"
    proc = httpload(server, settings, settings.connections, seconds + 5)
    try:
        expect(proc, "start", settings.warmup + 60)
        spied = run(
            settings.clientPin + [
                spy, "record", "--rate", "200", "--native", "--format", "raw",
                "--output", str(raw), "--duration", str(int(seconds)), "--pid", str(server.pid),
            ],
            timeout=seconds + 60,
        )  # fmt: skip
        out, _ = rest(proc, seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if spied.returncode != 0 or not raw.exists():
        return f"py-spy failed: {lastLine(spied.stderr)}"
    result = json.loads(out.strip().splitlines()[-1])
    return (
        f"While sampled: {result['rps']:,.0f} requests/s (py-spy slows the process it samples).\n\n"
        + module.summarise(raw, 45)
    )


# --- main ---------------------------------------------------------------------------


def versions() -> list[str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    found = {}
    for module in ("twisted", "h11"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            found[module] = "?"
    try:
        from OpenSSL import SSL

        pyopenssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:
        pyopenssl = "?"
    git = firstLine(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"])
    return [
        f"- machine: {platform.machine()}, nproc {len(os.sched_getaffinity(0))}, {model}; "
        f"kernel {platform.system()} {platform.release()}",
        f"- python {platform.python_version()}, twisted {found['twisted']}, h11 {found['h11']}, "
        f"mtlsd at {git} (pyOpenSSL on {pyopenssl})",
        f"- haproxy: {firstLine([shutil.which('haproxy') or 'haproxy', '-v'])}",
        f"- openssl: {firstLine(['openssl', 'version'])} (HAProxy's and the load generator's)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="mtlsd --forward-http vs HAProxy mode http")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="measured seconds per run (default 8)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    parser.add_argument(
        "--connections", type=int, default=12, help="connections of the requests/s row"
    )
    parser.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="auto",
        help="py-spy on mtlsd afterwards (auto: if requests/s are under 0.5x HAProxy's)",
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    loadStart = loadAverage()
    command = "python bench/http.py " + " ".join(sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    ensureTools()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        serverPin = ["taskset", "-c", str(cpus[0])]
        clientPin = ["taskset", "-c", str(cpus[1])]
        pinning = (
            f"each proxy on CPU {cpus[0]}; the load generator and the backend share "
            f"CPU {cpus[1]} (taskset)"
        )
    else:
        serverPin, clientPin = [], []
        pinning = "none (needs 2 CPUs)"

    work = Path(tempfile.mkdtemp(prefix="mtlsd-bench-http-"))
    backend: subprocess.Popen[str] | None = None
    servers: dict[str, Server] = {}
    try:
        pki = ecdsaPKI(work / "pki")
        httpd, loader = build(work)
        backend, backendPort = startBackend(httpd, clientPin)
        log(f"backend: bench/httpd.c on port {backendPort}")
        settings = Settings(
            rounds=max(1, args.rounds),
            seconds=args.seconds,
            warmup=args.warmup,
            connections=args.connections,
            httpload=loader,
            backend=backend,
            clientPin=clientPin,
        )
        metrics = makeMetrics(settings)

        checks: list[str] = []
        for impl in IMPLS:
            server = servers[impl] = HTTPProxy(impl, pki, "http", work, backendPort, serverPin)
            server.start()
            # Like for like, or nothing: each must hand the backend the
            # client's certificate.
            checks.append(f"  - {TITLES[impl]}: {checkClientCert(server)}")
            checks.append(
                f"    TLS: {negotiated(server)}; refuses a client without certificate: "
                f"{refusesAnonymous(server)}"
            )
        for line in checks:
            log(line.strip())

        loads = []
        for r in range(settings.rounds):
            loads.append(os.getloadavg()[0])
            log(f"round {r + 1}/{settings.rounds} (load average {loadAverage()})")
            for impl in IMPLS:
                server = servers[impl]
                if not server.alive():
                    log(f"{impl} died, restarting")
                    server.start()
                oneRound(metrics, server, settings)

        rps = {i: metrics["rps"].median(i) for i in IMPLS}
        ratio = rps["mtlsd"] / rps["haproxy"] if rps["mtlsd"] and rps["haproxy"] else None
        spied = ""
        if args.profile == "always" or (
            args.profile == "auto" and ratio is not None and ratio < TARGET
        ):
            log(f"profiling mtlsd for {args.profile_seconds:.0f} s")
            spied = profile(servers["mtlsd"], settings, args.profile_seconds, work)
        loadEnd = loadAverage()
        for server in servers.values():
            server.stop()

        elapsed = time.monotonic() - started
        c = settings.connections
        lines = [
            "## mtlsd --forward-http vs HAProxy mode http: keep-alive GETs over mutual TLS",
            "",
            f"- date: {date}; command: `{command}`; took {elapsed / 60:.1f} min",
            f"- load average (1, 5, 15 min) at the start {loadStart}, at the end {loadEnd}; "
            f"1-min load at each round's start: {', '.join(f'{x:.2f}' for x in loads)}",
            *versions(),
            f"- pinning: {pinning}",
            "- backend: bench/httpd.c (C, epoll, one thread): `HTTP/1.1 200 OK`, "
            "`Content-Length: 2`, `ok` to every request, kept alive",
            "- load generator: bench/httpload.c (C, OpenSSL, epoll, one thread), TLS 1.3, "
            "client certificate; `GET / HTTP/1.1` + `Host`, one request outstanding per "
            "connection, handshakes and a first request before the clock starts; "
            f"{settings.warmup:g} s warm-up, then {settings.seconds:g} s measured per run; "
            f"one run with {c} connections, one with 1",
            "- mtlsd: `twistd -n mtlsd --forward-http tcp:127.0.0.1:BACKEND "
            "--reload-interval 0`, default logging (one line per request, to a file); "
            "HAProxy: `nbthread 1`, `mode http`, `bind ... ssl crt server.pem ca-file ca.crt "
            "verify required`, `http-request set-header Client-Cert :%[ssl_c_der,base64]:`, "
            "`http-reuse always`, timeouts 5 s/60 s/60 s, no `log` (its default: nothing)",
            f"- {settings.rounds} rounds, interleaved (mtlsd, HAProxy, mtlsd, ...); a cell is "
            "the median over rounds, ± half their range; server CPU from /proc/PID/stat "
            f"(1/{CLK_TCK} s ticks) over the measured interval",
            "- checked before measuring (GET /headers, which the backend answers with the "
            "head it received):",
            *checks,
            "",
            "| Metric | mtlsd | HAProxy | mtlsd/HAProxy |",
            "| --- | --- | --- | --- |",
        ]
        for m in metrics.values():
            lines.append(
                f"| {m.title} | {m.cell('mtlsd')} | {m.cell('haproxy')} | {m.ratio('haproxy')} |"
            )
        lines += [
            "",
            "The last column is mtlsd's median divided by HAProxy's on every row. On the ↑ row "
            "(requests/s) higher is better for mtlsd: 0.50 is half HAProxy's throughput. On "
            "the ↓ rows lower is better: 3.00 means three times HAProxy's latency or CPU.",
            "",
            f"Target, requests/s ≥ {TARGET:.1f}× HAProxy's: "
            + (
                "n/a"
                if ratio is None
                else f"{ratio:.2f}×, {'met' if ratio >= TARGET else 'missed'}"
            ),
        ]
        if spied:
            lines += [
                "",
                f"### py-spy: mtlsd --forward-http, {c} keep-alive connections, "
                f"{args.profile_seconds:.0f} s",
                "",
                spied,
            ]
        print("\n".join(lines), flush=True)
        if args.json:
            raw = {
                k: {"title": m.title, "values": m.values, "errors": m.errors}
                for k, m in metrics.items()
            }
            args.json.write_text(
                json.dumps({"date": date, "command": command, "metrics": raw}, indent=1)
            )
        return 0
    finally:
        for server in servers.values():
            server.stop()
        stopProcess(backend)
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
