"""
Black-box tests of how a refused client learns why: a TLS alert, which
reaches even clients that write before they read (Java's JSSE), because the
daemon closes as nginx and HAProxy do (a lingering close).
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._process import DEADLINE, mtlsd, openssl, run
from tests.test_daemon import DaemonTestMixin

JAVA = shutil.which("java")
CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java", "AlertClient.java")


class JavaClientTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        if JAVA is None:
            raise SkipTest("no JDK (java) on this machine")
        self.requireOpenSSL()
        self.directory = self.workDirectory()

    def java(self, port: int, name: str) -> str:
        """
        Run the Java client with the development PKI's certificate C{name}:
        it writes 1 MiB, then reads.

        @return: what it printed.
        """
        openssl(
            "pkcs12", "-export", "-in", f"mtlsd-pki/{name}.crt", "-inkey",
            f"mtlsd-pki/{name}.key", "-out", f"{name}.p12", "-passout", "pass:secret",
            cwd=self.directory,
        )  # fmt: skip
        assert JAVA is not None
        result = run(
            [JAVA, CLIENT, "127.0.0.1", str(port), f"{name}.p12"],
            self.directory,
            timeout=DEADLINE * 4,  # the source is compiled first
        )
        return result.stdout.decode().strip()

    def test_refusedJavaClientSeesAlert(self) -> None:
        """
        A Java client the allow-list refuses, writing before it reads, gets
        the server's "bad certificate" alert, not "Broken pipe".
        """
        daemon = self.startDaemon(self.directory, "--allow-cn", "somebody-else")
        self.assertEqual(
            self.java(daemon.port, "client"),
            "error: javax.net.ssl.SSLHandshakeException: Received fatal alert: bad_certificate",
        )
        daemon.waitForLog(r"rejected 127\.0\.0\.1:\d+: not allowed by policy: CN=client ")

    def test_acceptedJavaClient(self) -> None:
        """
        The same client, admitted, has its bytes echoed (the first is 0).
        """
        daemon = self.startDaemon(self.directory)
        self.assertEqual(mtlsd("pki", "init", cwd=self.directory).returncode, 0)
        self.assertEqual(self.java(daemon.port, "client"), "read 0")
