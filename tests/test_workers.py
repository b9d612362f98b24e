"""
Black-box tests of C{--workers N}: several processes accept on the same
sockets under one main process, which forwards signals, restarts a worker
that dies, and gathers their logs and metrics.
"""

from __future__ import annotations

import json
import os
import signal
import time

from twisted.trial.unittest import SynchronousTestCase

from tests._process import DEADLINE, POLL, pkiClient, receiveExactly
from tests.test_daemon import DaemonTestMixin
from tests.test_production import get, sample


class WorkersTests(DaemonTestMixin, SynchronousTestCase):
    def events(self, daemon, name: str) -> list[dict]:
        """
        The JSON log records of mtlsd event C{name}.
        """
        records = (json.loads(line) for line in daemon.log().splitlines() if line.startswith("{"))
        return [r for r in records if r["event"] == name]

    def waitFor(self, daemon, name: str, count: int) -> list[dict]:
        end = time.monotonic() + DEADLINE
        while len(found := self.events(daemon, name)) < count:
            if time.monotonic() > end or daemon.process.poll() is not None:
                self.fail(f"{count} {name} events not seen:\n{daemon.log()}")
            time.sleep(POLL)
        return found

    def connect(self, daemon, directory: str):
        pki = os.path.join(directory, "mtlsd-pki")
        return pkiClient(daemon.port, pki)

    def echo(self, sock, data: bytes) -> bytes:
        sock.sendall(data)
        return receiveExactly(sock, len(data))

    def test_workers(self) -> None:
        """
        With C{--workers 2}: both workers accept connections; the main
        process's log and metrics hold the events of both; SIGHUP reloads
        both; a killed worker is restarted; on SIGTERM a transfer under way
        completes and every process exits.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--workers", "2", "--log-format", "json",
                                  "--reload-interval", "0",
                                  "--metrics", "tcp:0:interface=127.0.0.1")  # fmt: skip
        metricsPort = daemon.waitForListening(pattern=r"Site starting on (\d+)")
        daemon.waitForListening()
        started = {e["worker"]: e["pid"] for e in self.waitFor(daemon, "worker-started", 2)}
        self.assertEqual(sorted(started), [1, 2])
        daemon.waitForLog(r"starting on \d+.*\"worker\"", count=2)

        # Held ten at a time, until both workers have accepted some.
        made = 0
        while len({e["worker"] for e in self.events(daemon, "accepted")}) < 2:
            self.assertLess(made, 200, "one worker accepted every connection")
            held = [self.connect(daemon, directory) for _ in range(10)]
            for sock in held:
                self.assertEqual(self.echo(sock, b"ping"), b"ping")
                sock.unwrap().close()
            made += len(held)
            self.waitFor(daemon, "closed", made)
        status, metrics = get(metricsPort, "/metrics")
        self.assertEqual(sample(metrics, "mtlsd_connections_accepted_total"), made)
        self.assertEqual(sample(metrics, "mtlsd_connections_active"), 0)

        daemon.process.send_signal(signal.SIGHUP)
        reloads = self.waitFor(daemon, "reloaded", 3)
        self.assertEqual(sorted(e.get("worker", 0) for e in reloads), [0, 1, 2])
        status, metrics = get(metricsPort, "/metrics")
        self.assertEqual(sample(metrics, "mtlsd_reloads_total", result="ok"), 1)

        os.kill(started[1], signal.SIGKILL)
        [exited] = self.waitFor(daemon, "worker-exited", 1)
        self.assertEqual(exited["worker"], 1)
        restarted = self.waitFor(daemon, "worker-started", 3)[-1]
        self.assertEqual(restarted["worker"], 1)
        daemon.waitForLog(r"starting on \d+.*\"worker\": 1", count=2)
        status, body = get(metricsPort, "/healthz")
        self.assertEqual(status, 200, body)

        sock = self.connect(daemon, directory)
        self.addCleanup(sock.close)
        self.assertEqual(self.echo(sock, b"before"), b"before")
        daemon.process.send_signal(signal.SIGTERM)
        self.waitFor(daemon, "draining", 1)
        self.assertEqual(self.echo(sock, b"after SIGTERM"), b"after SIGTERM")
        sock.unwrap().close()
        self.assertIn(daemon.process.wait(DEADLINE), (0, -signal.SIGTERM))
        for pid in (restarted["pid"], started[2]):
            self.assertFalse(os.path.exists(f"/proc/{pid}"), f"worker {pid} still running")
