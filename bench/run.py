"""
Benchmark mtlsd against stunnel and HAProxy as mutual-TLS terminating proxies,
and against the team's two performance anchors: goproxy (Go's crypto/tls) and
lean_relay (pyOpenSSL on a socket BIO, no Twisted), from ../shared/perf/.

    python bench/run.py [--quick] [--rounds N] [--json FILE] [--keep]

It installs what it is missing (stunnel4, haproxy, openssl with apt-get),
makes its own PKI (ECDSA P-256 with `mtlsd pki init`, and RSA-2048 with
openssl), starts one plaintext echo backend and the three proxies in front of
it, all on 127.0.0.1, measures in interleaved rounds and prints one markdown
table of medians.  Server CPU is read from /proc for the server's processes
only, so the load generator's own cost stays out.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
LOADGEN = BENCH / "loadgen.py"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 65536
IMPLS = ("mtlsd", "mtls_endpoint", "stunnel", "haproxy", "goproxy", "lean_relay")
TITLES = {
    "mtlsd": "mtlsd",
    "mtls_endpoint": "mtls: endpoint",
    "stunnel": "stunnel",
    "haproxy": "HAProxy",
    "goproxy": "goproxy",
    "lean_relay": "lean_relay",
}
# mtlsd's ratio to each of these, a column each.
REFERENCES = ("haproxy", "goproxy", "lean_relay")
# The team's performance anchors (not part of mtlsd): Go's crypto/tls relay and
# a bare pyOpenSSL relay on a socket BIO, beside the checkout (MTLSD_PERF_ANCHORS
# names another folder).
ANCHORS = Path(os.environ.get("MTLSD_PERF_ANCHORS", BENCH.parent.parent / "shared" / "perf"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def firstLine(cmd: list[str], containing: str = "") -> str:
    """
    The first line of what C{cmd} prints that has C{containing} in it.
    """
    try:
        p = run(cmd, timeout=20)
        out = [line for line in (p.stdout + p.stderr).splitlines() if containing in line]
        return out[0].strip() if out else "?"
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(t.strip() for t in text[-lines:])[:300]


# --- tools -----------------------------------------------------------------


def venvTool(name: str) -> str | None:
    """
    The console script C{name} next to this Python (the venv's), or on PATH.
    """
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def stunnelPath() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


def ensureTools() -> dict[str, str]:
    """
    Install stunnel4, haproxy and openssl with apt-get if any is missing.
    Returns, for each tool still missing, why.
    """
    wanted = {"openssl": "openssl", "stunnel4": "stunnel", "haproxy": "haproxy"}
    found = {
        "openssl": shutil.which("openssl"),
        "stunnel4": stunnelPath(),
        "haproxy": shutil.which("haproxy"),
    }
    missing = [pkg for pkg, path in found.items() if path is None]
    problems: dict[str, str] = {}
    if missing:
        reason = ""
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            reason = "not root or no apt-get, cannot install"
        else:
            log(f"installing {' '.join(missing)} with apt-get")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            install = ["apt-get", "install", "-y", "-q", *missing]
            try:
                p = run(install, timeout=600, env=env)
                if p.returncode != 0:
                    run(["apt-get", "update", "-q"], timeout=600, env=env)
                    p = run(install, timeout=600, env=env)
                if p.returncode != 0:
                    reason = "apt-get install failed: " + lastLine(p.stderr)
            except (OSError, subprocess.SubprocessError) as e:
                reason = f"apt-get install failed: {e}"
        found = {
            "openssl": shutil.which("openssl"),
            "stunnel4": stunnelPath(),
            "haproxy": shutil.which("haproxy"),
        }
        for pkg in missing:
            if found[pkg] is None:
                problems[wanted[pkg]] = reason or "not on PATH after apt-get install"
    if not (ANCHORS / "lean_relay.py").exists():
        problems["lean_relay"] = f"no {ANCHORS / 'lean_relay.py'} (set MTLSD_PERF_ANCHORS)"
    return problems


def buildGoproxy(work: Path) -> tuple[Path | None, str]:
    """
    Build the Go relay from the anchors' goproxy.go with Debian's golang-go
    (installed if missing).

    @return: the binary, or L{None} and why not.
    """
    source = ANCHORS / "goproxy.go"
    if not source.exists():
        return None, f"no {source} (set MTLSD_PERF_ANCHORS)"
    if shutil.which("go") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing golang-go with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "golang-go"]
        if run(install, timeout=900, env=env).returncode != 0:
            run(["apt-get", "update", "-q"], timeout=600, env=env)
            run(install, timeout=900, env=env)
    go = shutil.which("go")
    if go is None:
        return None, "no Go compiler (apt-get install golang-go failed or not root)"
    binary = work / "goproxy"
    env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOCACHE=str(work / "gocache"))
    built = run([go, "build", "-o", str(binary), str(source)], timeout=600, env=env)
    if built.returncode != 0:
        return None, "go build failed: " + lastLine(built.stderr)
    return binary, ""


def lastLine(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else ""


# --- PKI ---------------------------------------------------------------------


@dataclass
class PKI:
    ca: Path
    serverCert: Path
    serverKey: Path
    serverPem: Path
    clientCert: Path
    clientKey: Path


def ecdsaPKI(directory: Path) -> PKI:
    """
    CA, server (localhost, 127.0.0.1) and client certificates, ECDSA P-256,
    from C{mtlsd pki init}.
    """
    mtlsd = venvTool("mtlsd")
    if mtlsd is None:
        raise RuntimeError("no mtlsd command (is mtlsd installed in this Python?)")
    p = run([mtlsd, "pki", "init", str(directory)])
    if p.returncode != 0:
        raise RuntimeError(f"mtlsd pki init failed: {lastLine(p.stderr)}")
    return _finish(directory)


def rsaPKI(directory: Path) -> PKI:
    """
    The same three certificates with RSA-2048 keys, made with openssl.
    """
    directory.mkdir(parents=True, exist_ok=True)
    d = str(directory)

    def openssl(*args: str) -> None:
        p = run(["openssl", *args], cwd=d)
        if p.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {lastLine(p.stderr)}")

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", "/CN=bench RSA CA", "-keyout", "ca.key", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    extensions = {
        "server": "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in extensions.items():
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + ext
        )
        cn = "localhost" if name == "server" else "client"
        openssl(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-sha256", "-extfile", f"{name}.ext",
            "-out", f"{name}.crt",
        )  # fmt: skip
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return _finish(directory)


def _finish(directory: Path) -> PKI:
    pem = directory / "server.pem"
    pem.write_text((directory / "server.crt").read_text() + (directory / "server.key").read_text())
    pem.chmod(0o600)
    return PKI(
        ca=directory / "ca.crt",
        serverCert=directory / "server.crt",
        serverKey=directory / "server.key",
        serverPem=pem,
        clientCert=directory / "client.crt",
        clientKey=directory / "client.key",
    )


# --- processes -----------------------------------------------------------------


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def portOpen(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def stopProcess(proc: subprocess.Popen[Any] | None, grace: float = 10.0) -> None:
    """
    Stop one process that this script started: SIGTERM, then SIGKILL.
    """
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


def readLine(proc: subprocess.Popen[str], timeout: float) -> str:
    """
    One line of C{proc}'s stdout, waiting at most C{timeout} seconds.
    """
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no output in {timeout:.0f}s")
    return proc.stdout.readline()


def descendants(pid: int) -> list[int]:
    """
    C{pid} and every process below it.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpuSeconds(pid: int) -> float:
    """
    utime+stime of C{pid} (all its threads, live or exited) and of its
    descendants, plus what its reaped children used, in seconds.
    """
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 of proc(5): utime=14, stime=15, cutime=16, cstime=17
        total += sum(int(f) for f in fields[11:15])
    return total / CLK_TCK


def rssKiB(pid: int) -> int:
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# --- the servers -----------------------------------------------------------------


@dataclass
class Server:
    impl: str
    pki: PKI
    label: str
    work: Path
    backendPort: int
    pin: list[str]
    workers: int = 1
    env: dict[str, str] | None = None  # for the process, instead of this one's
    proc: subprocess.Popen[Any] | None = None
    port: int = 0
    starts: int = 0
    error: str = ""

    @property
    def logPath(self) -> Path:
        return self.work / f"{self.impl}-{self.label}.log"

    def command(self) -> list[str]:
        p = self.pki
        if self.impl == "mtlsd":
            twistd = venvTool("twistd") or "twistd"
            return [
                twistd, "-n", "--pidfile=", f"--logfile={self.logPath}",
                "mtlsd", "--port", str(self.port), "--interface", HOST,
                "--cert", str(p.serverCert), "--key", str(p.serverKey),
                "--client-certs", str(p.ca),
                "--forward", f"tcp:{HOST}:{self.backendPort}",
                "--reload-interval", "0",
                *(["--workers", str(self.workers)] if self.workers > 1 else []),
            ]  # fmt: skip
        if self.impl == "mtls_endpoint":
            # What an embedder gets: an mtls: string in a plain twistd
            # program, Twisted's own port forwarder.
            twistd = venvTool("twistd") or "twistd"
            return [
                twistd, "-n", "--pidfile=", f"--logfile={self.logPath}", "portforward",
                "--port", f"mtls:{self.port}:interface={HOST}:certKey={p.serverCert}"
                f":privateKey={p.serverKey}:clientCerts={p.ca}:reloadInterval=0",
                "--host", HOST, "--dest_port", str(self.backendPort),
            ]  # fmt: skip
        if self.impl == "stunnel":
            cfg = self.work / f"stunnel-{self.label}.conf"
            cfg.write_text(
                "foreground = yes\npid =\n\n[mtls]\n"
                f"accept = {HOST}:{self.port}\nconnect = {HOST}:{self.backendPort}\n"
                f"cert = {p.serverCert}\nkey = {p.serverKey}\nCAfile = {p.ca}\n"
                "verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.2\n"
            )
            return [stunnelPath() or "stunnel4", str(cfg)]
        anchor = [str(self.port), str(p.serverCert), str(p.serverKey), str(p.ca)]
        anchor.append(str(self.backendPort))
        if self.impl == "goproxy":
            return ["env", "GOMAXPROCS=1", str(self.work / "goproxy"), *anchor]
        if self.impl == "lean_relay":
            return [sys.executable, str(ANCHORS / "lean_relay.py"), *anchor]
        cfg = self.work / f"haproxy-{self.label}.cfg"
        cfg.write_text(
            "frontend f\n"
            f"    bind {HOST}:{self.port} ssl crt {p.serverPem} ca-file {p.ca} verify required\n"
            "    mode tcp\n    default_backend b\n\n"
            f"backend b\n    mode tcp\n    server s {HOST}:{self.backendPort}\n"
        )
        return [shutil.which("haproxy") or "haproxy", "-f", str(cfg), "-db"]

    def start(self) -> None:
        self.stop()
        self.port = freePort()
        self.starts += 1
        logFile = open(self.work / f"{self.impl}-{self.label}.out", "a")
        try:
            self.proc = subprocess.Popen(
                self.pin + self.command(),
                stdin=subprocess.DEVNULL,
                stdout=logFile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        finally:
            logFile.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = tail(self.work / f"{self.impl}-{self.label}.out") or tail(self.logPath)
                raise RuntimeError(f"exited with {self.proc.returncode}: {out}")
            if portOpen(self.port):
                time.sleep(0.3)
                return
            time.sleep(0.1)
        raise RuntimeError("not listening after 30s")

    def stop(self) -> None:
        stopProcess(self.proc)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if not self.alive():
            raise RuntimeError(f"server not running (exit {self.proc and self.proc.returncode})")
        assert self.proc is not None
        return self.proc.pid


# --- measurements -----------------------------------------------------------------


@dataclass
class Settings:
    rounds: int
    memoryRounds: int
    handshakes: int
    bulkBytes: int
    latencyCount: int
    idleConnections: int
    manyConnections: int
    clientPin: list[str]
    procs: int = 2


def loadgen(
    server: Server,
    settings: Settings,
    mode: str,
    *extra: str,
    limit: float = 300,
    pin: list[str] | None = None,
) -> Any:
    p = server.pki
    cmd = (settings.clientPin if pin is None else pin) + [
        sys.executable, str(LOADGEN), mode, "--port", str(server.port),
        "--ca", str(p.ca), "--cert", str(p.clientCert), "--key", str(p.clientKey),
        "--time-limit", str(limit), *extra,
    ]  # fmt: skip
    proc = run(cmd, timeout=limit + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {lastLine(proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def settle() -> None:
    time.sleep(0.2)


def errorNote(errors: dict[str, int]) -> str:
    if not errors:
        return ""
    worst = max(errors, key=lambda k: errors[k])
    return f"{sum(errors.values())} failed, e.g. {worst[:80]}"


def measureHandshakes(
    server: Server, settings: Settings, data: bool, resume: bool = False
) -> dict[str, Any]:
    """
    Server CPU microseconds per completed connection over a batch (with
    C{resume}, each client process first makes one full connection for a
    ticket, then resumes that session in every connection of the batch).
    """
    before = cpuSeconds(server.pid)
    extra = ["--n", str(settings.handshakes), "--procs", str(settings.procs)]
    extra += ["--data"] if data else []
    extra += ["--resume"] if resume else []
    result = loadgen(server, settings, "handshakes", *extra)
    settle()
    used = cpuSeconds(server.pid) - before
    if result["ok"] == 0:
        raise RuntimeError(errorNote(result["errors"]) or "no connection completed")
    note = errorNote(result["errors"])
    if resume and result["resumed"] != result["ok"]:
        note = f"{result['resumed']} of {result['ok']} resumed" + (f"; {note}" if note else "")
    return {
        "us": used / (result["ok"] + result["primed"]) * 1e6,
        "setup": result["setup_p50_ms"],
        "note": note,
    }


def measureMachineWide(server: Server, settings: Settings) -> dict[str, Any]:
    """
    Usable connections per second with nothing pinned: the server (all its
    processes or threads) and four client processes share every CPU.
    """
    extra = ["--n", str(settings.handshakes * 2), "--procs", "4", "--data"]
    before = cpuSeconds(server.pid)
    result = loadgen(server, settings, "handshakes", *extra, pin=[])
    settle()
    used = cpuSeconds(server.pid) - before
    if result["ok"] == 0:
        raise RuntimeError(errorNote(result["errors"]) or "no connection completed")
    return {
        "cps": result["ok"] / result["wall"],
        "us": used / result["ok"] * 1e6,
        "note": errorNote(result["errors"]),
    }


def measureBulk(server: Server, settings: Settings) -> dict[str, Any]:
    before = cpuSeconds(server.pid)
    result = loadgen(server, settings, "bulk", "--bytes", str(settings.bulkBytes), limit=600)
    settle()
    used = cpuSeconds(server.pid) - before
    if result["bytes"] != settings.bulkBytes:
        raise RuntimeError(f"echoed {result['bytes']} of {settings.bulkBytes} bytes")
    return {
        "mbps": result["bytes"] / result["wall"] / 1e6,
        "cpuPerGiB": used / (result["bytes"] / 2**30),
        "busy": 100 * used / result["wall"],
    }


def measureLatency(server: Server, settings: Settings) -> dict[str, Any]:
    result = loadgen(server, settings, "latency", "--count", str(settings.latencyCount))
    return {"p50": result["p50_us"], "p99": result["p99_us"]}


def measureMemory(server: Server, settings: Settings, count: int = 0) -> dict[str, Any]:
    """
    A fresh server: RSS after one warm-up connection, RSS while the load
    generator holds C{count} (default C{idleConnections}) idle connections,
    RSS after they close.
    """
    count = count or settings.idleConnections
    server.start()
    try:
        loadgen(server, settings, "handshakes", "--n", "1", "--procs", "1", "--data")
        time.sleep(1.0)
        base = rssKiB(server.pid)
        p = server.pki
        holders: list[subprocess.Popen[str]] = []
        held, errors = 0, {}
        try:
            share = count // settings.procs
            for i in range(settings.procs):
                n = share if i else count - share * (settings.procs - 1)
                cmd = settings.clientPin + [
                    sys.executable, str(LOADGEN), "hold", "--port", str(server.port),
                    "--ca", str(p.ca), "--cert", str(p.clientCert), "--key", str(p.clientKey),
                    "--n", str(n), "--time-limit", "600", "--threads", "16",
                ]  # fmt: skip
                holders.append(
                    subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                )
            for h in holders:
                line = readLine(h, 600)
                if not line:
                    raise RuntimeError("load generator (hold) ended early")
                ready = json.loads(line)
                held += ready["held"]
                errors.update(ready["errors"])
            if held == 0:
                raise RuntimeError(errorNote(errors) or "no connection held")
            time.sleep(1.0)
            holding = rssKiB(server.pid)
        finally:
            for h in holders:
                try:
                    assert h.stdin is not None
                    h.stdin.close()
                    h.wait(60)
                except (OSError, subprocess.TimeoutExpired):
                    h.kill()
                    h.wait(5)
        time.sleep(3.0)  # stunnel's threads take a moment to exit
        after = rssKiB(server.pid)
        return {
            "perConn": (holding - base) / held,
            "base": base / 1024,
            "holding": holding / 1024,
            "after": after / 1024,
            "note": errorNote(errors),
        }
    finally:
        server.stop()


def refusesAnonymous(server: Server) -> str:
    """
    Whether the server refuses a TLS 1.3 client that has no certificate.
    """
    ctx = ssl.create_default_context(cafile=str(server.pki.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with socket.create_connection((HOST, server.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x")
                data = s.recv(1)
        return "no (echoed)" if data == b"x" else "yes"
    except (ssl.SSLError, ConnectionError):
        return "yes"
    except OSError as e:
        return f"? ({e})"


def negotiated(server: Server) -> str:
    """
    Protocol, cipher and key exchange group, as openssl s_client sees them.
    """
    p = server.pki
    cmd = [
        "openssl", "s_client", "-connect", f"{HOST}:{server.port}", "-tls1_3",
        "-cert", str(p.clientCert), "-key", str(p.clientKey), "-CAfile", str(p.ca),
    ]  # fmt: skip
    try:
        out = run(cmd, timeout=15, input="").stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"
    found = [
        line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.startswith(("Server Temp Key", "Peer signature type"))
    ]
    cipher = [
        line.split("Cipher is")[1].strip() for line in out.splitlines() if "Cipher is" in line
    ]
    return ", ".join(cipher[:1] + found) or "?"


# --- results -----------------------------------------------------------------


@dataclass
class Metric:
    key: str
    title: str
    decimals: int
    compare: bool = True
    values: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, set[str]] = field(default_factory=dict)

    def add(self, impl: str, value: float, note: str = "") -> None:
        self.values.setdefault(impl, []).append(value)
        if note:
            self.notes.setdefault(impl, set()).add(note)

    def fail(self, impl: str, reason: str) -> None:
        self.errors.setdefault(impl, []).append(reason)

    def median(self, impl: str) -> float | None:
        values = self.values.get(impl)
        return statistics.median(values) if values else None

    def cell(self, impl: str) -> str:
        values = self.values.get(impl, [])
        errors = self.errors.get(impl, [])
        if not values:
            if not errors:
                return "—"
            return f"n/a ({errors[0][:120]})"
        med = statistics.median(values)
        text = f"{med:,.{self.decimals}f}"
        if len(values) > 1 and med:
            spread = (max(values) - min(values)) / 2 / abs(med) * 100
            text += f" ±{spread:.0f}%"
        extra = []
        if errors:
            extra.append(f"{len(values)}/{len(values) + len(errors)} rounds: {errors[0][:80]}")
        extra.extend(sorted(self.notes.get(impl, ()))[:1])
        if extra:
            text += " (" + "; ".join(extra) + ")"
        return text

    def ratio(self, reference: str = "haproxy", impl: str = "mtlsd") -> str:
        if not self.compare:
            return "—"
        a, b = self.median(impl), self.median(reference)
        if a is None or b is None or b == 0:
            return "n/a"
        return f"{a / b:.2f}"


def record(
    metrics: dict[str, Metric],
    impl: str,
    mapping: dict[str, str],
    measure: Callable[[], dict[str, Any]],
) -> None:
    """
    Run one measurement; put each of its results (C{mapping}: result key to
    metric key) in its metric, or the failure in all of them.
    """
    try:
        result = measure()
    except Exception as e:  # one cell fails, the run goes on
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        for key in mapping.values():
            metrics[key].fail(impl, reason)
        log(f"  {impl} {'/'.join(mapping.values())}: failed: {reason}")
        return
    note = result.get("note", "")
    for source, key in mapping.items():
        metrics[key].add(impl, result[source], note)
    shown = ", ".join(f"{key}={result[src]:,.1f}" for src, key in mapping.items())
    log(f"  {impl}: {shown}")


def ownRatio(a: Metric, b: Metric, impl: str) -> float | None:
    x, y = a.median(impl), b.median(impl)
    return x / y if x is not None and y else None


def ready(server: Server) -> bool:
    """
    Whether C{server} runs, restarting it once if it died.
    """
    if server.error:
        return False
    if not server.alive():
        try:
            log(f"{server.impl} ({server.label}) died, restarting")
            server.start()
        except Exception as e:
            server.error = f"died and did not restart: {e}"
            return False
    return True


def oneRound(
    metrics: dict[str, Metric], server: Server, rsa: Server | None, settings: Settings
) -> None:
    """
    Rows 1 to 9 for one server, once.
    """
    impl = server.impl
    if not ready(server):
        return
    record(metrics, impl, {"us": "hs"}, partial(measureHandshakes, server, settings, False))
    if rsa is not None and ready(rsa):
        record(metrics, impl, {"us": "hsRsa"}, partial(measureHandshakes, rsa, settings, False))
    if not ready(server):
        return
    resumed = partial(measureHandshakes, server, settings, False, True)
    record(metrics, impl, {"us": "hsResumed"}, resumed)
    if not ready(server):
        return
    usable = {"us": "usable", "setup": "setup"}
    record(metrics, impl, usable, partial(measureHandshakes, server, settings, True))
    if not ready(server):
        return
    bulk = {"mbps": "mbps", "cpuPerGiB": "cpuPerGiB", "busy": "busy"}
    record(metrics, impl, bulk, partial(measureBulk, server, settings))
    if not ready(server):
        return
    record(metrics, impl, {"p50": "p50", "p99": "p99"}, partial(measureLatency, server, settings))


def makeMetrics(settings: Settings) -> dict[str, Metric]:
    idle = f"{settings.idleConnections:,}"
    metrics = [
        Metric("hs", "Full handshake, TLS 1.3, ECDSA P-256: server CPU µs ↓", 0),
        Metric("hsRsa", "Full handshake, TLS 1.3, RSA-2048: server CPU µs ↓", 0),
        Metric("hsResumed", "Resumed handshake (TLS 1.3 ticket), ECDSA: server CPU µs ↓", 0),
        Metric("usable", "Usable connection (handshake + 1 B echo + close): server CPU µs ↓", 0),
        Metric("setup", "Usable connection: connect to echoed byte, p50 ms ↓", 1),
        Metric(
            "mbps", f"Bulk echo, 1 connection, {settings.bulkBytes >> 20} MiB each way: MB/s ↑", 0
        ),
        Metric("cpuPerGiB", "Bulk: server CPU s per GiB (each way) ↓", 2),
        Metric("busy", "Bulk: server CPU busy % (100 = server-bound)", 0, compare=False),
        Metric("p50", "Latency, 64 B round trip, p50 µs ↓", 0),
        Metric("p99", "Latency, 64 B round trip, p99 µs ↓", 0),
        Metric("perConn", f"Memory per idle connection ({idle} held): KiB ↓", 1),
        Metric("base", "RSS of a fresh server (after 1 connection): MiB ↓", 1),
        Metric("holding", f"RSS holding {idle} idle connections: MiB ↓", 1),
        Metric("afterClose", "RSS after they closed: MiB ↓", 1),
        Metric("end", "RSS at the end of the round rows (long-running server): MiB ↓", 1),
        Metric("many", f"RSS holding {settings.manyConnections:,} idle connections: MiB ↓", 1),
        Metric(
            "cps",
            "Machine-wide usable connections/s, nothing pinned, 4 client processes"
            " (mtlsd --workers 2) ↑",
            0,
        ),
        Metric("cps1", "The same, mtlsd --workers 1 ↑", 0, compare=False),
        Metric("cpsCpu", "The same: server CPU µs per connection, all its processes ↓", 0),
        Metric("cps1Cpu", "The same, mtlsd --workers 1 ↓", 0, compare=False),
    ]
    return {m.key: m for m in metrics}


# --- main ---------------------------------------------------------------------


def loadAverage() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machineInfo(pinning: str, backend: str, loadStart: str) -> list[str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import twisted

        twistedVersion = twisted.__version__
    except ImportError:
        twistedVersion = "?"
    try:
        from OpenSSL import SSL

        pyopenssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:
        pyopenssl = "?"
    git = firstLine(["git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"])
    stunnel = stunnelPath()
    haproxy = shutil.which("haproxy")
    return [
        f"- machine: {platform.machine()}, nproc {len(os.sched_getaffinity(0))}, {model}; "
        f"load average at the start {loadStart}",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- python {platform.python_version()} (client ssl: {ssl.OPENSSL_VERSION}), "
        f"twisted {twistedVersion}, mtlsd at {git} (pyOpenSSL on {pyopenssl})",
        f"- openssl: {firstLine(['openssl', 'version'])} (command, stunnel's and HAProxy's library)",
        f"- stunnel: {firstLine([stunnel, '-version'], 'stunnel ') if stunnel else 'not installed'}",
        f"- haproxy: {firstLine([haproxy, '-v']) if haproxy else 'not installed'}",
        f"- pinning: {pinning}",
        f"- backend: {backend}",
    ]


def startBackend(work: Path, pin: list[str]) -> tuple[subprocess.Popen[str], int, str]:
    """
    The C echo server if it compiles, else the asyncio one.
    """
    binary = work / "echo"
    compiler = shutil.which("cc") or shutil.which("gcc")
    built = compiler is not None and (
        run([compiler, "-O2", "-o", str(binary), str(BENCH / "echo.c")]).returncode == 0
    )
    if built:
        cmd = [str(binary), "0"]
        name = "bench/echo.c (C, epoll, one thread)"
    else:
        cmd = [sys.executable, str(LOADGEN), "echo", "--time-limit", "3600"]
        name = "asyncio echo in bench/loadgen.py (no C compiler)"
    proc = subprocess.Popen(pin + cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        port = int(readLine(proc, 30))
    except BaseException:
        stopProcess(proc)
        raise
    return proc, port, name


def main() -> int:
    parser = argparse.ArgumentParser(description="mtlsd vs stunnel vs HAProxy, mutual TLS")
    parser.add_argument("--quick", action="store_true", help="smaller batches (a few minutes)")
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds of the round rows (default: 3, full 5)"
    )
    parser.add_argument(
        "--memory-rounds", type=int, help="rounds of the memory rows (default: 1, full 3)"
    )
    parser.add_argument("--no-rsa", action="store_true", help="skip the RSA-2048 handshakes")
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the finally below stops everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    loadStart = loadAverage()
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE), max(hard, NOFILE)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    missing = ensureTools()
    for tool, reason in missing.items():
        log(f"{tool}: skipped, {reason}")

    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") and len(cpus) >= 2:
        serverPin = ["taskset", "-c", str(cpus[0])]
        clientPin = ["taskset", "-c", str(cpus[1])]
        pinning = f"servers on CPU {cpus[0]}, load generator and backend on CPU {cpus[1]} (taskset)"
    else:
        serverPin, clientPin = [], []
        pinning = "none (needs taskset and 2 CPUs)"

    settings = Settings(
        rounds=max(1, args.rounds or (3 if args.quick else 5)),
        memoryRounds=max(
            0, args.memory_rounds if args.memory_rounds is not None else 1 if args.quick else 3
        ),
        handshakes=100 if args.quick else 300,
        bulkBytes=(256 if args.quick else 1024) << 20,
        latencyCount=2000,
        idleConnections=2000,
        manyConnections=10000,
        clientPin=clientPin,
    )
    metrics = makeMetrics(settings)

    work = Path(tempfile.mkdtemp(prefix="mtlsd-bench-"))
    backend: subprocess.Popen[str] | None = None
    servers: dict[tuple[str, str], Server] = {}
    try:
        ecdsa = ecdsaPKI(work / "pki-ecdsa")
        rsa: PKI | None = None
        if args.no_rsa:
            rsaError = "skipped: --no-rsa"
        else:
            try:
                rsa = rsaPKI(work / "pki-rsa")
            except Exception as e:
                rsaError = f"RSA PKI: {e}"
        if rsa is None:
            for impl in IMPLS:
                metrics["hsRsa"].fail(impl, rsaError)

        if "goproxy" not in missing:
            goproxy, why = buildGoproxy(work)
            if goproxy is None:
                missing["goproxy"] = why
                log(f"goproxy: skipped, {why}")
        backend, backendPort, backendName = startBackend(work, clientPin)
        log(f"backend: {backendName} on port {backendPort}")

        available = [i for i in IMPLS if i not in missing]
        for impl in available:
            for label, pki in [("ecdsa", ecdsa), ("rsa", rsa)]:
                if pki is not None:
                    servers[(impl, label)] = Server(impl, pki, label, work, backendPort, serverPin)

        checks: list[str] = []
        for server in servers.values():
            try:
                server.start()
            except Exception as e:
                server.error = f"did not start: {e}"
                log(f"{server.impl} ({server.label}) {server.error}")
                continue
            if server.label == "ecdsa":
                checks.append(
                    f"  - {TITLES[server.impl]}: {negotiated(server)}; "
                    f"refuses a client without certificate: {refusesAnonymous(server)}"
                )

        for r in range(settings.rounds):
            log(f"round {r + 1}/{settings.rounds}")
            for impl in available:
                oneRound(metrics, servers[(impl, "ecdsa")], servers.get((impl, "rsa")), settings)

        for server in servers.values():
            if server.label == "ecdsa" and server.alive():
                metrics["end"].add(server.impl, rssKiB(server.pid) / 1024)
            server.stop()

        memory = {"perConn": "perConn", "base": "base", "holding": "holding", "after": "afterClose"}
        for r in range(settings.memoryRounds):
            log(f"memory round {r + 1}/{settings.memoryRounds}")
            for impl in available:
                server = servers[(impl, "ecdsa")]
                if not server.error.startswith("did not start"):
                    record(metrics, impl, memory, partial(measureMemory, server, settings))

        log(f"holding {settings.manyConnections:,} connections")
        for impl in available:
            server = servers[(impl, "ecdsa")]
            if not server.error.startswith("did not start"):
                many = partial(measureMemory, server, settings, settings.manyConnections)
                record(metrics, impl, {"holding": "many"}, many)

        # Nothing pinned: each server may use both CPUs (mtlsd with two
        # workers; HAProxy and stunnel with their threads).
        wide: dict[str, list[Server]] = {}
        for impl in available:
            variants = [(2, "cps"), (1, "cps1")] if impl == "mtlsd" else [(1, "cps")]
            wide[impl] = []
            for workers, key in variants:
                server = Server(impl, ecdsa, f"wide{workers}", work, backendPort, [], workers)
                try:
                    server.start()
                except Exception as e:
                    metrics[key].fail(impl, f"did not start: {e}")
                    continue
                wide[impl].append(server)
                servers[(impl, server.label)] = server
        for r in range(settings.rounds):
            log(f"machine-wide round {r + 1}/{settings.rounds}")
            for impl in available:
                for server in wide[impl]:
                    key = "cps" if server.workers > 1 or impl != "mtlsd" else "cps1"
                    if ready(server):
                        record(
                            metrics,
                            impl,
                            {"cps": key, "us": f"{key}Cpu"},
                            partial(measureMachineWide, server, settings),
                        )
        for impl in available:
            for server in wide[impl]:
                server.stop()

        for impl in IMPLS:
            reason = missing.get(impl) or servers[(impl, "ecdsa")].error
            for m in metrics.values():
                if reason and not m.values.get(impl) and not m.errors.get(impl):
                    m.fail(impl, reason)

        elapsed = time.monotonic() - started
        lines = [
            f"## mtlsd vs stunnel, HAProxy, goproxy and lean_relay, mutual TLS ({'quick' if args.quick else 'full'})",
            "",
            f"- date: {date}; command: `{command}`; took {elapsed / 60:.1f} min; "
            f"load average at the end {loadAverage()}",
            *machineInfo(pinning, backendName, loadStart),
            f"- {settings.rounds} rounds of the round rows (handshakes to latency, and the "
            f"machine-wide rows) and {settings.memoryRounds} of the memory rows, "
            "interleaved (mtlsd, stunnel, HAProxy, goproxy, lean_relay, mtlsd, ...); a cell is the median over "
            "rounds, ± half their range; server CPU from /proc/PID/stat "
            f"(1/{CLK_TCK} s ticks)",
            f"- {settings.handshakes} connections per handshake cell and round "
            f"({settings.procs} client processes); {settings.latencyCount} round trips "
            "per latency cell; memory: a fresh server per round",
            "- mtlsd runs with --reload-interval 0 (no file polling); "
            "each server logs as by default, to a file",
            "- negotiated, as openssl s_client sees it:",
            *checks,
            "",
            "| Metric | "
            + " | ".join(TITLES[i] for i in IMPLS)
            + " | "
            + " | ".join(f"mtlsd/{TITLES[r]}" for r in REFERENCES)
            + " | mtls: endpoint/HAProxy |",
            "| --- " * (2 + len(IMPLS) + len(REFERENCES)) + "|",
        ]
        for m in metrics.values():
            cells = " | ".join(m.cell(i) for i in IMPLS)
            ratios = " | ".join(m.ratio(r) for r in REFERENCES)
            embedded = m.ratio("haproxy", "mtls_endpoint")
            lines.append(f"| {m.title} | {cells} | {ratios} | {embedded} |")
        lines += [
            "",
            "Resumed / full handshake CPU, each server against itself: "
            + ", ".join(
                f"{TITLES[i]} {r:.2f}"
                for i in IMPLS
                if (r := ownRatio(metrics["hsResumed"], metrics["hs"], i)) is not None
            ),
        ]
        one, two = metrics["cps1Cpu"].median("mtlsd"), metrics["cpsCpu"].median("mtlsd")
        if one and two:
            # On 2 shared CPUs the load generator takes one of them: what two
            # workers would give with both CPUs to themselves is the CPU one
            # connection costs with one worker against with two.
            lines.append(
                "--workers 2 against 1 with the load generator elsewhere (estimate: 2 CPUs x"
                f" server CPU per connection with 1 worker / with 2): {2 * one / two:.2f}x"
            )
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
