"""
Black-box tests of services sharing one address, chosen by the server name
the client asks for (SNI): a real C{twistd mtlsd --config FILE} and
C{openssl s_client -servername}.
"""

from __future__ import annotations

import os
import re
import signal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from twisted.trial.unittest import SynchronousTestCase

from mtlsd._pki import SERVER_AUTH, DevelopmentPKI, certificatePEM, makeCertificate
from tests._process import DEADLINE, OPENSSL, Daemon, mtlsd, receiveExactly, run, tlsClient
from tests.test_daemon import DaemonTestMixin
from tests.test_forward import freePort
from tests.test_trust import cutWithin


def fingerprint(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


class ServerNameTests(DaemonTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.requireOpenSSL()
        self.directory = self.workDirectory()
        for pki, name in (("pki-a", "a.example"), ("pki-b", "b.example")):
            done = mtlsd("pki", "init", pki, "--server-name", name, cwd=self.directory)
            self.assertEqual(done.returncode, 0, done.stderr)
        self.port = freePort()

    def start(self, defaultB: bool = False, top: str = "") -> Daemon:
        with open(os.path.join(self.directory, "mtlsd.toml"), "w") as f:
            f.write(
                f"reload-interval = 0.2\n{top}"
                f'[[service]]\nname = "a"\nport = {self.port}\npki = "pki-a"\n'
                f'server-names = ["a.example"]\n'
                f'[[service]]\nname = "b"\nport = {self.port}\npki = "pki-b"\n'
                f'server-names = ["b.example", "*.b.example"]\n'
                + ("default = true\n" if defaultB else "")
            )
        daemon = Daemon(self.directory, ["--config", "mtlsd.toml"])
        self.addCleanup(daemon.stop)
        daemon.waitForLog(r"service b: listening on \S+ for server names b\.example")
        return daemon

    def sClient(self, serverName: str, pki: str) -> tuple[int, str]:
        assert OPENSSL is not None
        done = run(
            [
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{self.port}",
                "-servername", serverName, "-cert", f"{pki}/client.crt",
                "-key", f"{pki}/client.key", "-CAfile", f"{pki}/ca.crt", "-showcerts",
            ],
            self.directory,
            b"Q\n",
        )  # fmt: skip
        return done.returncode, done.stdout.decode() + done.stderr.decode()

    def served(self, output: str) -> str:
        found = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.S)
        assert found is not None, output
        return fingerprint(found.group(0).encode())

    def pkiFile(self, pki: str, name: str) -> bytes:
        with open(os.path.join(self.directory, pki, name), "rb") as f:
            return f.read()

    def test_certificateAndTrustByName(self) -> None:
        """
        The server name picks the service: its certificate, and its trust
        (a client of the other service's PKI is refused).
        """
        daemon = self.start()
        for serverName, pki in (
            ("a.example", "pki-a"),
            ("b.example", "pki-b"),
            ("x.b.example", "pki-b"),
        ):
            code, output = self.sClient(serverName, pki)
            self.assertEqual(code, 0, output)
            self.assertEqual(self.served(output), fingerprint(self.pkiFile(pki, "server.crt")))
        daemon.waitForLog(r"\[mtlsd:a#info\] accepted .* CN=client")
        daemon.waitForLog(r"\[mtlsd:b#info\] accepted .* CN=client", count=2)
        # a's client, presenting its certificate to b (and trusting b's CA)
        client = mtlsd(
            "connect", f"localhost:{self.port}", "--servername", "b.example",
            "--ca", "pki-b/ca.crt", "--cert", "pki-a/client.crt", "--key", "pki-a/client.key",
            cwd=self.directory, input=b"ping\n",
        )  # fmt: skip
        self.assertEqual((client.returncode, client.stdout), (1, b""), client.stderr)
        daemon.waitForLog(r"\[mtlsd:b#info\] rejected ")

    def test_signatureAlgorithms(self) -> None:
        """
        A shared address with C{tls-sigalgs} starts and reloads: the
        start-up check of the server's signature sends no server name, and
        must not be refused as an unknown one.
        """
        daemon = self.start(top='tls-sigalgs = "ECDSA+SHA256"\n')
        daemon.process.send_signal(signal.SIGHUP)
        daemon.waitForLog(r"\[mtlsd:a#info\] reloaded: ")
        self.assertNotIn("reload failed", daemon.log())
        code, output = self.sClient("a.example", "pki-a")
        self.assertEqual(code, 0, output)

    def test_unknownName(self) -> None:
        """
        A name no service has, without a default service: the handshake is
        refused with C{unrecognized_name}, and logged.
        """
        daemon = self.start()
        code, output = self.sClient("c.example", "pki-a")
        self.assertIn("unrecognized name", output)
        [line] = daemon.waitForLog(
            r"rejected 127\.0\.0\.1:\d+: no service for server name c\.example"
        )
        self.assertNotIn("[mtlsd:a#", line)  # no service's

    def test_defaultService(self) -> None:
        """
        With a default service, a name no service has (or none) reaches it.
        """
        daemon = self.start(defaultB=True)
        code, output = self.sClient("c.example", "pki-b")
        self.assertEqual(code, 0, output)
        self.assertEqual(self.served(output), fingerprint(self.pkiFile("pki-b", "server.crt")))
        daemon.waitForLog(r"\[mtlsd:b#info\] accepted ")

    def test_trustChangeCutsOnlyItsService(self) -> None:
        """
        A revocation in a's PKI cuts a's live session; b's, on the same
        port, goes on.
        """
        self.start()
        sessions = {}
        for service in ("a", "b"):
            pki = os.path.join(self.directory, f"pki-{service}")
            sessions[service] = tlsClient(
                self.port, f"{pki}/client.crt", f"{pki}/client.key", f"{pki}/ca.crt",
                f"{service}.example",
            )  # fmt: skip
            self.addCleanup(sessions[service].close)
            sessions[service].sendall(b"hello")
            self.assertEqual(receiveExactly(sessions[service], 5), b"hello")
        done = mtlsd("pki", "revoke", "client", "--pki", "pki-a", cwd=self.directory)
        self.assertEqual(done.returncode, 0, done.stderr)
        cutWithin(sessions["a"])
        sessions["b"].sendall(b"still")
        self.assertEqual(receiveExactly(sessions["b"], 5), b"still")


class KeyTypesTests(DaemonTestMixin, SynchronousTestCase):
    def test_rsaAndECDSA(self) -> None:
        """
        Two certificates of one service, ECDSA and RSA (C{--cert} twice):
        the client's signature algorithms pick the one it gets.  Two of one
        key type are refused at start-up.  (The client signs with its own
        ECDSA key whatever it accepts from the server: C{-client_sigalgs}.)
        """
        self.requireOpenSSL()
        directory = self.workDirectory()
        done = mtlsd("pki", "init", "pki", cwd=directory)
        self.assertEqual(done.returncode, 0, done.stderr)
        pki = DevelopmentPKI(os.path.join(directory, "pki"))
        key = rsa.generate_private_key(65537, 2048)
        certificate = makeCertificate(
            "rsa-server",
            key,
            pki._ca(),
            usages=[SERVER_AUTH],
            names=["localhost"],  # type: ignore[arg-type]
        )
        with open(os.path.join(directory, "rsa.pem"), "wb") as f:
            f.write(certificatePEM(certificate))
            f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        daemon = self.startDaemon(
            directory, "--cert", "pki/server.crt", "--key", "pki/server.key",
            "--cert", "rsa.pem", "--key", "rsa.pem", "--client-certs", "pki/ca.crt",
        )  # fmt: skip
        assert OPENSSL is not None
        for algorithm, subject in (
            ("rsa_pss_rsae_sha256", "CN = rsa-server"),
            ("ecdsa_secp256r1_sha256", "CN = server"),
        ):
            client = run(
                [
                    OPENSSL, "s_client", "-connect", f"127.0.0.1:{daemon.port}",
                    "-sigalgs", algorithm, "-client_sigalgs", "ecdsa_secp256r1_sha256", "-cert", "pki/client.crt", "-key", "pki/client.key",
                    "-CAfile", "pki/ca.crt",
                ],
                directory,
                b"Q\n",
            )  # fmt: skip
            output = client.stdout.decode()
            self.assertEqual(client.returncode, 0, output)
            self.assertIn(f"subject={subject}\n", output)
        twice = mtlsd("pki", "init", "other", cwd=directory)
        self.assertEqual(twice.returncode, 0, twice.stderr)
        refused = Daemon(
            directory,
            ["--port", "0", "--cert", "pki/server.crt", "--key", "pki/server.key",
             "--cert", "other/server.crt", "--key", "other/server.key",
             "--client-certs", "pki/ca.crt"],
        )  # fmt: skip
        self.addCleanup(refused.stop)
        self.assertEqual(refused.process.wait(DEADLINE), 1)
        self.assertIn(
            "mtlsd: server certificates pki/server.crt and other/server.crt both have ECDSA keys",
            refused.log(),
        )
        self.assertNotIn("Traceback", refused.log())
