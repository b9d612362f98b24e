"""
Black-box tests of the trust lifecycle against a real C{twistd mtlsd}:
reload and revocation from the command line, live sessions cut, SIGHUP,
allow-lists and the TLS version floor.
"""

from __future__ import annotations

import os
import signal
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests._process import DEADLINE, OPENSSL, mtlsd, receiveExactly, run, tlsClient, waitUntilClosed
from tests.test_daemon import DaemonTestMixin


def cutWithin(sock: ssl.SSLSocket, deadline: float = DEADLINE) -> None:
    """
    Wait until the daemon closes C{sock}, however it does.
    """
    try:
        waitUntilClosed(sock, deadline)
    except ssl.SSLError:
        pass


class RevokeTests(DaemonTestMixin, SynchronousTestCase):
    def test_revokeFromCommandLine(self) -> None:
        """
        On the development PKI, C{mtlsd pki revoke alice} cuts alice's live
        connection within one reload interval (logged C{revoked}), refuses
        her next handshake (C{certificate revoked}), and leaves the other
        client's connection alone.
        """
        directory = self.workDirectory()
        daemon = self.startDaemon(directory, "--reload-interval", "0.2")
        pki = os.path.join(directory, "mtlsd-pki")
        self.assertEqual(mtlsd("pki", "issue", "alice", cwd=directory).returncode, 0)
        ca = os.path.join(pki, "ca.crt")

        def connect(name: str) -> ssl.SSLSocket:
            sock = tlsClient(
                daemon.port,
                os.path.join(pki, f"{name}.crt"),
                os.path.join(pki, f"{name}.key"),
                ca,
                "localhost",
            )
            sock.sendall(b"hello")
            self.assertEqual(receiveExactly(sock, 5), b"hello")
            return sock

        alice, client = connect("alice"), connect("client")
        self.addCleanup(alice.close)
        self.addCleanup(client.close)
        result = mtlsd("pki", "revoke", "alice", cwd=directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        daemon.waitForLog(r"cut 127\.0\.0\.1:\d+: CN=alice sha256=[0-9a-f]{64}: revoked")
        cutWithin(alice)
        client.sendall(b"still")
        self.assertEqual(receiveExactly(client, 5), b"still")

        result = mtlsd(
            "connect", f"localhost:{daemon.port}", "--cert", "mtlsd-pki/alice.crt",
            "--key", "mtlsd-pki/alice.key", cwd=directory, input=b"x",
        )  # fmt: skip
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"rejected this client's certificate", result.stderr)
        daemon.waitForLog(r"rejected 127\.0\.0\.1:\d+: certificate revoked")


class BundleReloadTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.workDirectory()
        for argv in (
            ["init"],
            ["issue", "--self-signed", "alice"],
            ["issue", "--self-signed", "bob"],
        ):
            self.assertEqual(mtlsd("pki", *argv, cwd=self.directory).returncode, 0)
        self.pki = os.path.join(self.directory, "mtlsd-pki")

    def bundle(self, *names: str) -> bytes:
        data = b""
        for name in names:
            with open(os.path.join(self.pki, f"{name}.crt"), "rb") as f:
                data += f.read()
        return data

    def writeBundle(self, data: bytes, rename: bool) -> None:
        path = os.path.join(self.directory, "clients.pem")
        target = path + ".new" if rename else path
        with open(target, "wb") as f:
            f.write(data)
        if rename:
            os.replace(target, path)

    def start(self, *args: str):
        return self.startDaemon(
            self.directory, "--cert", "mtlsd-pki/server.crt", "--key", "mtlsd-pki/server.key",
            "--client-certs", "clients.pem", *args,
        )  # fmt: skip

    def client(self, port: int, name: str) -> ssl.SSLSocket:
        return tlsClient(
            port,
            os.path.join(self.pki, f"{name}.crt"),
            os.path.join(self.pki, f"{name}.key"),
            os.path.join(self.pki, "ca.crt"),
            "localhost",
        )

    def connect(self, port: int, name: str) -> ssl.SSLSocket:
        sock = self.client(port, name)
        self.addCleanup(sock.close)
        sock.sendall(b"hi")
        self.assertEqual(receiveExactly(sock, 2), b"hi")
        return sock

    def test_renameAndInPlace(self) -> None:
        """
        The recipe's "remove its certificate from the file", without a
        restart: bob, removed by an atomic rename, is cut (C{no longer
        trusted}) while alice stays; bob added back by an in-place rewrite
        gets in again.
        """
        self.writeBundle(self.bundle("alice", "bob"), rename=False)
        daemon = self.start("--reload-interval", "0.2")
        alice, bob = self.connect(daemon.port, "alice"), self.connect(daemon.port, "bob")
        self.writeBundle(self.bundle("alice"), rename=True)
        daemon.waitForLog(r"cut 127\.0\.0\.1:\d+: CN=bob sha256=[0-9a-f]{64}: no longer trusted")
        cutWithin(bob)
        alice.sendall(b"ok")
        self.assertEqual(receiveExactly(alice, 2), b"ok")
        self.assertRaises(ssl.SSLError, self.connect, daemon.port, "bob")

        self.writeBundle(self.bundle("alice", "bob"), rename=False)
        daemon.waitForLog("reloaded: 2 trusted certificates", count=1)
        self.connect(daemon.port, "bob")

    def test_sighup(self) -> None:
        """
        With polling off (C{--reload-interval 0}), SIGHUP reloads.
        """
        self.writeBundle(self.bundle("alice"), rename=False)
        daemon = self.start("--reload-interval", "0")
        self.writeBundle(self.bundle("alice", "bob"), rename=False)
        daemon.process.send_signal(signal.SIGHUP)
        daemon.waitForLog("reloaded: 2 trusted certificates")
        self.connect(daemon.port, "bob")

    def test_brokenWriteKeepsTrust(self) -> None:
        """
        A broken bundle is refused with one logged error; alice still gets in.
        """
        self.writeBundle(self.bundle("alice"), rename=False)
        daemon = self.start("--reload-interval", "0.2")
        self.writeBundle(self.bundle("alice")[:100], rename=False)
        daemon.waitForLog(r"reload failed, keeping the trust in force: .*clients\.pem")
        self.connect(daemon.port, "alice")

    def assertRefused(self, port: int, name: str) -> None:
        """
        Client C{name} connects and sends two bytes: the server refuses him,
        whether during the handshake (a TLS alert: L{ssl.SSLError}, at the
        handshake or at his first read under TLS 1.3) or by closing the
        connection after it (end of file or a reset); no byte comes back.
        Anything else (a timeout, a refused TCP connection, a helper's
        assertion) is an error of the test, not a refusal.
        """
        try:
            sock = self.client(port, name)
        except ssl.SSLCertVerificationError:
            raise  # the client refusing the server's certificate: not a refusal of it
        except ssl.SSLError:
            return
        self.addCleanup(sock.close)
        try:
            sock.sendall(b"hi")
            echoed = sock.recv(2)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return
        self.assertEqual(echoed, b"", f"{name} was refused, yet got {echoed!r} back")

    def test_allowList(self) -> None:
        """
        With C{--allow-cn alice}, bob's certificate verifies but he is
        refused as C{not allowed by policy}: he gets no byte echoed.
        """
        self.writeBundle(self.bundle("alice", "bob"), rename=False)
        daemon = self.start("--allow-cn", "alice")
        self.connect(daemon.port, "alice")
        self.assertRefused(daemon.port, "bob")
        daemon.waitForLog(r"rejected 127\.0\.0\.1:\d+: not allowed by policy")


class TLSVersionTests(DaemonTestMixin, SynchronousTestCase):
    def sClient(self, port: int, directory: str, *flags: str) -> int:
        assert OPENSSL is not None
        return run(
            [
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-cert", "mtlsd-pki/client.crt",
                "-key", "mtlsd-pki/client.key", "-CAfile", "mtlsd-pki/ca.crt", *flags,
            ],
            directory,
            b"Q\n",
        ).returncode  # fmt: skip

    def test_oldVersionsRefused(self) -> None:
        """
        TLS 1.1 (and older) is refused, 1.2 and 1.3 accepted; with
        C{--tls-min-version 1.3}, 1.2 is refused too.
        """
        if OPENSSL is None:
            raise SkipTest("the openssl command is not installed")
        directory = self.workDirectory()
        daemon = self.startDaemon(directory)
        # SECLEVEL=0 lets the openssl client itself offer TLS 1.1.
        self.assertNotEqual(
            self.sClient(daemon.port, directory, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"), 0
        )
        self.assertEqual(self.sClient(daemon.port, directory, "-tls1_2"), 0)
        self.assertEqual(self.sClient(daemon.port, directory, "-tls1_3"), 0)
        daemon.waitForLog(r"rejected 127\.0\.0\.1:\d+: TLS error: unsupported protocol")

        strict = self.startDaemon(
            self.workDirectory(),
            "--pki",
            os.path.join(directory, "mtlsd-pki"),
            "--tls-min-version",
            "1.3",
        )
        self.assertNotEqual(self.sClient(strict.port, directory, "-tls1_2"), 0)
        self.assertEqual(self.sClient(strict.port, directory, "-tls1_3"), 0)


class CryptoPolicyTests(DaemonTestMixin, SynchronousTestCase):
    """
    The key-exchange groups and signature algorithms, against C{openssl
    s_client} and C{mtlsd connect}.
    """

    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()

    def sClient(self, port: int, *flags: str, name: str = "client") -> int:
        assert OPENSSL is not None
        return run(
            [
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-cert", f"mtlsd-pki/{name}.crt",
                "-key", f"mtlsd-pki/{name}.key", "-CAfile", "mtlsd-pki/ca.crt", *flags,
            ],
            self.directory,
            b"Q\n",
        ).returncode  # fmt: skip

    def test_mozillaGroups(self) -> None:
        """
        By default a TLS 1.3 client offering only X448 or only P-521 (which
        OpenSSL would accept, Mozilla's profiles not) is refused in the
        handshake; one offering X25519, P-256 or P-384 is served, and
        X25519MLKEM768 (which this machine's openssl lacks) by C{mtlsd
        connect}, whose OpenSSL has it.  (In TLS 1.2 a client must also
        offer the curve of the server's ECDSA certificate, P-256 here, so
        the groups are the scanner's to check: L{tests.test_conformance}.)
        """
        daemon = self.startDaemon(self.directory)
        for group in ("X448", "secp521r1"):
            self.assertNotEqual(self.sClient(daemon.port, "-tls1_3", "-groups", group), 0, group)
        for group in ("X25519", "prime256v1", "secp384r1"):
            self.assertEqual(self.sClient(daemon.port, "-tls1_3", "-groups", group), 0, group)
        daemon.waitForLog(r"rejected 127\.0\.0\.1:\d+: TLS error: ")
        connect = mtlsd(
            "connect", f"127.0.0.1:{daemon.port}", "--tls-groups", "X25519MLKEM768",
            cwd=self.directory, input=b"ping\n",
        )  # fmt: skip
        self.assertEqual((connect.returncode, connect.stdout), (0, b"ping\n"), connect.stderr)

    def test_chosenGroups(self) -> None:
        """
        C{--tls-groups secp384r1} serves a client offering P-384 and refuses
        one offering only X25519; C{mtlsd connect --tls-groups X448} is
        refused by the default daemon.
        """
        daemon = self.startDaemon(self.directory, "--tls-groups", "secp384r1")
        self.assertEqual(self.sClient(daemon.port, "-groups", "secp384r1"), 0)
        self.assertNotEqual(self.sClient(daemon.port, "-groups", "X25519:prime256v1"), 0)
        default = self.startDaemon(self.workDirectory(), "--pki", f"{self.directory}/mtlsd-pki")
        connect = mtlsd(
            "connect", f"127.0.0.1:{default.port}", "--tls-groups", "X448",
            cwd=self.directory, input=b"ping\n",
        )  # fmt: skip
        self.assertEqual((connect.returncode, connect.stdout), (1, b""))
        self.assertNotIn(b"Traceback", connect.stderr)

    def test_signatureAlgorithms(self) -> None:
        """
        With C{--tls-sigalgs ECDSA+SHA256} the daemon asks for
        ecdsa_secp256r1_sha256 alone: a TLS 1.3 client whose key is P-384
        cannot sign with it, sends no certificate and is refused; the P-256
        client is served, and the P-384 one by a daemon without the option.
        """
        from cryptography.hazmat.primitives.asymmetric import ec

        from mtlsd._pki import DevelopmentPKI, certificatePEM, keyPEM, makeCertificate

        pki = DevelopmentPKI(os.path.join(self.directory, "mtlsd-pki"))
        pki.init()
        key = ec.generate_private_key(ec.SECP384R1())
        with open(pki.path("ca.crt"), "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        with open(pki.path("ca.key"), "rb") as f:
            caKey = serialization.load_pem_private_key(f.read(), None)
        p384 = makeCertificate("p384", key, (ca, caKey))  # type: ignore[arg-type]
        pki.path("p384.crt").write_bytes(certificatePEM(p384))
        pki.path("p384.key").write_bytes(keyPEM(key))
        daemon = self.startDaemon(self.directory, "--tls-sigalgs", "ECDSA+SHA256")
        # In TLS 1.3 the server judges the client's certificate after
        # s_client's handshake is done: the daemon's log says.
        self.sClient(daemon.port, "-tls1_3", name="p384")
        daemon.waitForLog(r"rejected 127\.0\.0\.1:\d+: no client certificate")
        self.sClient(daemon.port, "-tls1_3")
        daemon.waitForLog(r"accepted 127\.0\.0\.1:\d+: CN=client ")
        plain = self.startDaemon(self.workDirectory(), "--pki", f"{self.directory}/mtlsd-pki")
        self.sClient(plain.port, "-tls1_3", name="p384")
        plain.waitForLog(r"accepted 127\.0\.0\.1:\d+: CN=p384 ")
        self.assertNotIn("CN=p384", daemon.log())
