"""
C{mtls:} endpoint strings in a program that is not mtlsd's daemon:
C{twistd web --listen mtls:...}, run as a user runs it, next to a
development PKI.
"""

from __future__ import annotations

import os
import signal

from twisted.trial.unittest import SynchronousTestCase

from tests._process import MTLSD, TWISTD, Daemon, run


class TwistdWebTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        init = run([MTLSD, "pki", "init"], cwd=self.directory)
        self.assertEqual(init.returncode, 0, init.stderr)
        self.served = os.path.join(self.directory, "served")
        os.mkdir(self.served)

    def listen(self, clientCerts: str, extra: str = "") -> str:
        return (
            "mtls:0:interface=127.0.0.1:certKey=mtlsd-pki/server.crt"
            f":privateKey=mtlsd-pki/server.key:clientCerts={clientCerts}{extra}"
        )

    def test_badDescriptionOneLine(self) -> None:
        """
        C{twistd web --listen mtls:...} with an empty or broken client
        bundle, or a bad value, prints the one sentence on stderr and exits
        1: no traceback, no pid file left behind.
        """
        with open(os.path.join(self.directory, "empty.pem"), "wb"):
            pass
        with open(os.path.join(self.directory, "broken.pem"), "wb") as f:
            f.write(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        for listen, sentence in [
            (
                self.listen("empty.pem"),
                "mtls: client certificates file empty.pem holds no PEM certificate.",
            ),
            (self.listen("broken.pem"), "mtls: client certificates file broken.pem"),
            (
                self.listen("mtlsd-pki/ca.crt", ":backlog=many"),
                "mtls: backlog='many' is not a whole number",
            ),
        ]:
            result = run(
                [TWISTD, "-n", "web", "--listen", listen, "--path", self.served],
                cwd=self.directory,
            )
            stderr = result.stderr.decode()
            self.assertEqual(result.returncode, 1, stderr)
            self.assertEqual(len(stderr.splitlines()), 1, stderr)
            self.assertTrue(stderr.startswith(sentence), stderr)
            self.assertNotIn(b"Traceback", result.stdout + result.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.directory, "twistd.pid")))

    def test_sighupReloadsEveryEndpoint(self) -> None:
        """
        Two C{mtls:} listeners in one process: one SIGHUP reloads both.
        """
        web = Daemon(
            self.directory,
            [],
            command=[
                TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--path", self.served,
                "--listen", self.listen("mtlsd-pki/ca.crt", ":reloadInterval=0"),
                "--listen", self.listen("mtlsd-pki/client.crt", ":reloadInterval=0"),
            ],
        )  # fmt: skip
        self.addCleanup(web.stop)
        web.waitForLog(r"\(TLS\) starting on \d+", count=2)
        web.process.send_signal(signal.SIGHUP)
        lines = web.waitForLog(r"\[mtlsd#info\] reloaded: ", count=2)
        self.assertEqual(len(lines), 2, web.log())
        self.assertIsNone(web.process.poll())
