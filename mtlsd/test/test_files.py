"""
Tests for loading certificates and keys: every bad file is one clear
sentence naming it.
"""

import os

from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from mtlsd import ConfigurationError, ServerTLSSettings
from mtlsd._files import loadCertificates, loadPrivateKey
from mtlsd._pki import certificatePEM, keyPEM
from mtlsd.test.helpers import TestCA, hoursAgo, selfSigned


class FilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.a, self.b = selfSigned("a"), selfSigned("b")

    def write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertError(self, fragment: str, f, *args) -> str:
        error = self.assertRaises(ConfigurationError, f, *args)
        message = str(error)
        self.assertIn(fragment, message)
        self.assertNotIn("\n", message)
        return message

    def test_bundle(self) -> None:
        """
        Every certificate of a bundle is loaded; a key after them is ignored.
        """
        path = self.write(
            "b.pem",
            certificatePEM(self.a.certificate, self.b.certificate) + keyPEM(self.a.key),
        )
        self.assertEqual(
            loadCertificates(path, "client certificates"),
            [self.a.certificate, self.b.certificate],
        )

    def test_missing(self) -> None:
        """
        A missing file is named.
        """
        missing = os.path.join(self.dir, "nope.pem")
        self.assertError(
            f"client certificates file {missing} does not exist",
            loadCertificates,
            missing,
            "client certificates",
        )

    def test_unreadable(self) -> None:
        """
        A directory or an unreadable file is named.
        """
        self.assertError("is a directory", loadCertificates, self.dir, "x")
        if os.getuid() != 0:
            path = self.write("secret.pem", b"")
            os.chmod(path, 0)
            self.assertError("cannot be read", loadCertificates, path, "x")

    def test_noCertificate(self) -> None:
        """
        A file without a PEM certificate (a key, text) is named.
        """
        path = self.write("key.pem", keyPEM(self.a.key))
        self.assertError(
            f"{path} holds no PEM certificate",
            loadCertificates,
            path,
            "server certificate",
        )

    def test_brokenBlock(self) -> None:
        """
        A bundle with one broken block (corrupted or cut short) is refused and
        the block is named, never silently skipped.
        """
        good = certificatePEM(self.a.certificate)
        second = certificatePEM(self.b.certificate)
        corrupted = second[:100] + b"!!!!" + second[104:]
        path = self.write("c.pem", good + corrupted)
        self.assertError("certificate 2 (line", loadCertificates, path, "client certificates")
        for damaged, fragment in [
            (second.replace(b"-----BEGIN", b"----BEGIN"), "a marker line is damaged"),
            (
                second.replace(b"END CERTIFICATE-----", b"END CERTIFICATE----"),
                "certificate 2 (line",
            ),
        ]:
            path = self.write("d.pem", good + damaged)
            self.assertError(fragment, loadCertificates, path, "x")
        truncated = self.write("t.pem", good + second[: len(second) - 40])
        self.assertError("certificate 2 (line", loadCertificates, truncated, "client certificates")

    def test_encryptedKey(self) -> None:
        """
        An encrypted key is refused with a way out.
        """
        encrypted = self.a.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = self.write("enc.key", encrypted)
        self.assertError("encrypted private key", loadPrivateKey, path, "server key")

    def test_noKey(self) -> None:
        """
        A file without a key is named.
        """
        path = self.write("cert.pem", certificatePEM(self.a.certificate))
        self.assertError("holds no usable PEM private key", loadPrivateKey, path, "server key")

    def test_keyMismatch(self) -> None:
        """
        A key that does not belong to the certificate is refused.
        """
        cert = self.write("s.crt", certificatePEM(self.a.certificate))
        key = self.write("s.key", keyPEM(self.b.key))
        clients = self.write("c.pem", certificatePEM(self.b.certificate))
        self.assertError(
            "does not match the certificate",
            ServerTLSSettings.fromFiles,
            cert,
            key,
            [clients],
        )

    def test_keyInsideCertificateFile(self) -> None:
        """
        Without a key file the key is read from the certificate file, and
        further certificates there are the chain.
        """
        ca = TestCA()
        server = ca.server()
        cert = self.write(
            "s.pem",
            certificatePEM(server.certificate, ca.certificate) + keyPEM(server.key),
        )
        clients = self.write("c.pem", certificatePEM(self.a.certificate, self.b.certificate))
        settings = ServerTLSSettings.fromFiles(cert, None, [clients])
        self.assertEqual(settings.certificate, server.certificate)
        self.assertEqual(settings.chain, (ca.certificate,))
        self.assertEqual(settings.trusted, (self.a.certificate, self.b.certificate))

    def test_expiredServerWarns(self) -> None:
        """
        An expired server certificate loads, with a loud warning.
        """
        old = selfSigned("old", notBefore=hoursAgo(48), days=1)
        settings = ServerTLSSettings(old.certificate, old.key, (), (self.a.certificate,))
        [warning] = settings.warnings()
        self.assertIn("EXPIRED", warning)
        self.assertEqual(
            ServerTLSSettings(self.a.certificate, self.a.key, (), (self.a.certificate,)).warnings(),
            [],
        )
