"""
Soak: mtlsd under a steady mix of good and bad clients and trust changes,
for a set time, on loopback; it stops by itself.

    python scripts/soak.py [--duration SECONDS] [--good N] [--seed S]

Runs `twistd -n mtlsd --forward` to an echo backend, with a bundle of pinned
client certificates, and for the duration (default 600 s):

 - N good clients (default 4 threads) connect again and again, each moving a
   random payload (1 KiB to 1 MiB) through the daemon and the backend and
   checking the SHA-256 of what comes back;
 - one thread of bad clients, in turn: an untrusted certificate, an expired
   one (pinned in the bundle), a revoked one (admitted at the start, then
   removed from the bundle); none may get an echo;
 - every few seconds the bundle is rewritten (added: a new client; removed:
   the previous one) and the daemon told (SIGHUP); the added client must then
   get in and the removed one be refused.

At the end it prints one report (markdown) and exits 1 if any payload was
corrupted or lost, a bad client got through, a trust change did not take,
a rejection was not logged, the log holds an unhandled error, or the
daemon's descriptors grew.  RSS and descriptors are sampled after a warm-up
and at the end.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mtlsd._pki import DevelopmentPKI, certificatePEM, keyPEM, makeCertificate, newKey

HOST = "127.0.0.1"
LISTENING = re.compile(r"\(TLS\) starting on (\d+)")


class Echo(threading.Thread):
    """
    A plain echo backend (a thread per connection).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server((HOST, 0), backlog=1024)
        self.port = self.server.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    @staticmethod
    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass


class Soak:
    def __init__(self, work: Path, duration: float, good: int, seed: int) -> None:
        self.work = work
        self.deadline = time.monotonic() + duration
        self.goodThreads = good
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []
        self.pki = DevelopmentPKI(work / "pki")
        self.pki.init()
        self.stable = [self.client(f"good{i}") for i in range(good)]
        self.revoked = self.client("revoked")
        self.expired = self.client("expired", expired=True)
        self.untrusted = self.client("untrusted", selfSigned=True)
        self.rotating: tuple[str, str] | None = None
        self.rotations = 0

    def client(self, name: str, expired: bool = False, selfSigned: bool = False) -> tuple[str, str]:
        """
        A client certificate and key, written to files; their paths.
        """
        key = newKey()
        issuer = None if selfSigned else self.pki._ca()
        notBefore = None
        days = 30
        if expired:
            notBefore = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
            days = 1
        certificate = makeCertificate(name, key, issuer, notBefore=notBefore, days=days,
                                      usages=[])  # fmt: skip
        crt, pem = self.work / f"{name}.crt", self.work / f"{name}.key"
        crt.write_bytes(certificatePEM(certificate))
        pem.write_bytes(keyPEM(key))
        pem.chmod(0o600)
        return str(crt), str(pem)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def writeBundle(self, *extra: tuple[str, str]) -> None:
        paths = [c for c, _ in (*self.stable, self.expired, *extra)]
        bundle = b"".join(Path(p).read_bytes() for p in paths)
        new = self.work / "clients.pem.new"
        new.write_bytes(bundle)
        os.replace(new, self.work / "clients.pem")

    def connect(self, credentials: tuple[str, str]) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(self.work / "pki" / "ca.crt"))
        context.load_cert_chain(*credentials)
        raw = socket.create_connection((HOST, self.port), timeout=30)
        return context.wrap_socket(raw, server_hostname="localhost")

    def exchange(self, credentials: tuple[str, str], payload: bytes) -> bytes:
        """
        Send C{payload} and read back as much; what came back.
        """
        with self.connect(credentials) as sock:
            received = bytearray()
            for start in range(0, len(payload), 64 * 1024):
                chunk = payload[start : start + 64 * 1024]
                sock.sendall(chunk)
                while len(received) < start + len(chunk):
                    data = sock.recv(65536)
                    if not data:
                        return bytes(received)
                    received += data
            return bytes(received)

    def refused(self, credentials: tuple[str, str]) -> bool:
        """
        Whether a client is refused: no echo of its bytes.
        """
        try:
            return self.exchange(credentials, b"let me in") == b""
        except (ssl.SSLError, ConnectionError, TimeoutError):
            return True

    def goodLoop(self, index: int) -> None:
        rng = random.Random(self.random.random())
        credentials = self.stable[index]
        while time.monotonic() < self.deadline:
            payload = rng.randbytes(rng.randint(1024, 1024 * 1024))
            try:
                back = self.exchange(credentials, payload)
            except Exception as e:
                self.problem(f"good client {index}: {type(e).__name__}: {e}")
                self.count("lost")
                continue
            if hashlib.sha256(back).digest() != hashlib.sha256(payload).digest():
                self.problem(f"good client {index}: {len(back)} of {len(payload)} bytes came back")
                self.count("corrupted or lost")
            else:
                self.count("good")
                self.count("bytes", len(payload))

    def badLoop(self) -> None:
        kinds = [("untrusted", self.untrusted), ("expired", self.expired),
                 ("revoked", self.revoked)]  # fmt: skip
        n = 0
        while time.monotonic() < self.deadline:
            name, credentials = kinds[n % len(kinds)]
            n += 1
            if self.refused(credentials):
                self.count(f"rejected {name}")
            else:
                self.problem(f"the {name} client got through")

    def reloaded(self) -> int:
        return len(re.findall(r"\] reloaded:", self.log.read_text(errors="replace")))

    def rotateLoop(self) -> None:
        while time.monotonic() + 4 < self.deadline:
            time.sleep(3)
            self.rotations += 1
            removed, added = self.rotating, self.client(f"rotating{self.rotations}")
            before = self.reloaded()
            self.writeBundle(added)
            self.daemon.send_signal(signal.SIGHUP)
            end = time.monotonic() + 10
            while self.reloaded() == before and time.monotonic() < end:
                time.sleep(0.05)
            if self.reloaded() == before:
                self.problem(f"reload {self.rotations} not seen in 10 s")
                continue
            self.rotating = added
            if self.refused(added):
                self.problem(f"the client added at reload {self.rotations} was refused")
            else:
                self.count("added and admitted")
            if removed is not None:
                if self.refused(removed):
                    self.count("removed and refused")
                else:
                    self.problem(f"the client removed at reload {self.rotations} got through")

    def daemonFigures(self) -> tuple[int, int]:
        """
        The daemon's RSS (KiB) and open descriptors.
        """
        pid = self.daemon.pid
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return rss, len(os.listdir(f"/proc/{pid}/fd"))

    def run(self) -> int:
        echo = Echo()
        echo.start()
        self.writeBundle(self.revoked)  # trusted at start, removed once running
        self.log = self.work / "daemon.log"
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
        pki = self.work / "pki"
        # To standard output, into one file: twistd's log file would rotate
        # every megabyte, and the report counts the lines of the whole run.
        logFile = open(self.log, "wb")
        self.daemon = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile=-", "mtlsd", "--port", "0",
             "--interface", HOST, "--cert", str(pki / "server.crt"), "--key",
             str(pki / "server.key"), "--client-certs", str(self.work / "clients.pem"),
             "--forward", f"tcp:{HOST}:{echo.port}", "--reload-interval", "0"],
            stdin=subprocess.DEVNULL,
            stdout=logFile,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        logFile.close()
        try:
            end = time.monotonic() + 30
            while not (self.log.exists() and LISTENING.search(self.log.read_text())):
                if time.monotonic() > end or self.daemon.poll() is not None:
                    sys.exit("soak: the daemon did not start")
                time.sleep(0.1)
            self.port = int(LISTENING.search(self.log.read_text()).group(1))  # type: ignore[union-attr]
            if self.refused(self.revoked):
                self.problem("the client to be revoked was refused before")
            self.writeBundle()
            self.daemon.send_signal(signal.SIGHUP)
            while self.reloaded() == 0 and time.monotonic() < end:
                time.sleep(0.05)
            started = time.monotonic()
            threads = [threading.Thread(target=self.goodLoop, args=(i,))
                       for i in range(self.goodThreads)]  # fmt: skip
            threads += [threading.Thread(target=self.badLoop),
                        threading.Thread(target=self.rotateLoop)]  # fmt: skip
            for thread in threads:
                thread.start()
            time.sleep(min(5.0, max(0.0, self.deadline - time.monotonic()) / 4))
            first = self.daemonFigures()
            for thread in threads:
                thread.join()
            time.sleep(1.0)  # the last connections close on the daemon's side too
            last = self.daemonFigures()
            took = time.monotonic() - started
        finally:
            self.daemon.terminate()
            self.daemon.wait(30)
        return self.report(took, first, last)

    def report(self, took: float, first: tuple[int, int], last: tuple[int, int]) -> int:
        text = self.log.read_text(errors="replace")
        logged = len(re.findall(r"\] rejected ", text))
        rejected = sum(v for k, v in self.counts.items() if k.startswith("rejected"))
        rejected += self.counts.get("removed and refused", 0)
        if logged < rejected:
            self.problem(f"{rejected} clients refused but {logged} rejections logged")
        for bad in ("Unhandled", "Traceback", "[mtlsd#error]", "#critical]"):
            if bad in text:
                self.problem(f"the log holds {bad!r}")
        if last[1] > first[1]:
            self.problem(f"the daemon's descriptors grew from {first[1]} to {last[1]}")
        good = self.counts.get("good", 0)
        lines = [
            f"## soak: {took:.0f} s, {self.goodThreads} good clients, 1 bad, a trust change every 3 s",
            "",
            f"- good connections: {good:,}, {self.counts.get('bytes', 0) / 2**20:,.0f} MiB each way,"
            f" corrupted or lost: {self.counts.get('corrupted or lost', 0) + self.counts.get('lost', 0)}",
            "- bad clients refused: " + ", ".join(
                f"{k.split()[1]} {v:,}" for k, v in sorted(self.counts.items())
                if k.startswith("rejected")),
            f"- trust changes: {self.rotations} (added and admitted"
            f" {self.counts.get('added and admitted', 0)}, removed and refused"
            f" {self.counts.get('removed and refused', 0)})",
            f"- rejections logged: {logged:,} (refused attempts: {rejected:,})",
            f"- daemon RSS: {first[0] / 1024:.1f} MiB after warm-up, {last[0] / 1024:.1f} MiB at"
            f" the end; descriptors {first[1]} then {last[1]}",
            f"- problems: {len(self.problems)}" + "".join(f"\n  - {p}" for p in self.problems[:20]),
        ]  # fmt: skip
        print("\n".join(lines), flush=True)
        return 1 if self.problems or good == 0 else 0


def main() -> int:
    parser = argparse.ArgumentParser(description="mtlsd soak test (loopback, bounded)")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--good", type=int, default=4, help="good client threads")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mtlsd-soak-"))
    try:
        return Soak(work, args.duration, args.good, args.seed).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
