"""
Black-box tests of running mtlsd in production: metrics and health, JSON
logs, draining on SIGTERM, and no key material in the logs.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import socket
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from mtlsd._pki import certificatePEM, keyPEM, makeCertificate, newKey
from tests._process import DEADLINE, mtlsd, pkiClient, receiveExactly
from tests.test_daemon import DaemonTestMixin

MiB = 1024 * 1024


def get(port: int, path: str) -> tuple[int, str]:
    """
    GET http://127.0.0.1:PORT/PATH: the status and the body.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=DEADLINE) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sample(metrics: str, name: str, **labels: str) -> float:
    """
    The value of one sample in a Prometheus text exposition (0 if absent).
    """
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        if line.startswith(name + ("{" + wanted + "}" if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class MetricsTests(DaemonTestMixin, SynchronousTestCase):
    def test_countersMove(self) -> None:
        """
        C{/metrics} counts an accepted client, its bytes, a rejected one by
        reason, and publishes the certificates' expiry; C{/healthz} is 200.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--metrics", "tcp:0:interface=127.0.0.1")
        metricsPort = daemon.waitForListening(pattern=r"Site starting on (\d+)")
        daemon.waitForListening()
        status, before = get(metricsPort, "/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(sample(before, "mtlsd_connections_accepted_total"), 0)
        result = mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hello\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        result = mtlsd("connect", f"localhost:{daemon.port}", "--pki", "none", "--ca",
                       "mtlsd-pki/ca.crt", cwd=directory, input=b"x")  # fmt: skip
        self.assertEqual(result.returncode, 1)
        daemon.waitForLog("rejected .*: no client certificate")
        daemon.waitForLog("closed .*in=6 out=6")
        status, after = get(metricsPort, "/metrics")
        self.assertEqual(sample(after, "mtlsd_connections_accepted_total"), 1)
        self.assertEqual(sample(after, "mtlsd_connections_active"), 0)
        self.assertEqual(sample(after, "mtlsd_bytes_total", direction="in"), 6)
        self.assertEqual(
            sample(after, "mtlsd_handshakes_rejected_total", reason="no client certificate"), 1
        )
        self.assertIn('mtlsd_certificate_expiry_timestamp_seconds{role="server"', after)
        self.assertIn('mtlsd_certificate_expiry_timestamp_seconds{role="trusted"', after)
        status, body = get(metricsPort, "/healthz")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"))
        # Scrapes and health checks are logged at debug level only.
        self.assertNotIn("GET /metrics", daemon.log())
        self.assertNotIn("GET /healthz", daemon.log())

    def test_unhealthyWithExpiredCertificate(self) -> None:
        """
        With an expired server certificate, C{/healthz} answers 503.
        """
        directory = self.workDirectory()
        key = newKey()
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
        old = makeCertificate("localhost", key, names=["localhost"], notBefore=start, days=1)
        with open(os.path.join(directory, "server.pem"), "wb") as f:
            f.write(certificatePEM(old) + keyPEM(key))
        daemon = self.startDaemon(
            directory, "--cert", "server.pem", "--client-certs", "server.pem",
            "--metrics", "tcp:0:interface=127.0.0.1",
        )  # fmt: skip
        metricsPort = daemon.waitForListening(pattern=r"Site starting on (\d+)")
        status, body = get(metricsPort, "/healthz")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["problems"], ["server certificate not valid now"])


class JSONLogTests(DaemonTestMixin, SynchronousTestCase):
    def test_oneObjectPerLine(self) -> None:
        """
        With C{--log-format json} every line is one JSON object; connection
        events carry stable fields.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--log-format", "json")
        mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"hello\n")
        mtlsd("connect", f"localhost:{daemon.port}", "--pki", "none", "--ca", "mtlsd-pki/ca.crt",
              cwd=directory, input=b"x")  # fmt: skip
        daemon.waitForLog('"event": "rejected"')
        daemon.waitForLog('"event": "closed"')
        records = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
        byEvent = {r["event"]: r for r in records}
        accepted, closed, rejected = byEvent["accepted"], byEvent["closed"], byEvent["rejected"]
        self.assertEqual(accepted["cn"], "client")
        self.assertRegex(accepted["fingerprint"], "^[0-9a-f]{64}$")
        self.assertRegex(accepted["client"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual((closed["bytes_in"], closed["bytes_out"]), (6, 6))
        self.assertIsInstance(closed["duration"], float)
        self.assertEqual(rejected["reason"], "no client certificate")
        for record in records:
            self.assertEqual(set(record) >= {"time", "level", "event", "message"}, True, record)


class DrainTests(DaemonTestMixin, SynchronousTestCase):
    def test_transferCompletesAfterSIGTERM(self) -> None:
        """
        On SIGTERM the daemon stops accepting, lets a transfer under way
        finish intact, then exits.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--drain-timeout", "30")
        pki = os.path.join(directory, "mtlsd-pki")
        sock = pkiClient(daemon.port, pki)
        self.addCleanup(sock.close)
        payload = os.urandom(8 * MiB)
        received = hashlib.sha256()
        sock.sendall(payload[:MiB])
        received.update(receiveExactly(sock, MiB))
        daemon.process.send_signal(signal.SIGTERM)
        daemon.waitForLog("shutting down: waiting up to 30.0s for 1 connections")
        self.assertRaises(OSError, socket.create_connection, ("127.0.0.1", daemon.port), 2)

        # One thread, in turns: an SSL socket is not for two threads at once.
        for start in range(MiB, len(payload), 64 * 1024):
            chunk = payload[start : start + 64 * 1024]
            sock.sendall(chunk)
            received.update(receiveExactly(sock, len(chunk)))
        self.assertEqual(received.hexdigest(), hashlib.sha256(payload).hexdigest())
        sock.unwrap().close()
        # twistd exits by the signal that stopped it, as it does after any
        # clean stop on SIGTERM.
        self.assertIn(daemon.process.wait(DEADLINE), (0, -signal.SIGTERM))
        self.assertIn("Main loop terminated.", daemon.log())
        self.assertIn(f"in={len(payload)} out={len(payload)}", daemon.log())

    def test_cutAfterDrainTimeout(self) -> None:
        """
        A connection still open when the drain timeout ends is cut, and the
        log says how many; during the drain C{/healthz} still answers, 503
        since the listener is down.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(
            directory, "--drain-timeout", "1", "--metrics", "tcp:0:interface=127.0.0.1"
        )
        metricsPort = daemon.waitForListening(pattern=r"Site starting on (\d+)")
        daemon.waitForListening()
        pki = os.path.join(directory, "mtlsd-pki")
        sock = pkiClient(daemon.port, pki)
        self.addCleanup(sock.close)
        sock.sendall(b"hi")
        self.assertEqual(receiveExactly(sock, 2), b"hi")
        daemon.process.send_signal(signal.SIGTERM)
        daemon.waitForLog("shutting down: waiting up to 1.0s for 1 connections")
        status, body = get(metricsPort, "/healthz")
        self.assertEqual((status, json.loads(body)["problems"]), (503, ["not listening"]))
        daemon.waitForLog("drain timeout: cutting 1 connections")
        self.assertIn(daemon.process.wait(DEADLINE), (0, -signal.SIGTERM))
        self.assertRaises((OSError, AssertionError), receiveExactly, sock, 1)


class SecretsTests(DaemonTestMixin, SynchronousTestCase):
    def test_noKeyMaterialInLogs(self) -> None:
        """
        Whatever happens (start, clients, a failed reload), the log holds no
        PEM key marker and no line of any key file.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--reload-interval", "0.2")
        mtlsd("connect", f"localhost:{daemon.port}", cwd=directory, input=b"secret payload\n")
        with open(os.path.join(directory, "mtlsd-pki", "server.key"), "rb") as f:
            keyLines = [line for line in f.read().decode().splitlines() if "-----" not in line]
        with open(os.path.join(directory, "mtlsd-pki", "server.crt"), "ab") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nbroken\n")
        daemon.waitForLog("reload failed")
        log = daemon.log()
        self.assertNotIn("PRIVATE KEY", log)
        for line in keyLines:
            self.assertNotIn(line, log)
        self.assertIsNone(re.search("secret payload", log))
