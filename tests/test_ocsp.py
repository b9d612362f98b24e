"""
Black-box tests of OCSP: a real C{twistd mtlsd --ocsp} asking a real
responder, C{openssl ocsp -index index.txt}, started here on 127.0.0.1 and
serving the development PKI that C{mtlsd pki init --ocsp-url} made.
"""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from tests._process import OPENSSL, Background, Daemon, mtlsd, pkiClient, receiveExactly
from tests.test_daemon import DaemonTestMixin
from tests.test_forward import freePort
from tests.test_trust import cutWithin


class OCSPTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()
        self.port = freePort()
        self.url = f"http://127.0.0.1:{self.port}"
        for command in (
            ["pki", "init", "--ocsp-url", self.url],
            ["pki", "issue", "alice"],
            ["pki", "issue", "bob"],
        ):
            done = mtlsd(*command, cwd=self.directory)
            self.assertEqual(done.returncode, 0, done.stderr)
        index = mtlsd("pki", "ocsp-index", cwd=self.directory)
        self.assertIn(b"5 certificates, 0 revoked", index.stdout)
        self.assertIn(b"serve it: openssl ocsp -index", index.stdout)

    def startResponder(self) -> Background:
        assert OPENSSL is not None
        pki = "mtlsd-pki"
        responder = Background(
            [
                OPENSSL, "ocsp", "-index", f"{pki}/index.txt", "-CA", f"{pki}/ca.crt",
                "-rsigner", f"{pki}/ocsp.crt", "-rkey", f"{pki}/ocsp.key",
                "-port", str(self.port), "-nmin", "5",
            ],
            self.directory,
            os.path.join(self.directory, f"responder-{len(self._cleanups)}.log"),
        )  # fmt: skip
        self.addCleanup(responder.stop)
        responder.waitForLog("waiting for OCSP client connections")
        return responder

    def daemon(self, *args: str) -> Daemon:
        pki = "mtlsd-pki"
        # No --crl: OCSP alone decides.
        return self.startDaemon(
            self.directory, "--cert", f"{pki}/server.crt", "--key", f"{pki}/server.key",
            "--client-certs", f"{pki}/ca.crt", "--ocsp", *args,
        )  # fmt: skip

    def connect(self, daemon: Daemon, name: str) -> tuple[int, bytes, bytes]:
        done = mtlsd(
            "connect", f"localhost:{daemon.port}",
            "--cert", f"mtlsd-pki/{name}.crt", "--key", f"mtlsd-pki/{name}.key",
            cwd=self.directory, input=b"ping\n",
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr

    def test_revokedRefusedGoodAdmitted(self) -> None:
        """
        A client the responder's index marks revoked is refused
        (C{certificate revoked (OCSP)}); a good one is admitted, its
        accepted line saying OCSP decided; the responder was asked through
        the certificates' Authority Information Access.
        """
        done = mtlsd("pki", "revoke", "alice", cwd=self.directory)
        self.assertEqual(done.returncode, 0, done.stderr)
        responder = self.startResponder()
        daemon = self.daemon()
        self.assertEqual(self.connect(daemon, "bob")[:2], (0, b"ping\n"))
        daemon.waitForLog(r"accepted 127\.0\.0\.1:\d+: CN=bob .* ocsp=good")
        code, out, err = self.connect(daemon, "alice")
        self.assertEqual((code, out), (1, b""))
        self.assertNotIn(b"Traceback", err)
        daemon.waitForLog(r"rejected 127\.0\.0\.1:\d+: certificate revoked \(OCSP\): CN=alice")
        self.assertIn("Received request", responder.log())
        self.assertNotIn("Starting factory", daemon.log())

    def test_post(self) -> None:
        """
        A request whose GET URL would be 255 bytes or more goes by POST
        (RFC 5019), here to C{--ocsp-responder} with a long path, which
        C{openssl ocsp} ignores in a POST.
        """
        responder = self.startResponder()
        daemon = self.daemon("--ocsp-responder", f"{self.url}/{'p' * 200}")
        self.assertEqual(self.connect(daemon, "bob")[:2], (0, b"ping\n"))
        daemon.waitForLog(r"accepted 127\.0\.0\.1:\d+: CN=bob .* ocsp=good")
        self.assertIn("Received request, 1st line: POST /ppp", responder.log())

    def test_silentResponder(self) -> None:
        """
        A responder that takes the connection and never answers: after
        C{--ocsp-timeout} the client is admitted, and the warning says
        that no answer came in time.
        """
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # never accepted: the kernel completes the TCP handshake
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        daemon = self.daemon("--ocsp-responder", url, "--ocsp-timeout", "1")
        self.assertEqual(self.connect(daemon, "bob")[:2], (0, b"ping\n"))
        daemon.waitForLog(
            rf"WARNING: OCSP responder {url} failed \(no answer within 1s\): admitting clients"
        )

    def test_responderStopped(self) -> None:
        """
        With the responder stopped, a client is admitted with one warning
        (soft-fail, the default); with C{--ocsp-required} it is refused.
        """
        soft = self.daemon("--ocsp-timeout", "2")
        required = self.daemon("--ocsp-required")
        for _ in range(2):
            self.assertEqual(self.connect(soft, "bob")[:2], (0, b"ping\n"))
        warnings = soft.waitForLog(
            rf"WARNING: OCSP responder {self.url} failed \(.*\): admitting clients unchecked"
        )
        self.assertEqual(len(warnings), 1)
        soft.waitForLog(r"accepted .* CN=bob .* ocsp=unavailable", count=2)
        self.assertEqual(self.connect(required, "bob")[:2], (1, b""))
        required.waitForLog(r"rejected 127\.0\.0\.1:\d+: OCSP responder unavailable")

    def test_liveSessionCut(self) -> None:
        """
        A live session whose certificate the index marks revoked is cut once
        its cached answer expires (C{--ocsp-cache-seconds}); another stays.
        """
        self.startResponder()
        daemon = self.daemon("--ocsp-cache-seconds", "1", "--reload-interval", "0.2")
        pki = os.path.join(self.directory, "mtlsd-pki")
        alice = pkiClient(daemon.port, pki, "alice")
        bob = pkiClient(daemon.port, pki, "bob")
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        for client in (alice, bob):
            client.sendall(b"hello")
            self.assertEqual(receiveExactly(client, 5), b"hello")
        done = mtlsd("pki", "revoke", "alice", cwd=self.directory)
        self.assertEqual(done.returncode, 0, done.stderr)
        cutWithin(alice)
        daemon.waitForLog(r"cut 127\.0\.0\.1:\d+: CN=alice .*: certificate revoked \(OCSP\)")
        bob.sendall(b"still")
        self.assertEqual(receiveExactly(bob, 5), b"still")
