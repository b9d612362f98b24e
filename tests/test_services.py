"""
Black-box tests of many services in one daemon: a real C{twistd mtlsd
--config FILE} whose file has two C{[[service]]} tables, each on its own
port with its own trust.
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests._process import Daemon, mtlsd, pkiClient, receiveExactly
from tests.test_daemon import DaemonTestMixin
from tests.test_trust import cutWithin

CONFIG = """\
log-format = "json"
reload-interval = 0.2

[[service]]
name = "alpha"
port = 0
pki = "pki-a"

[[service]]
name = "beta"
port = 0
pki = "pki-b"

[[service]]
name = "gamma"
port = 0
pki = "pki-a"
forward = "tcp:127.0.0.1:1"
"""


class TwoServicesTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.workDirectory()
        with open(os.path.join(self.directory, "mtlsd.toml"), "w") as f:
            f.write(CONFIG)
        self.daemon = Daemon(self.directory, ["--config", "mtlsd.toml"])
        self.addCleanup(self.daemon.stop)
        self.ports = {}
        for name in ("alpha", "beta", "gamma"):
            [line] = self.daemon.waitForLog(rf"service {name}: listening on ")
            found = re.search(r"listening on \S*:(\d+)", json.loads(line)["message"])
            assert found is not None, line
            self.ports[name] = int(found.group(1))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [
            event
            for event in map(json.loads, self.daemon.log().splitlines())
            if event["event"] == name
        ]

    def test_eachServiceItsOwnTrust(self) -> None:
        """
        A client of one service is admitted by it and refused by the other,
        and each event names its service.
        """
        done = mtlsd(
            "connect", f"localhost:{self.ports['alpha']}", "--pki", "pki-a",
            cwd=self.directory, input=b"ping\n",
        )  # fmt: skip
        self.assertEqual((done.returncode, done.stdout), (0, b"ping\n"), done.stderr)
        refused = mtlsd(
            "connect", f"localhost:{self.ports['beta']}", "--ca", "pki-b/ca.crt",
            "--cert", "pki-a/client.crt", "--key", "pki-a/client.key",
            cwd=self.directory, input=b"ping\n",
        )  # fmt: skip
        self.assertEqual((refused.returncode, refused.stdout), (1, b""))
        self.assertNotIn(b"Traceback", refused.stderr)
        self.daemon.waitForLog(r'"event": "rejected"')
        [accepted] = self.events("accepted")
        self.assertEqual((accepted["service"], accepted["cn"]), ("alpha", "client"))
        self.assertNotIn("for server names", self.daemon.log())  # no address is shared
        [rejected] = [
            e for e in self.events("rejected") if e["reason"] != "closed before handshake"
        ]
        self.assertEqual(rejected["service"], "beta")
        self.assertEqual({e["service"] for e in self.events("trusted")}, {"alpha", "beta", "gamma"})

    def test_applicationEventsNameTheService(self) -> None:
        """
        The events of a service's relay name it too: its backend down.
        """
        mtlsd(
            "connect", f"localhost:{self.ports['gamma']}", "--pki", "pki-a",
            cwd=self.directory, input=b"ping\n",
        )  # fmt: skip
        self.daemon.waitForLog(r'"event": "backend-unavailable"')
        [unavailable] = self.events("backend-unavailable")
        self.assertEqual(unavailable["service"], "gamma")

    def test_sighupReloadsEveryService(self) -> None:
        """
        One SIGHUP reloads every service.
        """
        self.daemon.process.send_signal(signal.SIGHUP)
        for service in ("alpha", "beta", "gamma"):
            self.daemon.waitForLog(rf'"event": "reloaded".*"service": "{service}"')

    def test_trustChangeCutsOnlyItsService(self) -> None:
        """
        Revoking alpha's client cuts its live session at alpha's next
        reload; beta's session, of a client of the same name in the other
        PKI, goes on, and beta does not reload.
        """
        alpha = pkiClient(self.ports["alpha"], os.path.join(self.directory, "pki-a"))
        beta = pkiClient(self.ports["beta"], os.path.join(self.directory, "pki-b"))
        self.addCleanup(alpha.close)
        self.addCleanup(beta.close)
        for client in (alpha, beta):
            client.sendall(b"hello")
            self.assertEqual(receiveExactly(client, 5), b"hello")
        done = mtlsd("pki", "revoke", "client", "--pki", "pki-a", cwd=self.directory)
        self.assertEqual(done.returncode, 0, done.stderr)
        cutWithin(alpha)
        self.daemon.waitForLog(r'"event": "cut"')
        [cut] = self.events("cut")
        self.assertEqual((cut["service"], cut["reason"]), ("alpha", "revoked"))
        beta.sendall(b"still")
        self.assertEqual(receiveExactly(beta, 5), b"still")
        # The services of pki-a reloaded (gamma uses it too), not beta.
        for service in ("alpha", "gamma"):
            self.daemon.waitForLog(rf'"event": "reloaded".*"service": "{service}"')
        self.assertEqual({e["service"] for e in self.events("reloaded")}, {"alpha", "gamma"})


class ServicesWithWorkersTests(DaemonTestMixin, SynchronousTestCase):
    def test_everyServiceInEveryWorker(self) -> None:
        """
        With C{workers = 2}, the workers serve every service: each adopts
        the sockets of all of them, and their events name the service.
        """
        directory = self.workDirectory()
        with open(os.path.join(directory, "mtlsd.toml"), "w") as f:
            f.write("workers = 2\n" + CONFIG.split('[[service]]\nname = "gamma"')[0])
        daemon = Daemon(directory, ["--config", "mtlsd.toml"])
        self.addCleanup(daemon.stop)
        ports = {}
        for name in ("alpha", "beta"):
            [line] = daemon.waitForLog(rf"service {name}: listening on ")
            found = re.search(r"listening on \S*:(\d+)", json.loads(line)["message"])
            assert found is not None, line
            ports[name] = int(found.group(1))
        daemon.waitForLog(r'"event": "worker-started"', count=2)
        daemon.waitForLog(r"service beta: listening on .*\"worker\"", count=2)
        for name, pki in (("alpha", "pki-a"), ("beta", "pki-b")):
            client = pkiClient(ports[name], os.path.join(directory, pki))
            self.addCleanup(client.close)
            client.sendall(b"hello")
            self.assertEqual(receiveExactly(client, 5), b"hello")
        # The workers' events reach the main process's log through a pipe.
        daemon.waitForLog(r'"event": "accepted"', count=2)
        records = [json.loads(line) for line in daemon.log().splitlines()]
        accepted = [r for r in records if r["event"] == "accepted"]
        self.assertEqual(sorted(r["service"] for r in accepted), ["alpha", "beta"])
        self.assertTrue(all("worker" in r for r in accepted))
